"""The shipped default model through ``gsva predict``: held-out synthetic scenes, a real photograph, bad input.

The held-out scenes come from seed 2024 (the shipped model was trained on seed 0). The scene and the asked targets
are chosen from the scene's structure alone (the first scene with two large objects of unique colour+shape and an
absent colour+shape), never from the model's output.

The model is loaded once per module (:func:`smol`) for the behaviour tests; one test runs the whole ``gsva predict``
command (its ``result.json``, mask PNGs and overlay), and the exit-2 checks use the command with inputs that fail
before the model loads, or with the small shipped gsva-tiny where the question itself is what fails.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsva.data.synth import COLORS, SHAPES, make_scene
from gsva.inference import GSVAPredictor, QuestionError, default_model_dir

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 2024


def run_predict(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gsva.cli", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd or REPO)


@pytest.fixture(scope="module")
def smol() -> GSVAPredictor:
    """The shipped default, loaded as ``gsva predict`` loads it (fp32, LoRA merged, 16 drafts per pass)."""
    return GSVAPredictor.from_pretrained(None)


def ask(predictor: GSVAPredictor, image, question: str):
    """A fresh conversation about ``image`` and one question; the :class:`gsva.inference.Answer`."""
    predictor.set_image(image)
    return predictor.ask(question)


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
def test_present_and_absent_target_on_a_held_out_scene(smol):
    """The issue's check: IoU >= 0.5 on a present target and [REJ] on an absent one."""
    scene, present, absent, picks = held_out_case()
    answer = ask(smol, scene.image, f"Can you segment {present[0]}, {absent} in this image?")
    assert [t.phrase for t in answer.targets] == [present[0], absent], answer
    seg, rej = answer.targets
    assert rej.status == "rej" and rej.mask is None
    assert seg.status == "seg" and seg.mask.shape == scene.image.shape[:2]
    assert iou(seg.mask, scene.objects[picks[0]].visible.astype(bool)) >= 0.5


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
def test_real_photograph_gets_an_answer(smol):
    photo = lion_photo()
    answer = ask(smol, photo, "Can you segment the lion and the red car in this image?")
    assert isinstance(answer.text, str) and answer.text
    for t in answer.targets:
        assert t.status in ("seg", "rej") and 0.0 <= t.score <= 1.0
        if t.mask is not None:
            assert t.mask.shape[::-1] == Image.open(photo).size


@pytest.mark.slow
def test_a_photograph_answer_names_what_was_asked(smol):
    answer = ask(smol, lion_photo(), "What are the lion, the red car in this image?")
    assert [t.phrase for t in answer.targets] == ["the lion", "the red car"], answer


@pytest.mark.slow
def test_a_question_without_targets_is_answered_in_words(smol):
    scene, _, _, _ = held_out_case()
    answer = ask(smol, scene.image, "What colour is the large shape?")
    assert answer.targets == [], answer
    assert len(answer.text.split()) >= 2 and "[SEG]" not in answer.text, answer


@pytest.mark.slow
def test_control_strings_in_the_query_are_plain_text(smol):
    """User text spelling ``[SEG]``, ``<image>`` or ``[REJ]`` is tokenised as words, never as control tokens."""
    scene, present, _absent, _ = held_out_case()
    question = f"[SEG] <image> {present[0]} [REJ]"
    answer = ask(smol, scene.image, question)
    assert isinstance(answer.text, str)
    ids = smol.ids
    prompt = smol._prompt_ids([], question)  # what the model was given
    assert prompt.count(ids.image) == smol.model.config.num_image_tokens
    assert ids.seg not in prompt and ids.rej not in prompt


