"""gsva export: self-contained checkpoints, sharded safetensors, LoRA merged into the base weights."""

import json

import numpy as np
import pytest
import torch

from gsva.checkpoint import INDEX_NAME, CheckpointError, load_model, save_model
from gsva.cli import main as gsva_main
from gsva.conversation import Turn, answer_pieces, render_conversation
from gsva.convert.export import export_model, parse_size
from gsva.data.collate import collate, encode_sample
from gsva.modeling.gsva_model import GSVAModel
from gsva.tokens import add_control_tokens

from .conftest import micro_config


def _forward(model, tokenizer):
    """lm logits (1, L, V) and [SEG] mask logits of a fixed two-slot conversation."""
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    pieces = render_conversation([Turn("Can you segment a, b in this image?",
                                       answer_pieces(["a", "b"], [True, False], style=2))])
    sample = encode_sample(image, pieces, None, tokenizer, model.token_ids, model.config)
    with torch.no_grad():
        out = model.eval()(collate([sample], tokenizer.pad_token_id))
    return out.lm_logits, out.mask_logits[0]


@pytest.fixture()
def lora_checkpoint(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = GSVAModel(micro_config(lora_rank=4, from_scratch=False), add_control_tokens(tokenizer), len(tokenizer))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: make the adapters matter
                p.normal_(0, 0.5)
    save_model(model, tokenizer, tmp_path / "lora")
    return tmp_path / "lora"


def test_merged_export_gives_the_same_outputs(lora_checkpoint, tmp_path):
    source, tokenizer = load_model(lora_checkpoint)
    summary = export_model(lora_checkpoint, tmp_path / "merged", merge=True)
    assert summary["merged_lora_layers"] == 2 * micro_config().text.num_hidden_layers  # q_proj, v_proj per layer
    merged, tok = load_model(tmp_path / "merged")
    assert merged.config.lora.rank == 0 and not any("lora" in k for k in merged.state_dict())
    logits_a, masks_a = _forward(source, tokenizer)
    logits_b, masks_b = _forward(merged, tok)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masks_b, masks_a, atol=1e-4, rtol=1e-4)
    # the adapters did change the function: dropping them (merge skipped, LoRA removed) gives other logits
    plain, _ = load_model(lora_checkpoint)
    from gsva.trainable import merge_lora

    for module in plain.modules():
        if hasattr(module, "lora_B"):
            for lin in module.lora_B.values():
                torch.nn.init.zeros_(lin.weight)
    merge_lora(plain)
    assert not torch.allclose(_forward(plain, tokenizer)[0], logits_a, atol=1e-3)


def test_sharded_export_loads_and_checks_its_index(lora_checkpoint, tmp_path):
    export_model(lora_checkpoint, tmp_path / "sharded", max_shard_bytes=parse_size("200KB"))
    files = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(files) > 2 and (tmp_path / "sharded" / INDEX_NAME).is_file()
    source, tokenizer = load_model(lora_checkpoint)
    loaded, _ = load_model(tmp_path / "sharded")
    torch.testing.assert_close(_forward(loaded, tokenizer)[0], _forward(source, tokenizer)[0], rtol=0, atol=0)
    index = json.loads((tmp_path / "sharded" / INDEX_NAME).read_text())
    key, shard = next(iter(index["weight_map"].items()))
    index["weight_map"][key] = files[-1] if shard != files[-1] else files[0]
    (tmp_path / "sharded" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="disagrees with model.safetensors.index.json"):
        load_model(tmp_path / "sharded")
    (tmp_path / "sharded" / files[1]).unlink()
    index["weight_map"][key] = shard
    (tmp_path / "sharded" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{files[1]} is missing"):
        load_model(tmp_path / "sharded")


def test_export_errors(lora_checkpoint, micro_model, tokenizer, tmp_path, capsys):
    save_model(micro_model, tokenizer, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no LoRA to merge"):
        export_model(tmp_path / "plain", tmp_path / "x", merge=True)
    with pytest.raises(CheckpointError, match="overwrite its source"):
        export_model(lora_checkpoint, lora_checkpoint)
    assert gsva_main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "error: " in capsys.readouterr().err
    assert gsva_main(["export", "--model", str(lora_checkpoint), "--out", str(tmp_path / "z"), "--merge-lora",
                      "--dtype", "bf16"]) == 0
    model, _ = load_model(tmp_path / "z", dtype=torch.bfloat16)
    assert model.config.lora.rank == 0


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1024") == 1024
    for bad in ("five", "5XB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_export_replaces_weights_from_a_stage_file(lora_checkpoint, tmp_path, capsys):
    """``--replace-weights``: a stage's output (keys of the model, same shapes) overwrites exactly those tensors;
    unknown keys, wrong shapes, empty or unreadable files are one error line and nothing is written."""
    from safetensors.torch import save_file

    source, _ = load_model(lora_checkpoint)
    own = source.state_dict()
    key = next(k for k in own if k.endswith("mask_decoder.iou_prediction_head.layers.0.weight"))
    new = torch.full_like(own[key], 0.25)
    save_file({key: new}, str(tmp_path / "part.safetensors"))
    assert gsva_main(["export", "--model", str(lora_checkpoint), "--out", str(tmp_path / "out"),
                      "--replace-weights", str(tmp_path / "part.safetensors")]) == 0
    assert "1 tensors replaced" in capsys.readouterr().out
    out = load_model(tmp_path / "out")[0].state_dict()
    assert torch.equal(out[key], new)
    assert all(torch.equal(out[k], v) for k, v in own.items() if k != key)
    save_file({key: new[:1]}, str(tmp_path / "shape.safetensors"))
    save_file({"not.a.key": new}, str(tmp_path / "unknown.safetensors"))
    save_file({}, str(tmp_path / "empty.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    for name, message in [("shape", "has shape"), ("unknown", "does not have"), ("empty", "no tensors"),
                          ("bad", "cannot read")]:
        with pytest.raises(CheckpointError, match=message):
            export_model(lora_checkpoint, tmp_path / name, replace=[tmp_path / f"{name}.safetensors"])
        assert not (tmp_path / name).exists()
        assert gsva_main(["export", "--model", str(lora_checkpoint), "--out", str(tmp_path / name),
                          "--replace-weights", str(tmp_path / f"{name}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
