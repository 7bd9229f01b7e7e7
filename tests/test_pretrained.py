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


def _custom_sam_config():
    from gsva.config import SamConfig

    return SamConfig(img_size=64, patch_size=16, encoder_embed_dim=32, encoder_depth=3, encoder_num_heads=2,
                     encoder_global_attn_indexes=[1], encoder_window_size=2, prompt_embed_dim=32, decoder_depth=2,
                     decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4)


def test_sam_hyperparameters_are_read_from_the_shapes(micro_model, tokenizer, tmp_path):
    from gsva.convert.sam import load_sam
    from gsva.modeling.sam import build_sam

    custom = _custom_sam_config()  # 3 blocks, global attention in block 1 only: not the micro config's SAM
    assert custom != micro_config().sam
    sam = build_sam(custom)
    torch.save(sam.state_dict(), tmp_path / "sam_custom.pth")
    cfg, state = load_sam(tmp_path / "sam_custom.pth", base=dataclasses.replace(custom, decoder_num_heads=2))
    assert cfg == custom and set(state) == set(sam.state_dict())
    micro_model.mllm.save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    model, _ = build_from_components(micro_config(), tmp_path / "llava", tmp_path / "sam_custom.pth")
    assert model.config.sam == custom
    for k, v in sam.state_dict().items():
        torch.testing.assert_close(model.sam.state_dict()[k], v)


def test_sam_files_that_contradict_their_variant_or_are_not_sam(micro_model, tmp_path):
    from gsva.convert.sam import load_sam

    torch.save(micro_model.sam.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")  # an official name, wrong shapes
    with pytest.raises(CheckpointError, match=r"contradict SAM vit_b: encoder_embed_dim 32 \(expected 768\)"):
        load_sam(tmp_path / "sam_vit_b_01ec64.pth")
    torch.save(micro_model.sam.state_dict(), tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="contradict SAM vit_h"):
        load_sam(tmp_path / "sam.pth", variant="vit_h")
    with pytest.raises(CheckpointError, match="unknown SAM variant"):
        load_sam(tmp_path / "sam.pth", variant="vit_x")
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 8)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a SAM state dict"):
        load_sam(tmp_path / "partial.pth")
    import datetime

    torch.save({"x": datetime.date(2020, 1, 1)}, tmp_path / "object.pth")  # a global weights_only refuses
    with pytest.raises(CheckpointError, match="cannot read the SAM checkpoint"):
        load_sam(tmp_path / "object.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read the SAM checkpoint"):
        load_sam(tmp_path / "corrupt.pth")
