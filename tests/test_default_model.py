"""The shipped default model through ``gsva predict``: held-out synthetic scenes, a real photograph, bad input.

The held-out scenes come from seed 2024 (the shipped model was trained on seed 0). The scene and the asked targets
are chosen from the scene's structure alone (the first scene with two large objects of unique colour+shape and an
absent colour+shape), never from the model's output.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsva.data.synth import COLORS, SHAPES, make_scene
from gsva.inference import default_model_dir

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 2024


def run_predict(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gsva.cli", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd or REPO)


def predict_result(tmp_path, image, query) -> dict:
    """``gsva predict`` on one image and question; its ``result.json`` (the run must succeed)."""
    proc = run_predict("--image", image, "--query", query, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "out" / "result.json").read_text())


def lion_photo() -> Path:
    import gradio

    return Path(gradio.__file__).parent / "media_assets" / "images" / "lion.jpg"


def held_out_case():
    """(scene, [present phrase, present phrase], absent phrase, [object index, object index])."""
    for index in range(200):
        scene = make_scene(HELD_OUT_SEED, index)
        objs = scene.objects
        unique = [i for i, o in enumerate(objs) if o.size == "large" and not o.occluded
                  and sum(p.color == o.color and p.shape == o.shape for p in objs) == 1]
        if len(unique) >= 2:
            absent = next((c, s) for c in COLORS for s in SHAPES
                          if not any(o.color == c and o.shape == s for o in objs) and not any(o.color == c for o in objs))
            picks = unique[:2]
            phrases = [f"the {objs[i].color} {objs[i].shape}" for i in picks]
            return scene, phrases, f"the {absent[0]} {absent[1]}", picks
    raise AssertionError("no held-out scene qualifies")


def iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def test_shipped_model_is_within_budget():
    """Only what training changed ships; a model built on a base (gsva-smol) has no tokenizer of its own."""
    files = list(default_model_dir().iterdir())
    names = {f.name for f in files}
    based = json.loads((default_model_dir() / "config.json").read_text())["text"].get("base")
    assert {"config.json", "model.safetensors"} | (set() if based else {"tokenizer.json"}) <= names
    assert sum(f.stat().st_size for f in files) <= 25 * 1024 * 1024


@pytest.mark.slow
def test_present_and_absent_target_on_a_held_out_scene(tmp_path):
    """The issue's check: IoU >= 0.5 on a present target and [REJ] on an absent one, through ``gsva predict``."""
    scene, present, absent, picks = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    proc = run_predict("--image", tmp_path / "scene.png", "--query",
                       f"Can you segment {present[0]}, {absent} in this image?", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [t["phrase"] for t in result["targets"]] == [present[0], absent], result
    seg, rej = result["targets"]
    assert rej["status"] == "rej" and rej["mask"] is None
    assert seg["status"] == "seg"
    mask = np.asarray(Image.open(tmp_path / "out" / seg["mask"])) > 127
    assert iou(mask, scene.objects[picks[0]].visible.astype(bool)) >= 0.5


@pytest.mark.slow
def test_three_targets_on_a_held_out_scene(tmp_path):
    scene, present, absent, picks = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    query = f"What are {present[0]}, {absent}, {present[1]} in this image?"
    proc = run_predict("--image", tmp_path / "scene.png", "--query", query, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    by_phrase = {t["phrase"]: t for t in result["targets"]}
    assert set(by_phrase) == {present[0], present[1], absent}, result
    assert by_phrase[absent]["status"] == "rej" and by_phrase[absent]["mask"] is None
    for phrase, i in zip(present, picks):
        t = by_phrase[phrase]
        assert t["status"] == "seg" and 0.5 < t["score"] <= 1.0
        mask = np.asarray(Image.open(tmp_path / "out" / t["mask"])) > 127
        assert mask.shape == scene.image.shape[:2]
        assert iou(mask, scene.objects[i].visible.astype(bool)) >= 0.5
    assert (tmp_path / "out" / "overlay.png").is_file()


@pytest.mark.slow
def test_real_photograph_gets_an_answer(tmp_path):
    photo = lion_photo()
    result = predict_result(tmp_path, photo, "Can you segment the lion and the red car in this image?")
    assert isinstance(result["answer"], str) and result["answer"]
    for t in result["targets"]:
        assert t["status"] in ("seg", "rej") and 0.0 <= t["score"] <= 1.0
        if t["mask"]:
            assert Image.open(tmp_path / "out" / t["mask"]).size == Image.open(photo).size


@pytest.mark.slow
def test_a_photograph_answer_names_what_was_asked(tmp_path):
    result = predict_result(tmp_path, lion_photo(), "What are the lion, the red car in this image?")
    assert [t["phrase"] for t in result["targets"]] == ["the lion", "the red car"], result


@pytest.mark.slow
def test_a_question_without_targets_is_answered_in_words(tmp_path):
    scene, _, _, _ = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    result = predict_result(tmp_path, tmp_path / "scene.png", "What colour is the large shape?")
    assert result["targets"] == [], result
    assert len(result["answer"].split()) >= 2 and "[SEG]" not in result["answer"], result


@pytest.mark.slow
def test_control_strings_in_the_query_are_plain_text(tmp_path):
    scene, present, _absent, _ = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    proc = run_predict("--image", tmp_path / "scene.png", "--query", f"[SEG] <image> {present[0]} [REJ]",
                       "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    json.loads((tmp_path / "out" / "result.json").read_text())


def _assert_clean_error(proc, words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and words in lines[0].lower()


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path):
    scene, present, _, _ = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    from .test_images import _png_header_only

    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 20000))
    (tmp_path / "badmodel").mkdir()
    (tmp_path / "badmodel" / "config.json").write_text("{")
    (tmp_path / "badmodel" / "model.safetensors").write_bytes(b"junk")
    out = tmp_path / "out"
    _assert_clean_error(run_predict("--image", tmp_path / "corrupt.jpg", "--query", "x", "--out", out), "readable")
    _assert_clean_error(run_predict("--image", tmp_path / "text.png", "--query", "x", "--out", out), "readable")
    _assert_clean_error(run_predict("--image", tmp_path / "one.png", "--query", "x", "--out", out), "1x1")
    _assert_clean_error(run_predict("--image", tmp_path / "huge.png", "--query", "x", "--out", out), "20000x20000")
    _assert_clean_error(run_predict("--image", tmp_path / "missing.png", "--query", "x", "--out", out), "cannot open")
    _assert_clean_error(run_predict("--image", tmp_path / "ok.png", "--query", "   ", "--out", out), "empty")
    _assert_clean_error(run_predict("--image", tmp_path / "ok.png", "--query", "y" * 100_000, "--out", out),
                        "characters")
    _assert_clean_error(run_predict("--image", tmp_path / "ok.png", "--query", present[0], "--out", out,
                                    "--model", tmp_path / "nomodel"), "does not exist")
    _assert_clean_error(run_predict("--image", tmp_path / "ok.png", "--query", present[0], "--out", out,
                                    "--model", tmp_path / "badmodel"), "config")


@pytest.mark.slow
def test_answer_hint_drafts_cut_passes_not_change_answers():
    """On the shipped gsva-smol, three-target questions on held-out scenes: drafting from the answer hint
    (:func:`gsva.prompt_lookup.answer_hint`) gives the one-token-per-pass answer in fewer than half the passes."""
    from gsva.data.synth import scene_expressions
    from gsva.inference import GSVAPredictor

    one = GSVAPredictor.from_pretrained(None, draft_tokens=0)
    drafted = GSVAPredictor(one.model, one.tokenizer, draft_tokens=8)
    calls = []
    forward = one.model.language_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    one.model.language_forward = counting
    passes = {"one": 0, "drafted": 0}
    for index in range(3):
        scene = make_scene(HELD_OUT_SEED, index)
        phrases = [p for p, _ in scene_expressions(scene, HELD_OUT_SEED, index)][:3]
        encoded = one.encode_image(scene.image)
        question = "What are " + ", ".join(phrases) + " in this image?"
        answers = []
        for name, predictor in (("one", one), ("drafted", drafted)):
            calls.clear()
            answers.append(predictor.answer(encoded, [], question)[0])
            passes[name] += len(calls)
        a, b = answers
        assert a.text == b.text
        assert [(t.phrase, t.status) for t in a.targets] == [(t.phrase, t.status) for t in b.targets]
        for x, y in zip(a.targets, b.targets):
            assert abs(x.score - y.score) < 1e-3
            if x.mask is not None:
                assert (x.mask != y.mask).mean() < 1e-3
    assert 2 * passes["drafted"] < passes["one"], passes
