"""Stage (e): refinement training by simulated interaction (gsva/refine_pretrain.py) and `gsva predict --points`."""

import json
import random

import numpy as np
import pytest
import torch

from gsva.cli import main as gsva_main
from gsva.cli import parse_box, parse_points
from gsva.config import ConfigError
from gsva.errors import InputError
from gsva.refine_pretrain import PROMPT_ENCODER_KEYS, RefineRecipe, evaluation_click, sample_click


def _square(h=40, w=40, box=(10, 10, 30, 30)):
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_evaluation_click_is_the_centre_of_the_larger_error_region():
    gt = _square()
    (x, y), label = evaluation_click(np.zeros_like(gt), gt)
    assert label == 1 and 18 <= x <= 22 and 18 <= y <= 22  # the centre of the missed square
    pred = gt.copy()
    pred[0:8, 0:40] = True  # a false-positive band along the top, thicker than any miss
    pred[10:12, 10:30] = False
    (x, y), label = evaluation_click(pred, gt)
    assert label == 0 and y < 8
    assert evaluation_click(gt, gt) is None


def test_sample_click_labels_follow_the_error_region():
    rng = random.Random(0)
    gt = _square()
    pred = _square(box=(20, 10, 40, 30))  # right half wrong (false positive), left half missed
    for _ in range(200):
        (x, y), label = sample_click(pred, gt, rng)
        px, py = int(x), int(y)
        assert pred[py, px] != gt[py, px]
        assert label == int(gt[py, px])
    (x, y), label = sample_click(gt, gt, rng)  # nothing wrong: a positive click on the target
    assert label == 1 and gt[int(y), int(x)]


def test_recipe_refuses_bad_values():
    with pytest.raises(ConfigError):
        RefineRecipe(seg_start_rate=1.5).validate()
    with pytest.raises(ConfigError):
        RefineRecipe(val_clicks=3).validate()
    with pytest.raises(ConfigError):
        RefineRecipe(max_rounds=0).validate()


def test_points_and_box_flags_parse_and_refuse_bad_text():
    assert parse_points("10,20,1; 30.5,4,0;5,6") == ([(10.0, 20.0), (30.5, 4.0), (5.0, 6.0)], [1, 0, 1])
    assert parse_box("1,2,30,40") == (1.0, 2.0, 30.0, 40.0)
    for bad in ("", "1", "1,2,3,4", "a,b"):
        with pytest.raises(InputError):
            parse_points(bad)
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(InputError):
            parse_box(bad)


def test_predict_refines_the_first_target_from_clicks(tmp_path, capsys):
    from gsva.data.synth import make_scene

    from PIL import Image

    scene = make_scene(3, 0)
    image_path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image_path)
    obj = max((o for o in scene.objects if not o.occluded), key=lambda o: o.radius)
    cx, cy = obj.cx, obj.cy
    out = tmp_path / "out"
    assert gsva_main(["predict", "--image", str(image_path), "--points", f"{cx},{cy},1", "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())
    assert [t["status"] for t in record["targets"]] == ["seg"]
    mask = np.asarray(Image.open(out / "mask_0.png")) > 0
    assert mask[int(cy), int(cx)]
    assert "refined" in capsys.readouterr().out
    assert gsva_main(["predict", "--image", str(image_path), "--points", "1e9,5", "--out", str(out)]) == 2
    assert gsva_main(["predict", "--image", str(image_path), "--out", str(out)]) == 2


def test_refine_stage_trains_only_click_and_mask_prompt_parts(tmp_path, synth_root):
    """A few steps on the shipped default: the answer path's weights are untouched, the click/mask-prompt parts
    change, the captured starts are reused on resume, and the figures are written."""
    from safetensors.torch import load_file

    from gsva.checkpoint import load_model
    from gsva.inference import default_model_dir
    from gsva.refine_pretrain import RefineTrainer

    recipe = RefineRecipe(init_from=str(default_model_dir()), data_root=str(synth_root), output_dir=str(tmp_path),
                          capture_batches=2, val_batches=1, capture_batch_size=2, max_steps=3, max_rounds=2,
                          batch_size=2, val_slots=3, val_clicks=5, log_every=1, save_every=3, lr=1e-2,
                          warmup_steps=1, tensorboard=False)
    before = {k: v.clone() for k, v in load_model(default_model_dir())[0].state_dict().items() if k.startswith("sam.")}
    final = RefineTrainer(recipe).run()
    starts = load_file(str(tmp_path / "starts_train.safetensors"))
    assert starts["prompt"].shape[0] == starts["gt"].shape[0] == starts["low_res"].shape[0] > 0
    after = load_model(final)[0].state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k[len("sam."):].startswith(PROMPT_ENCODER_KEYS) for k in changed)
    figures = json.loads((tmp_path / "refine.json").read_text())["val"]
    assert set(figures) >= {"from_seg_miou_0", "from_seg_noc90", "from_nothing_miou_1", "from_nothing_noc90"}
    assert all(0.0 <= figures[k] <= 1.0 for k in figures if "miou" in k)
    resumed = RefineTrainer(recipe)  # reads the captured starts instead of capturing again
    assert resumed.step == 3 and torch.equal(resumed.starts["train"]["prompt"], starts["prompt"])
