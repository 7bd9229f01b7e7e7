"""The small parts of gsva.training, each on its own: schedule, checkpointer, distributed helpers, validation."""

import json

import pytest
import torch

from gsva.config import ConfigError
from gsva.distributed import all_finite, barrier, gather_objects, rank_and_world
from gsva.training import TrainRecipe
from gsva.training.checkpointer import Checkpointer, latest_checkpoint
from gsva.training.schedule import lr_multiplier, warmup_linear_decay
from gsva.training.validation import Validator


def test_schedule_drives_the_optimizer_and_a_resumed_run_continues_it():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = warmup_linear_decay(opt, warmup_steps=4, max_steps=12)
    seen = []
    for _ in range(14):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_multiplier(s, 4, 12) for s in range(14)])
    assert seen[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0]) and seen[12:] == [0.0, 0.0]
    resumed = torch.optim.SGD([param], lr=2.0)
    warmup_linear_decay(resumed, 4, 12, offset=7)
    assert resumed.param_groups[0]["lr"] == pytest.approx(seen[7])
    assert [lr_multiplier(s, 0, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_checkpointer_marks_complete_rotates_and_keeps_only_a_better_best(tmp_path, micro_model, tokenizer):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        d = ckpt.step_dir(step)
        ckpt.write_model(d, micro_model, tokenizer)
        ckpt.complete(d, step, {"lr": 1.0})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000004", "step_0000006"]
    ckpt.write_model(ckpt.step_dir(8), micro_model, tokenizer)  # killed before trainer_state.json
    assert latest_checkpoint(tmp_path) == ckpt.latest() == ckpt.step_dir(6)
    assert ckpt.resumed_step(ckpt.latest()) == 6
    assert json.loads((ckpt.step_dir(6) / "trainer_state.json").read_text())["recipe"] == {"lr": 1.0}
    assert ckpt.best_value() is None
    assert not ckpt.keep_if_best(micro_model, tokenizer, 2, "rela.gIoU", None, {})
    assert ckpt.keep_if_best(micro_model, tokenizer, 2, "rela.gIoU", 0.3, {"rela": {"gIoU": 0.3}})
    assert not ckpt.keep_if_best(micro_model, tokenizer, 4, "rela.gIoU", 0.3, {"rela": {"gIoU": 0.3}})
    assert ckpt.keep_if_best(micro_model, tokenizer, 6, "rela.gIoU", 0.5, {"rela": {"gIoU": 0.5}})
    state = json.loads((tmp_path / "checkpoints" / "best" / "trainer_state.json").read_text())
    assert (state["step"], state["value"], ckpt.best_value()) == (6, 0.5, 0.5)


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world() == (3, 4)
    assert all_finite(torch.tensor(1.5), 1) and not all_finite(torch.tensor(float("nan")), 1)
    assert not all_finite(torch.tensor([1.0, float("inf")]), 1)
    assert gather_objects({"a": 1}, 1) == [{"a": 1}]
    barrier(1)


def test_validator_checks_names_and_knows_when_it_is_due():
    recipe = TrainRecipe(val_split="val", val_every=3, max_steps=10).validate()
    validator = Validator(recipe)
    assert [s for s in range(1, 11) if validator.due(s)] == [3, 6, 9, 10]
    assert not any(Validator(TrainRecipe(max_steps=10).validate()).due(s) for s in range(1, 11))
    assert validator.value({"rela": {"gIoU": 0.4}}) == 0.4
    with pytest.raises(ConfigError, match="reports"):
        validator.value({"rela": {"cIoU": 0.4}})
    with pytest.raises(ConfigError, match="unknown scorer"):
        Validator(TrainRecipe(best_metric="nope.gIoU").validate())
    with pytest.raises(ConfigError, match="val_dataset"):
        Validator(TrainRecipe(val_dataset="coco").validate())


def test_recipe_reads_exponent_floats_that_yaml_1_1_leaves_as_strings(tmp_path):
    from gsva.training import load_recipe

    (tmp_path / "r.yaml").write_text("lr: 5e-4\nweight_decay: 0\n")
    recipe = load_recipe(tmp_path / "r.yaml", ["warmup_steps=3", "grad_clip=2E+0"])
    assert (recipe.lr, recipe.grad_clip, recipe.weight_decay) == (5e-4, 2.0, 0.0)
    assert load_recipe(tmp_path / "r.yaml", ["lr=1e-4"]).lr == 1e-4
    for bad in ("lr=fast", "lr=1e", "max_steps=1e3"):  # not a number, and an int field stays an int
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_recipe(tmp_path / "r.yaml", [bad])


def test_init_from_takes_loss_overrides_and_refuses_architecture_ones(tmp_path, micro_model, tokenizer):
    from gsva.checkpoint import save_model
    from gsva.training.model_setup import build_model_and_tokenizer

    save_model(micro_model, tokenizer, tmp_path / "start")
    recipe = TrainRecipe(init_from=str(tmp_path / "start"),
                         model_overrides={"loss": {"slot_ce_weight": 2.5}, "reject_threshold": 0.4})
    model, _ = build_model_and_tokenizer(recipe, None)
    assert (model.config.loss.slot_ce_weight, model.config.reject_threshold) == (2.5, 0.4)
    assert model.config.loss.bce_weight == micro_model.config.loss.bce_weight
    assert model.training
    with pytest.raises(ConfigError, match=r"\['sam'\] cannot change a model loaded by init_from"):
        build_model_and_tokenizer(TrainRecipe(init_from=str(tmp_path / "start"),
                                              model_overrides={"sam": {"decoder_depth": 3}}), None)
    with pytest.raises(ConfigError):
        build_model_and_tokenizer(TrainRecipe(init_from=str(tmp_path / "start"),
                                              model_overrides={"loss": {"no_such_weight": 1.0}}), None)
