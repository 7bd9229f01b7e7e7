import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gsva.checkpoint import CheckpointError, load_model, save_model


def _outputs(model):
    torch.manual_seed(1)
    ids = torch.tensor([[1] + [model.token_ids.image] * model.config.num_image_tokens + [5, 6, 7]])
    pixels = torch.randn(1, 3, model.config.vision.image_size, model.config.vision.image_size)
    with torch.no_grad():
        hidden, _ = model.language_forward(model.embed_inputs(ids, model.image_features(pixels)))
    return hidden


def test_round_trip_is_exact_and_strict(micro_model, tokenizer, tmp_path):
    save_model(micro_model, tokenizer, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) >= ["config.json", "model.safetensors"]
    loaded, tok = load_model(tmp_path / "ckpt")
    assert loaded.config == micro_model.config
    assert len(tok) == len(tokenizer) and loaded.token_ids == micro_model.token_ids
    torch.testing.assert_close(_outputs(loaded), _outputs(micro_model.eval()), rtol=0, atol=0)


def test_missing_unexpected_and_misshaped_keys_are_named(micro_model, tokenizer, tmp_path):
    ckpt = save_model(micro_model, tokenizer, tmp_path / "ckpt")
    state = load_file(str(ckpt / "model.safetensors"))
    state.pop("seg_projector.layers.0.bias")
    state["extra.weight"] = torch.zeros(1)
    state["seg_projector.layers.2.weight"] = torch.zeros(3, 3)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt)
    msg = str(err.value)
    assert "seg_projector.layers.0.bias" in msg and "extra.weight" in msg and "layers.2.weight" in msg


def test_corrupt_or_missing_files(micro_model, tokenizer, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    ckpt = save_model(micro_model, tokenizer, tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(ckpt)
    ckpt = save_model(micro_model, tokenizer, tmp_path / "ckpt2")
    (ckpt / "config.json").write_text(json.dumps({"name": "x", "bogus": 1}))
    with pytest.raises(CheckpointError, match="bogus"):
        load_model(ckpt)
    ckpt = save_model(micro_model, tokenizer, tmp_path / "ckpt3")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_model(ckpt)


def test_save_replaces_atomically(micro_model, tokenizer, tmp_path):
    save_model(micro_model, tokenizer, tmp_path / "ckpt")
    save_model(micro_model, tokenizer, tmp_path / "ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or old directories left


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it on the way)."""


def test_a_crash_mid_write_leaves_the_old_checkpoint_or_none(micro_model, tokenizer, tmp_path, monkeypatch):
    import torch

    import gsva.checkpoint as ckpt_module
    from gsva.training import latest_checkpoint

    save_model(micro_model, tokenizer, tmp_path / "ckpt", extra_files={"trainer_state.json": '{"step": 1}'})
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    real = ckpt_module.save_file

    def crash(state, path, metadata=None):
        real(dict(list(state.items())[:3]), path, metadata=metadata)  # a partial file, then the process dies
        raise Killed()

    monkeypatch.setattr(ckpt_module, "save_file", crash)
    with torch.no_grad():
        for p in micro_model.parameters():
            p.add_(1.0)
    for target in (tmp_path / "ckpt", tmp_path / "fresh"):
        with pytest.raises(Killed):
            save_model(micro_model, tokenizer, target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing half-written is left behind
    model, _ = load_model(tmp_path / "ckpt")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert (tmp_path / "ckpt" / "trainer_state.json").read_text() == '{"step": 1}'
    # a step directory whose state file never came (killed between the weights and the state) is not resumed from
    steps = tmp_path / "run" / "checkpoints"
    save_model(micro_model, tokenizer, steps / "step_0000004")
    (steps / "step_0000002").mkdir()
    (steps / "step_0000002" / "trainer_state.json").write_text('{"step": 2}')
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