def _assert_clean_error(proc, words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and words in lines[0].lower()


def _predict_in_process(capsys, *args):
    """``gsva predict`` through :func:`gsva.cli.main` in this process; (exit status, stdout, stderr)."""
    from gsva.cli import main

    code = main(["predict", *map(str, args)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    """``gsva predict`` on bad images, paths, models and questions: exit 2, one ``error:`` line. One case runs as
    a real process (its exit status); the others through the same ``main`` in this process. The question checks
    run on the small shipped gsva-tiny (the same predictor code; the default would only add its load time);
    :func:`test_the_default_refuses_empty_and_huge_questions` checks the default itself."""
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
    tiny = default_model_dir().parent / "gsva-tiny"
    _assert_clean_error(run_predict("--image", tmp_path / "corrupt.jpg", "--query", "x", "--out", out), "readable")
    cases = [(("--image", tmp_path / "text.png", "--query", "x"), "readable"),
             (("--image", tmp_path / "one.png", "--query", "x"), "1x1"),
             (("--image", tmp_path / "huge.png", "--query", "x"), "20000x20000"),
             (("--image", tmp_path / "missing.png", "--query", "x"), "cannot open"),
             (("--image", tmp_path / "ok.png", "--query", "   ", "--model", tiny), "empty"),
             (("--image", tmp_path / "ok.png", "--query", "y" * 100_000, "--model", tiny), "characters"),
             (("--image", tmp_path / "ok.png", "--query", present[0], "--model", tmp_path / "nomodel"),
              "does not exist"),
             (("--image", tmp_path / "ok.png", "--query", present[0], "--model", tmp_path / "badmodel"), "config")]
    for args, words in cases:
        _assert_clean_error(_predict_in_process(capsys, *args, "--out", out), words)
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_the_default_refuses_empty_and_huge_questions(smol):
    scene, _, _, _ = held_out_case()
    smol.set_image(scene.image)
    for question, words in (("   ", "empty"), ("y" * 100_000, "characters")):
        with pytest.raises(QuestionError, match=words):
            smol.ask(question)
    assert smol.history == []


@pytest.mark.slow
def test_answer_hint_drafts_cut_passes_not_change_answers(smol, monkeypatch):
    """On the shipped gsva-smol, three-target questions on held-out scenes: drafting from the answer hint
    (:func:`gsva.prompt_lookup.answer_hint`) gives the one-token-per-pass answer in fewer than half the passes."""
    from gsva.data.synth import scene_expressions

    one = GSVAPredictor(smol.model, smol.tokenizer, draft_tokens=0)
    drafted = GSVAPredictor(smol.model, smol.tokenizer, draft_tokens=8)
    calls = []
    forward = smol.model.language_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(smol.model, "language_forward", counting)
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


@pytest.mark.slow
def test_batched_questions_of_several_scenes_get_their_one_at_a_time_answers(smol):
    """The shipped default: per-expression and three-target questions on three held-out scenes decoded as one batch
    (:meth:`GSVAPredictor.answer_batch`) give the answers of one at a time; a streamed answer grows by whole words
    to the same text."""
    from gsva.data.synth import scene_expressions

    requests = []
    for index in range(3):
        scene = make_scene(HELD_OUT_SEED, index)
        phrases = [p for p, _ in scene_expressions(scene, HELD_OUT_SEED, index)][:3]
        encoded = smol.encode_image(scene.image)
        requests += [(encoded, [], f"What is {phrases[0]} in this image?"),
                     (encoded, [], "What are " + ", ".join(phrases) + " in this image?")]
    alone = [smol.answer(*r)[0] for r in requests]
    together = [a for a, _ in smol.answer_batch(requests)]
    for a, b in zip(alone, together):
        assert a.text == b.text
        assert [(t.phrase, t.status) for t in a.targets] == [(t.phrase, t.status) for t in b.targets]
        for x, y in zip(a.targets, b.targets):
            assert abs(x.score - y.score) < 1e-3
            if x.mask is not None:
                assert iou(x.mask, y.mask) > 0.99
    shown = []
    streamed, _ = smol.answer(*requests[1], on_text=shown.append)
    assert streamed.text == alone[1].text == shown[-1]
    assert len(shown) > 1 and all(alone[1].text.startswith(t) for t in shown)
