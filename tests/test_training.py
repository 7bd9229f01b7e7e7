"""Short training runs on the micro config: the loss falls, checkpoints resume, DeepSpeed ZeRO-2 runs on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gsva.engine import Trainer, latest_checkpoint, load_recipe, lr_at

from .conftest import micro_config

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, synth_root, **kw):
    overrides = micro_config().to_dict()
    overrides.pop("name")
    data = {"model": "gsva-tiny", "model_overrides": overrides, "data_root": str(synth_root),
            "tokenizer_vocab_size": 400, "output_dir": str(tmp_path / "run"), "max_steps": 40, "batch_size": 4,
            "lr": 2e-3, "warmup_steps": 5, "num_workers": 0, "log_every": 1, "save_every": 20, "seed": 3}
    data.update(kw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_lr_schedule_warms_up_then_decays(tmp_path, synth_root):
    r = load_recipe(_recipe(tmp_path, synth_root, max_steps=110, warmup_steps=10))
    assert lr_at(0, r) == pytest.approx(0.1) and lr_at(9, r) == pytest.approx(1.0)
    assert lr_at(60, r) == pytest.approx(0.5) and lr_at(110, r) == 0.0


def test_recipe_rejects_unknown_keys(tmp_path, synth_root):
    from gsva.config import ConfigError

    with pytest.raises(ConfigError, match="lerning_rate"):
        load_recipe(_recipe(tmp_path, synth_root, lerning_rate=1.0))
    with pytest.raises(ConfigError, match="max_steps"):
        load_recipe(_recipe(tmp_path, synth_root), ["max_steps=0"])


@pytest.mark.slow
def test_short_training_run_loss_falls_and_resumes(tmp_path, synth_root):
    recipe = load_recipe(_recipe(tmp_path, synth_root))
    trainer = Trainer(recipe)
    losses = [log.loss for log in trainer.steps()]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4]), losses
    ckpt = latest_checkpoint(Path(recipe.output_dir))
    assert ckpt.name == "step_0000040"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 40
    resumed = Trainer(load_recipe(_recipe(tmp_path, synth_root), ["max_steps=42"]))
    assert resumed.start_step == 40
    more = [log.step for log in resumed.steps()]
    assert more == [41, 42]


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu(tmp_path, synth_root):
    recipe = _recipe(tmp_path, synth_root, max_steps=3, save_every=3,
                     deepspeed_config=str(REPO / "ds_configs" / "zero2.json"))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", "29631",
           str(REPO / "train" / "pretrain.py"), "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "deepspeed").is_dir()
    assert "step 3 loss" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_loss_curve(tmp_path, synth_root):
    import torch

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = [log.loss for log in Trainer(load_recipe(_recipe(tmp_path / "a", synth_root, max_steps=6,
                                                                save_every=3))).steps()]
    first = Trainer(load_recipe(_recipe(tmp_path / "b", synth_root, max_steps=6, save_every=3)))
    logs = first.steps()
    head = [next(logs).loss for _ in range(4)]  # step 3's checkpoint is written before step 4 is reported
    logs.close()  # killed during step 5
    del first
    torch.manual_seed(12345)  # a fresh process would start from other global RNG state
    resumed = Trainer(load_recipe(_recipe(tmp_path / "b", synth_root, max_steps=6, save_every=3)))
    assert resumed.start_step == 3
    tail = [log.loss for log in resumed.steps()]
    np.testing.assert_allclose(head[:3] + tail, straight, rtol=1e-4, atol=1e-5)


def test_non_finite_losses_skip_the_update_then_stop_the_run(tmp_path, synth_root):
    import torch

    trainer = Trainer(load_recipe(_recipe(tmp_path, synth_root, max_steps=8, save_every=100, max_bad_steps=2)))
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(batch):
        out = forward(batch)
        calls["n"] += 1
        if calls["n"] in (2, 4, 5, 6):
            out.loss.total = out.loss.total * float("nan")
        return out

    trainer.model.forward = poisoned
    logs = trainer.steps()
    first = next(logs)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    second = next(logs)
    assert not first.skipped and second.skipped and np.isnan(second.loss)
    for k, v in trainer.model.state_dict().items():  # a skipped step changes no weight
        assert torch.equal(v, before[k]), k
    assert not next(logs).skipped
    assert next(logs).skipped and next(logs).skipped
    with pytest.raises(RuntimeError, match="non-finite loss in 3 consecutive steps .* max_bad_steps=2"):
        next(logs)


@pytest.mark.slow
def test_validation_keeps_the_best_checkpoint(tmp_path, synth_root):
    from PIL import Image

    from gsva.checkpoint import load_model
    from gsva.cli import main as gsva_main

    recipe = load_recipe(_recipe(tmp_path, synth_root, max_steps=4, save_every=100, val_split="val", val_every=2,
                                 val_limit=2, keep_last=1))
    trainer = Trainer(recipe)
    values = []
    original = trainer.validate_and_keep_best

    def spy(step):
        values.append((step, original(step)))
        return values[-1][1]

    trainer.validate_and_keep_best = spy
    list(trainer.steps())
    assert [s for s, _ in values] == [2, 4]
    best = tmp_path / "run" / "checkpoints" / "best"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["metric"] == "rela.gIoU" and state["value"] == max(v for _, v in values)
    assert state["step"] == max(values, key=lambda sv: (sv[1], -sv[0]))[0]
    assert "rela" in state["validation"] and latest_checkpoint(tmp_path / "run").name == "step_0000004"
    load_model(best)
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "img.png")
    assert gsva_main(["predict", "--model", str(best), "--image", str(tmp_path / "img.png"), "--query", "the star",
                      "--out", str(tmp_path / "pred")]) == 0


def test_validation_settings_are_checked(tmp_path, synth_root):
    from gsva.config import ConfigError

    with pytest.raises(ConfigError, match="needs val_split"):
        load_recipe(_recipe(tmp_path, synth_root, val_every=5))
    with pytest.raises(ConfigError, match="best_metric"):
        load_recipe(_recipe(tmp_path, synth_root, best_metric="gIoU"))
    with pytest.raises(ConfigError, match="val_protocol"):
        load_recipe(_recipe(tmp_path, synth_root, val_protocol="oracle"))


@pytest.mark.slow
def test_pretrain_script_writes_tensorboard_scalars(tmp_path, synth_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sys.path.insert(0, str(REPO / "train"))
    import pretrain

    recipe = _recipe(tmp_path, synth_root, max_steps=2, save_every=100, val_split="val", val_every=2, val_limit=1)
    assert pretrain.main(["--config", str(recipe)]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/skipped", "val/rela/gIoU"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("val/rela/gIoU")] == [2]


@pytest.mark.parametrize("path", sorted((REPO / "train" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert (recipe.betas, recipe.weight_decay, recipe.grad_clip) == ([0.9, 0.95], 0.0, 1.0)
    if "_ft_grefcoco" in path.name:  # appendix Table A3, fine-tuning on GRES
        assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.grad_accum, recipe.warmup_steps) == \
            (1e-4, 10, 2, 10, 100)
        assert recipe.precision == "bf16" and recipe.deepspeed_config == "ds_configs/zero2.json"


def test_epochs_set_the_step_count(tmp_path, synth_root):
    trainer = Trainer(load_recipe(_recipe(tmp_path, synth_root, epochs=2, batch_size=4, grad_accum=2)))
    images = len(trainer.dataset)
    assert trainer.recipe.max_steps == 2 * max(1, (images // 4) // 2)
    with pytest.raises(Exception, match="epochs must be >= 1"):
        load_recipe(_recipe(tmp_path, synth_root, epochs=0))
