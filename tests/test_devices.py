"""The recipe key ``device`` (gsva.devices): plain-PyTorch training runs where it says, autocast follows it."""

import pytest
import torch

from gsva.config import ConfigError
from gsva.devices import autocast_for, check_device_name, resolve_device, to_device
from gsva.training import Trainer, load_recipe

from .test_training import _recipe


def test_device_names_are_checked_without_looking_at_the_hardware():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert check_device_name(name) == name
    for name in ("gpu", "cuda:", "cuda:x", "", None, 0):
        with pytest.raises(ConfigError, match="device must be"):
            check_device_name(name)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_autocast_follows_the_device_type():
    with autocast_for(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    batch = (torch.ones(1), [torch.zeros(2), "text"], 3)
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[1][1] == "text" and moved[2] == 3


def test_recipe_rejects_an_unknown_device(tmp_path, synth_root):
    with pytest.raises(ConfigError, match="device must be"):
        load_recipe(_recipe(tmp_path, synth_root, device="tpu"))


def _train_on(device: str, tmp_path, synth_root):
    trainer = Trainer(load_recipe(_recipe(tmp_path, synth_root, device=device, max_steps=2, save_every=2,
                                          precision="bf16")))
    logs = list(trainer.steps())
    return trainer, logs


@pytest.mark.slow
def test_training_runs_on_the_cpu_when_asked(tmp_path, synth_root):
    trainer, logs = _train_on("cpu", tmp_path, synth_root)
    assert [log.step for log in logs] == [1, 2] and all(torch.isfinite(torch.tensor([log.loss for log in logs])))
    assert {p.device.type for p in trainer.model.parameters()} == {"cpu"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_uses_the_gpu_when_there_is_one(tmp_path, synth_root):
    trainer, logs = _train_on("auto", tmp_path, synth_root)
    assert [log.step for log in logs] == [1, 2] and all(torch.isfinite(torch.tensor([log.loss for log in logs])))
    assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(v["exp_avg"].is_cuda for v in state.values())


def test_stage_recipes_take_the_device_key(synth_root, tmp_path):
    from gsva.sam_pretrain import SamRecipe

    with pytest.raises(ConfigError, match="device must be"):
        SamRecipe(data_root=str(synth_root), device="tpu").validate()
    assert SamRecipe(data_root=str(synth_root), device="cpu").validate().device == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_stage_trains_on_the_gpu_and_writes_cpu_weights(synth_root, tmp_path):
    from safetensors.torch import load_file

    from gsva.sam_pretrain import SamRecipe, SamTrainer

    recipe = SamRecipe(data_root=str(synth_root), output_dir=str(tmp_path / "sam"), max_steps=2, batch_size=2,
                       save_every=2, val_images=2, num_workers=0, tensorboard=False, device="auto").validate()
    trainer = SamTrainer(recipe)
    assert trainer.device.type == "cuda"
    path = trainer.run()
    assert all(torch.isfinite(v).all() for v in load_file(str(path)).values())
