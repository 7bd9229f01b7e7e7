"""Short training runs on the micro config: the loss falls, checkpoints resume, DeepSpeed ZeRO-2 runs on CPU
(test_killed_deepspeed_run_resumes_to_the_same_loss_curve)."""

import dataclasses
import json
from collections import Counter
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gsva.config import ConfigError
from gsva.training import Trainer, latest_checkpoint, load_recipe, lr_multiplier

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
    at = [lr_multiplier(step, r.warmup_steps, r.max_steps) for step in (0, 9, 60, 110)]
    assert at == pytest.approx([0.1, 1.0, 0.5, 0.0])


def test_recipe_rejects_unknown_keys(tmp_path, synth_root):
    from gsva.config import ConfigError

    with pytest.raises(ConfigError, match="lerning_rate"):
        load_recipe(_recipe(tmp_path, synth_root, lerning_rate=1.0))
    with pytest.raises(ConfigError, match="max_steps"):
        load_recipe(_recipe(tmp_path, synth_root), ["max_steps=0"])


def test_trainer_reproduces_the_loss_curve_recorded_before_the_restructuring(tmp_path, synth_root):
    """tests/data/loss_curve_micro.json: every StepLog of a fixed micro recipe (LoRA rank 4, gradient accumulation
    2, describe and attribute conversations, a checkpoint at step 4), recorded with the single-file trainer of
    commit ec31b83 that gsva.training replaced. The same recipe must give the same curve."""
    golden = json.loads((REPO / "tests" / "data" / "loss_curve_micro.json").read_text())
    overrides = micro_config(lora_rank=4).to_dict()
    overrides.pop("name")
    recipe = load_recipe(_recipe(tmp_path, synth_root, **golden["recipe"], model_overrides=overrides))
    logs = [dataclasses.asdict(log) for log in Trainer(recipe).steps()]
    assert [log["step"] for log in logs] == [g["step"] for g in golden["steps"]] == list(range(1, 9))
    for log, want in zip(logs, golden["steps"]):
        for key, value in want.items():
            if isinstance(value, float):
                assert log[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (log["step"], key)
            else:
                assert log[key] == value, (log["step"], key)


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
        out = original(step)
        values.append((step, out["value"]))
        return out

    trainer.validate_and_keep_best = spy
    logs = list(trainer.steps())
    assert [s for s, _ in values] == [2, 4]
    assert [log.validation is not None for log in logs] == [False, True, False, True]
    assert logs[1].validation["rela"]["gIoU"] == values[0][1]
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
    # the names are checked when the trainer is set up, before the model or the data are built
    for bad, match in (({"best_metric": "nope.gIoU"}, "unknown scorer"), ({"val_dataset": "coco"}, "val_dataset")):
        with pytest.raises(ConfigError, match=match):
            Trainer(load_recipe(_recipe(tmp_path, synth_root, data_root=str(tmp_path / "absent"), **bad)))
    with pytest.raises(ConfigError, match="val_protocol"):
        load_recipe(_recipe(tmp_path, synth_root, val_protocol="oracle"))


@pytest.mark.slow
def test_gsva_train_writes_tensorboard_scalars(tmp_path, synth_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gsva.cli import main as gsva_main

    recipe = _recipe(tmp_path, synth_root, max_steps=2, save_every=100, val_split="val", val_every=2, val_limit=1)
    assert gsva_main(["train", "--config", str(recipe)]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/skipped", "val/rela/gIoU"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("val/rela/gIoU")] == [2]


@pytest.mark.parametrize("path", sorted((REPO / "train" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    if path.name.endswith(("_vision.yaml", "_crops.yaml")):  # stages (a), (a2) of gsva-smol: their own recipe type
        from gsva.vision_pretrain import load_vision_recipe

        stage_a = Path(__file__).resolve().parents[1] / "train/stages/gsva-smol/vision.safetensors"
        overrides = [f"vision_init={stage_a}"] if path.name.endswith("_crops.yaml") else []  # runs/ is not in git
        vision = load_vision_recipe(path, overrides)
        assert vision.model == "gsva-smol" and vision.max_steps >= 1
        return
    if path.name.endswith("_sam.yaml"):  # stage (c) of gsva-smol: SAM with point and box prompts
        from gsva.sam_pretrain import load_sam_recipe

        sam = load_sam_recipe(path)
        assert sam.model == "gsva-smol" and sam.max_steps >= 1 and 0.0 < sam.box_rate < 1.0
        return
    if path.name.endswith("_pointer.yaml"):  # stage (d6) of gsva-smol: the pointer's slot relations
        from gsva.pointer_relations import load_pointer_recipe

        pointer = load_pointer_recipe(path)
        assert pointer.model == "gsva-smol" and pointer.relation_layers >= 1 and pointer.max_steps >= 1
        return
    if path.name.endswith("_incontext.yaml"):  # segment by example: the prompt generator (issue #16)
        from gsva.incontext_pretrain import load_incontext_recipe

        incontext = load_incontext_recipe(path)
        assert incontext.model == "gsva-smol" and incontext.val_seed != incontext.seed and incontext.max_shots >= 2
        return
    if path.name.endswith("_refine.yaml"):  # stage (e) of gsva-smol: refinement by simulated clicks
        from gsva.refine_pretrain import load_refine_recipe

        refine = load_refine_recipe(path)
        assert refine.model == "gsva-smol" and 1 <= refine.max_rounds <= 8 and 0.0 <= refine.seg_start_rate <= 1.0
        assert refine.max_steps >= 1
        return
    recipe = load_recipe(path)
    assert (recipe.betas, recipe.weight_decay, recipe.grad_clip) == ([0.9, 0.95], 0.0, 1.0)
    if "_ft_grefcoco" in path.name:  # appendix Table A3, fine-tuning on GRES
        assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.grad_accum, recipe.warmup_steps) == \
            (1e-4, 10, 2, 10, 100)
        assert recipe.precision == "bf16" and recipe.deepspeed_config == "ds_configs/zero2.json"
    if "_pretrain" in path.name:  # Table A3, pre-training
        from gsva.config import get_named_config
        from gsva.data.training_mix import PAPER_DATASETS

        assert (recipe.lr, recipe.max_steps, recipe.epochs, recipe.batch_size, recipe.grad_accum,
                recipe.warmup_steps) == (3e-4, 50000, None, 2, 10, 100)
        assert recipe.datasets == PAPER_DATASETS and recipe.sampling == "weighted"
        assert recipe.family_weights == {"sem_seg": 9, "refer_seg": 6, "vqa": 3, "reason_seg": 1}
        assert get_named_config(recipe.model).lora.rank == (8 if "7b" in path.name else 64)
        assert recipe.precision == "bf16" and recipe.deepspeed_config == "ds_configs/zero2.json"
    if "_ft_res" in path.name:  # Table A3, fine-tuning on classic RES
        assert (recipe.lr, recipe.max_steps, recipe.batch_size, recipe.grad_accum, recipe.warmup_steps) == \
            (1e-4, 50000, 2, 10, 100)
        assert recipe.datasets == {"refer_seg": ["refclef", "refcoco", "refcoco+", "refcocog"]}
        assert recipe.precision == "bf16" and recipe.deepspeed_config == "ds_configs/zero2.json"


def test_epochs_set_the_step_count(tmp_path, synth_root):
    trainer = Trainer(load_recipe(_recipe(tmp_path, synth_root, epochs=2, batch_size=4, grad_accum=2)))
    images = len(trainer.dataset)
    assert trainer.recipe.max_steps == 2 * max(1, (images // 4) // 2)
    with pytest.raises(Exception, match="epochs must be >= 1"):
        load_recipe(_recipe(tmp_path, synth_root, epochs=0))


def _mixture_recipe(tmp_path, standins_root, **kw):
    data = {"datasets": {f: list(v) for f, v in __import__("gsva.data.training_mix", fromlist=["x"])
                         .PAPER_DATASETS.items()},
            "dataset_dir": str(standins_root), "data_root": str(standins_root / "refer_seg"), "sampling": "weighted"}
    data.update(kw)
    return _recipe(tmp_path, standins_root, **data)


def test_mixture_recipe_trains_on_all_families_and_skips_bad_records(tmp_path, standins_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(standins_root, root)
    for folder in ("ade20k", "mapillary", "vlpart/pascal_part"):  # sem_seg datasets 0, 2 and 4
        for jpg in (root / folder).rglob("*.jpg"):
            jpg.write_bytes(b"not a jpeg")  # every draw of these fails to load and is replaced
    trainer = Trainer(load_recipe(_mixture_recipe(tmp_path, root, max_steps=6, batch_size=4, save_every=6)))
    assert len(trainer.dataset) == 6 * 4
    families = Counter(trainer.dataset.draw(i)[0] for i in range(len(trainer.dataset)))
    assert set(families) == {"sem_seg", "refer_seg", "vqa", "reason_seg"}
    logs = list(trainer.steps())
    assert [g.step for g in logs] == list(range(1, 7)) and all(np.isfinite(g.loss) for g in logs)
    bad = sum(1 for i in range(len(trainer.dataset)) if trainer.dataset.draw(i)[:2] in
              {("sem_seg", 0), ("sem_seg", 2), ("sem_seg", 4)})
    assert bad > 0 and logs[-1].bad_records >= bad  # each failed draw is counted (redraws may fail again)


def test_mixture_recipe_settings_are_checked(tmp_path, standins_root):
    from gsva.config import ConfigError

    with pytest.raises(ConfigError, match="datasets: .*unknown dataset 'ade21k'"):
        load_recipe(_mixture_recipe(tmp_path, standins_root, datasets={"sem_seg": ["ade21k"]}))
    with pytest.raises(ConfigError, match="weighted sampling trains for max_steps"):
        load_recipe(_mixture_recipe(tmp_path, standins_root, epochs=2))
    with pytest.raises(ConfigError, match="family_weights needs a weight > 0 for vqa"):
        load_recipe(_mixture_recipe(tmp_path, standins_root, family_weights={"sem_seg": 9, "refer_seg": 6,
                                                                             "reason_seg": 1}))
    with pytest.raises(ConfigError, match="needs dataset_dir"):
        load_recipe(_mixture_recipe(tmp_path, standins_root, dataset_dir=None))


def test_full_pass_sampling_visits_every_record_once_per_epoch(tmp_path, standins_root):
    recipe = load_recipe(_mixture_recipe(tmp_path, standins_root, sampling="full_pass", epochs=1, batch_size=2,
                                         datasets={"sem_seg": ["ade20k", "pascal_part"], "vqa": ["llava_instruct_150k"]}))
    trainer = Trainer(recipe)
    assert len(trainer.dataset) == 18 and trainer.recipe.max_steps == 9
    seen = Counter((trainer.dataset.locate(i)) for i in range(len(trainer.dataset)))
    assert len(seen) == 18 and set(seen.values()) == {1}


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, synth_root):
    import torch

    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        (tmp_path / str(flag)).mkdir()
        trainer = Trainer(load_recipe(_recipe(tmp_path / str(flag), synth_root, gradient_checkpointing=flag)))
        batch = next(trainer._batches())
        loss = trainer.model(batch).loss.total
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                    if p.grad is not None}))
    assert trainer.model.mllm.model.language_model.is_gradient_checkpointing
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def _torchrun(nproc: int, port: int, recipe: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           str(REPO / "train" / "pretrain.py"), "--config", str(recipe), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


@pytest.mark.slow
def test_two_process_zero2_and_zero3_equal_one_process_with_the_same_global_batch(tmp_path, standins_root):
    """ZeRO-2 (and ZeRO-3) data parallelism over 2 CPU processes (gloo) == 1 process accumulating the same 2 samples
    per step. The mixture draws item i for the whole run, and rank r takes items r, r + 2, ..., so both see the same
    samples; the families differ between ranks (a VQA batch beside a segmentation one), which exercises the
    identical graphs ZeRO needs (GSVAModel.forward). ZeRO-3's checkpoint is gathered from both partitions."""
    import torch

    zero2 = str(REPO / "ds_configs" / "zero2.json")
    one = _mixture_recipe(tmp_path, standins_root, max_steps=3, batch_size=1, grad_accum=2, save_every=3,
                          warmup_steps=1, deepspeed_config=zero2, tensorboard=False, output_dir=str(tmp_path / "one"))
    _torchrun(1, 29641, one)
    _torchrun(2, 29642, one, "grad_accum=1", f"output_dir={tmp_path / 'two'}")
    # the shipped ZeRO-3 config, with nothing persistent: every module's parameters are gathered when it runs and
    # released after, as for a 7B model (the micro model is below the shipped persistence threshold)
    zero3 = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    zero3["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    _torchrun(2, 29644, one, "grad_accum=1", f"output_dir={tmp_path / 'zero3'}",
              f"deepspeed_config={tmp_path / 'zero3.json'}")
    _torchrun(1, 29643, one, "grad_accum=1", f"output_dir={tmp_path / 'half'}")  # half the global batch
    a, b, half = _weights(tmp_path / "one"), _weights(tmp_path / "two"), _weights(tmp_path / "half")
    z3 = _weights(tmp_path / "zero3")  # ZeRO-3 reduces in another order: Adam amplifies ~1e-7 gradient differences
    assert a.keys() == b.keys() == z3.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"zero2 {k}: {m}")
        torch.testing.assert_close(z3[k], a[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"zero3 {k}: {m}")
    assert max(float((half[k] - a[k]).abs().max()) for k in a) > 1e-3  # the comparison can tell batches apart


@pytest.mark.slow
def test_tiny_mixture_recipe_with_deepspeed_is_killed_resumes_validates_and_keeps_the_best(tmp_path, standins_root):
    """The issue's acceptance run: the shipped tiny mixture recipe, all four families on stand-ins in the official
    layout, DeepSpeed ZeRO-2 on CPU, SIGKILLed after its first checkpoint, started again (it resumes), validated,
    and its best checkpoint loads in `gsva predict` and in the app."""
    import signal
    import time

    from gsva.cli import main as gsva_main

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", "29661",
           str(REPO / "train" / "pretrain.py"), "--config", str(REPO / "train" / "configs" / "gsva_tiny_mixture.yaml"),
           f"dataset_dir={standins_root}", f"data_root={standins_root / 'refer_seg'}", f"output_dir={out}",
           "max_steps=10", "save_every=2", "val_every=2", "val_limit=3", "batch_size=2", "grad_accum=1",
           "num_workers=0", "log_every=1"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_0000002" / "trainer_state.json").exists():
        assert first.poll() is None and time.time() < deadline, "the first run ended before its first checkpoint"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = latest_checkpoint(out)
    assert killed_at is not None and killed_at.name < "step_0000010" and not (out / "final").exists()

    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"resuming from {killed_at}" in log and "step 10 loss" in log
    assert "grefcoco val, teacher-forced, 3 images" in log
    best = out / "checkpoints" / "best"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["metric"] == "rela.gIoU" and 2 <= state["step"] <= 10 and state["step"] % 2 == 0
    image = next((standins_root / "refer_seg" / "images" / "mscoco" / "images" / "train2014").glob("*.jpg"))
    assert gsva_main(["predict", "--model", str(best), "--image", str(image), "--query", "the red circle",
                      "--out", str(tmp_path / "pred")]) == 0
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = subprocess.Popen([sys.executable, str(REPO / "app" / "app.py"), "--model", str(best), "--port", str(port)],
                           cwd=REPO, env=dict(env, GRADIO_ANALYTICS_ENABLED="False"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert app.poll() is None, "the app exited: " + app.stdout.read()[-3000:]
            assert time.time() < deadline, "the app did not start in 120 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
    finally:
        app.terminate()
        app.wait(timeout=30)


def _step_losses(log: str) -> dict[int, float]:
    import re

    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"train: step (\d+) loss ([0-9.]+)", log)}


@pytest.mark.slow
def test_killed_deepspeed_run_resumes_to_the_same_loss_curve(tmp_path, standins_root):
    """DeepSpeed restores model, optimizer and scheduler; the data position follows from the step (every mixture
    item is a pure function of (seed, position)), so the resumed curve continues the uninterrupted one."""
    import signal
    import time

    recipe = _mixture_recipe(tmp_path, standins_root, max_steps=8, save_every=2, batch_size=2, warmup_steps=2,
                             deepspeed_config=str(REPO / "ds_configs" / "zero2.json"), tensorboard=False)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")

    def cmd(out: Path, port: int) -> list[str]:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(port),
                str(REPO / "train" / "pretrain.py"), "--config", str(recipe), f"output_dir={out}"]

    straight = subprocess.run(cmd(tmp_path / "a", 29671), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # a whole ZeRO-2 run on CPU through the deepspeed launcher: its final model and DeepSpeed's own checkpoints
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "a" / "checkpoints" / "step_0000008" / "deepspeed").is_dir()
    assert "step 8 loss" in straight.stdout + straight.stderr
    first = subprocess.Popen(cmd(tmp_path / "b", 29672), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoints" / "step_0000002" / "trainer_state.json").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    resumed_from = int(latest_checkpoint(tmp_path / "b").name.split("_")[1])
    assert resumed_from < 8
    resumed = subprocess.run(cmd(tmp_path / "b", 29673), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _step_losses(straight.stdout + straight.stderr), _step_losses(resumed.stdout + resumed.stderr)
    assert sorted(b) == list(range(resumed_from + 1, 9)) and sorted(a) == list(range(1, 9))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)


def _write_custom_from_grefcoco(gref_dir: Path, image_dir: Path, out: Path) -> int:
    """Our custom format written from a gRefCOCO folder (what a user's converter would produce)."""
    import shutil

    out.mkdir(parents=True)
    shutil.copy(gref_dir / "instances.json", out / "instances.json")
    shutil.copytree(image_dir, out / "images")
    refs = json.loads((gref_dir / "grefs(unc).json").read_text())
    entries = [{"image_id": r["image_id"], "sentences": [s["sent"] for s in r["sentences"]],
                "ann_ids": [a for a in r["ann_id"] if a != -1], "split": r["split"]} for r in refs]
    (out / "expressions.json").write_text(json.dumps(entries))
    return len(entries)


@pytest.mark.slow
def test_custom_data_recipe_fine_tunes_the_default_model_and_validates(tmp_path, standins_root):
    refer = standins_root / "refer_seg"
    _write_custom_from_grefcoco(refer / "grefcoco", refer / "images" / "mscoco" / "images" / "train2014",
                                tmp_path / "my_data")
    recipe = load_recipe(REPO / "train" / "configs" / "gsva_tiny_ft_custom.yaml", [
        f"datasets={{refer_seg: ['custom:{tmp_path / 'my_data'}']}}", f"data_root={tmp_path / 'my_data'}",
        f"dataset_dir={tmp_path}", f"output_dir={tmp_path / 'run'}", "epochs=1", "batch_size=8", "val_every=2",
        "val_limit=2", "num_workers=0", "tensorboard=false"])
    trainer = Trainer(recipe)
    assert trainer.recipe.max_steps == len(trainer.dataset) // 8 >= 3
    logs = list(trainer.steps())
    assert len(logs) == trainer.recipe.max_steps and all(np.isfinite(g.loss) for g in logs)
    state = json.loads((tmp_path / "run" / "checkpoints" / "best" / "trainer_state.json").read_text())
    assert state["metric"] == "rela.gIoU" and "N-acc" in state["validation"]["rela"]


def test_optional_recipe_keys_accept_null(tmp_path, synth_root):
    from gsva.config import ConfigError

    assert load_recipe(_recipe(tmp_path, synth_root), ["val_limit=null"]).val_limit is None
    with pytest.raises(ConfigError, match="max_steps has the wrong type"):
        load_recipe(_recipe(tmp_path, synth_root), ["max_steps=null"])


def test_slot_row_words_must_be_two_strings(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: gsva-smol\nslot_row_words: [yes, no]\n")  # YAML reads two booleans
    with pytest.raises(ConfigError, match="quote"):
        load_recipe(path)
    path.write_text('model: gsva-smol\nslot_row_words: ["yes", "no"]\n')
    assert load_recipe(path).slot_row_words == ["yes", "no"]
