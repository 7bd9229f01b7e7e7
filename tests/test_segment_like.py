"""Segment by example (gsva.incontext, GSVAPredictor.segment_like / propagate, ``gsva segment-like``).

Quality is checked on tasks and sequences of seeds no training used (the prompt generator trains on seed 0 and
validates on seed 1); the benchmark (``benchmarks/incontext.py``) gives the figures.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsva.data.incontext import make_sequence, make_task
from gsva.errors import InputError, UserError
from gsva.incontext import NoWordTowerError, Prompt, SegmentLikeResult, encode_features, follow_part
from gsva.inference import MAX_EXAMPLES, GSVAPredictor
from gsva.scoring.davis import region_similarity

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 2025


@pytest.fixture(scope="module")
def smol() -> GSVAPredictor:
    return GSVAPredictor.from_pretrained(None)


def _methods(predictor):
    return ["training_free"] + (["trained"] if predictor.prompt_generator is not None else [])


@pytest.mark.slow
def test_the_examples_kind_is_found_on_held_out_tasks(smol):
    ious = {m: [] for m in _methods(smol)}
    for index in range(8):
        task = make_task(HELD_OUT_SEED, index, shots=1)
        for method in ious:
            result = smol.segment_like(task.examples, task.image, method=method)
            assert result.method == method and result.mask.shape == task.image.shape[:2]
            assert result.mask.dtype == bool and result.logits.dtype == np.float32
            assert ((result.logits > 0) == result.mask).all() and 0.0 <= result.score <= 1.0
            assert len(result.parts) == len(result.prompts)  # 0 when nothing matches well enough
            ious[method].append(region_similarity(result.mask, task.mask))
    # a mask of every object in the scene scores about 0.3 on these tasks; an empty one 0
    for method, values in ious.items():
        assert np.mean(values) >= 0.55, (method, values)


@pytest.mark.slow
def test_the_shipped_default_has_the_trained_generator_and_uses_it(smol):
    assert smol.prompt_generator is not None
    task = make_task(HELD_OUT_SEED, 0)
    assert smol.segment_like(task.examples, task.image).method == "trained"


def test_bad_examples_get_clear_errors(smol):
    task = make_task(HELD_OUT_SEED, 1)
    (image, mask), target = task.examples[0], task.image
    cases = [([], "1 to"), ([(image, mask)] * (MAX_EXAMPLES + 1), "1 to"), ([image], "pair"),
             ([(image, mask[:, :-40])], "mask"), ([(image, np.zeros_like(mask))], "empty")]
    for examples, words in cases:
        with pytest.raises(UserError, match=words):  # InputError, or ImageError for the masks
            smol.segment_like(examples, target)
    with pytest.raises(InputError, match="method"):
        smol.segment_like([(image, mask)], target, method="magic")
    bare = GSVAPredictor(smol.model, smol.tokenizer, prompt_generator=None)
    with pytest.raises(InputError, match="prompt generator"):
        bare.segment_like([(image, mask)], target, method="trained")
    assert bare.segment_like([(image, mask)], target).method == "training_free"
    with pytest.raises(InputError, match="2 frames"):
        smol.propagate([image], mask)
    with pytest.raises(InputError, match="frame 1 is"):
        smol.propagate([image, target], mask)


def test_a_model_without_an_object_word_projector_is_refused(micro_model):
    with pytest.raises(NoWordTowerError, match="object_words"):
        encode_features(micro_model, np.zeros((40, 40, 3), np.uint8))


def _result(parts, scores):
    logits = np.where(np.any(parts, axis=0), 2.0, -2.0).astype(np.float32)
    prompts = [Prompt(point=(0.0, 0.0), box=(0.0, 0.0, 1.0, 1.0), score=s) for s in scores]
    return SegmentLikeResult(mask=logits > 0, logits=logits, score=max(scores), method="trained", prompts=prompts,
                             parts=list(parts))


def test_following_keeps_the_part_that_overlaps_the_previous_mask():
    a = np.zeros((10, 10), bool)
    a[:4, :4] = True
    b = np.zeros((10, 10), bool)
    b[6:, 6:] = True
    result = _result([a, b], [0.9, 0.6])
    previous = np.zeros((10, 10), bool)
    previous[5:9, 5:9] = True
    kept = follow_part(result, previous)
    assert (kept.mask == b).all() and kept.score == 0.6 and ((kept.logits > 0) == b).all()
    elsewhere = np.zeros((10, 10), bool)
    elsewhere[0, 9] = True
    assert (follow_part(result, elsewhere).mask == a).all()  # no overlap: the best score
    single = _result([a], [0.5])
    assert follow_part(single, previous) is single


@pytest.mark.slow
def test_an_object_is_followed_through_held_out_frames(smol):
    for index in range(2):
        seq = make_sequence(HELD_OUT_SEED, index, frames=5)
        results = smol.propagate(seq.frames, seq.masks[0])
        assert len(results) == 5 and (results[0].mask == seq.masks[0]).all() and results[0].score == 1.0
        js = [region_similarity(r.mask, m) for r, m in zip(results[1:], seq.masks[1:])]
        assert np.mean(js) >= 0.6, js


def test_the_prompt_generator_loads_strictly(tmp_path, smol):
    from gsva.checkpoint import CheckpointError
    from gsva.modeling.example_prompts import (GENERATOR_CONFIG, GENERATOR_WEIGHTS, ExamplePromptGenerator,
                                               PromptGeneratorConfig, load_prompt_generator, save_prompt_generator)
    from gsva.incontext import MAP_CHANNELS

    cfg = smol.model.config
    assert load_prompt_generator(tmp_path, cfg) is None
    gen = ExamplePromptGenerator(PromptGeneratorConfig(embed_dim=cfg.sam.prompt_embed_dim, width=8, hidden=8,
                                                       map_names=tuple(MAP_CHANNELS)))
    save_prompt_generator(gen, tmp_path, {"note": "test"})
    back = load_prompt_generator(tmp_path, cfg)
    assert all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(), back.state_dict().values()))
    meta = json.loads((tmp_path / GENERATOR_CONFIG).read_text())
    meta["generator"]["map_names"] = ["sam_cosine"]
    (tmp_path / GENERATOR_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="trained on maps"):
        load_prompt_generator(tmp_path, cfg)
    meta["generator"]["map_names"], meta["generator"]["hidden"] = list(MAP_CHANNELS), 16
    (tmp_path / GENERATOR_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_prompt_generator(tmp_path, cfg)
    (tmp_path / GENERATOR_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_prompt_generator(tmp_path, cfg)
    (tmp_path / GENERATOR_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_prompt_generator(tmp_path, cfg)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gsva.cli", "segment-like", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_the_command_writes_mask_overlay_and_json(tmp_path, first_like_task):
    task = first_like_task  # the app's first example row (app/make_examples.py)
    (image, mask) = task.examples[0]
    Image.fromarray(image).save(tmp_path / "example.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "example_mask.png")
    Image.fromarray(task.image).save(tmp_path / "target.jpg", quality=95)
    out = tmp_path / "out"
    proc = _cli("--example", tmp_path / "example.png", "--example-mask", tmp_path / "example_mask.png",
                "--image", tmp_path / "target.jpg", "--out", out)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "result.json").read_text())
    assert record["kind"] == "segment_like" and record["image"] == {"height": task.image.shape[0],
                                                                     "width": task.image.shape[1]}
    written = np.asarray(Image.open(out / "mask.png")) > 127
    assert region_similarity(written, task.mask) > 0.5 and (out / "overlay.png").is_file()
    from pycocotools import mask as mask_utils

    rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
    assert (mask_utils.decode(rle).astype(bool) == written).all()
    assert "part" in proc.stdout and record["examples"][0]["mask"].endswith("example_mask.png")


def test_the_command_refuses_bad_input_with_one_line(tmp_path):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "empty.png")
    for args, words in (
            (["--example", tmp_path / "a.png", "--example", tmp_path / "a.png", "--example-mask", tmp_path / "a.png"],
             "one mask per example"),
            (["--example", tmp_path / "nope.png", "--example-mask", tmp_path / "a.png"], "cannot open"),
    ):
        proc = _cli(*args, "--image", tmp_path / "a.png", "--out", tmp_path / "o")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], \
            proc.stderr


@pytest.mark.slow
def test_the_prompt_generator_recipe_trains_resumes_and_writes_a_loadable_generator(tmp_path):
    from gsva.incontext_pretrain import IncontextTrainer, load_incontext_recipe
    from gsva.modeling.example_prompts import load_prompt_generator

    recipe = REPO / "train" / "configs" / "gsva_smol_incontext.yaml"
    overrides = [f"output_dir={tmp_path}", "tasks=3", "val_tasks=2", "max_steps=2", "batch_size=2", "save_every=1",
                 "log_every=1", "tensorboard=false", "warmup_steps=1"]
    trainer = IncontextTrainer(load_incontext_recipe(recipe, overrides))
    assert len(trainer.pairs["train"]["maps"]) == 6  # two pairs per task: 1 and max_shots examples
    path = trainer.run()
    assert path.is_file() and (tmp_path / "pairs_train.safetensors").is_file()
    val = json.loads((tmp_path / "incontext.json").read_text())["val"]
    assert 0.0 <= val["trained_miou_1shot"] <= 1.0 and 0.0 <= val["training_free_miou_1shot"] <= 1.0
    generator = load_prompt_generator(path.parent, trainer.config)
    assert all(torch.equal(a, b) for a, b in zip(generator.state_dict().values(), trainer.net.state_dict().values()))
    again = IncontextTrainer(load_incontext_recipe(recipe, overrides))  # resumes: no capture, step kept
    assert again.step == 2


@pytest.mark.slow
def test_the_benchmark_prints_and_writes_both_methods(tmp_path):
    out = tmp_path / "incontext.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "incontext.py"), "--pairs", "2", "--sequences", "1",
                          "--frames", "3", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"training_free", "trained"} and result["default_method"] == "trained"
    for figures in result["methods"].values():
        assert 0 <= figures["one_shot_miou"] <= 1 and 0 <= figures["3_shot_miou"] <= 1 and 0 <= figures["J&F"] <= 1
    assert "trained: 1-shot mIoU" in run.stdout and "J&F" in run.stdout
