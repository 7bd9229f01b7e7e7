"""Building from local pretrained parts: an HF-format LLaVA directory and a SAM state-dict file."""

import dataclasses

import pytest
import torch

from gsva.checkpoint import CheckpointError
from gsva.pretrained import build_from_components

from .conftest import micro_config


def test_build_from_llava_dir_and_sam_pth(micro_model, tokenizer, tmp_path):
    micro_model.mllm.save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    torch.save(micro_model.sam.state_dict(), tmp_path / "sam_vit_micro.pth")
    cfg = micro_config(lora_rank=4, from_scratch=False)
    model, tok = build_from_components(cfg, tmp_path / "llava", tmp_path / "sam_vit_micro.pth")
    assert len(tok) == len(tokenizer) and model.token_ids == micro_model.token_ids
    for k, v in micro_model.sam.state_dict().items():
        torch.testing.assert_close(model.sam.state_dict()[k], v)
    src = micro_model.mllm.model.language_model.layers[0].self_attn.q_proj.weight
    dst = model.mllm.model.language_model.layers[0].self_attn.q_proj.base_layer.weight  # LoRA-wrapped now
    torch.testing.assert_close(dst, src)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_mismatched_parts_are_clear_errors(micro_model, tokenizer, tmp_path):
    micro_model.mllm.save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    state = micro_model.sam.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="iou_token"):
        build_from_components(micro_config(), tmp_path / "llava", tmp_path / "sam.pth")
    bigger = micro_config()
    bigger.text.hidden_size = 128
    with pytest.raises(CheckpointError, match="text.hidden_size"):
        build_from_components(bigger, tmp_path / "llava", tmp_path / "sam.pth")
    normed = dataclasses.replace(micro_config(), vision=dataclasses.replace(micro_config().vision,
                                                                              projector_type="ln_mlp2x_gelu"))
    with pytest.raises(CheckpointError, match="projector_type"):
        build_from_components(normed, tmp_path / "llava", tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_from_components(micro_config(), tmp_path / "nope", tmp_path / "sam.pth")
