"""Micro-model tests: slot alignment, image-token checks, the trainable set, a forward/backward pass."""

import numpy as np
import pytest
import torch

from gsva.conversation import Turn, answer_pieces, question_text, render_conversation
from gsva.data.collate import collate, encode_sample
from gsva.modeling.gsva_model import GSVAModel
from gsva.modeling.seg_tokens import locate_slots
from gsva.tokens import add_control_tokens
from gsva.trainable import set_trainable

from .conftest import micro_config


def _batch(model, tokenizer, present=(True, False, True), size=(40, 52)):
    ids = add_control_tokens(tokenizer)
    phrases = [f"the {c} circle" for c in ("red", "blue", "green")][: len(present)]
    turn = Turn(question_text(phrases, template=0), answer_pieces(phrases, list(present), style=2), phrases)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    masks = np.zeros((sum(present), *size), np.uint8)
    for k in range(len(masks)):
        masks[k, 5 * k: 5 * k + 10, 3:20] = 1
    s1 = encode_sample(image, render_conversation([turn]), masks, tokenizer, ids, model.config)
    turn2 = Turn(question_text(phrases[:1], template=1), answer_pieces(phrases[:1], [True], style=0), phrases[:1])
    s2 = encode_sample(image[:30, :30], render_conversation([turn2]), masks[:1, :30, :30], tokenizer, ids,
                       model.config)
    return collate([s1, s2], ids.pad)


def test_locate_slots_and_predicting_position():
    ids = torch.tensor([[5, 6, 9, 7, 8, 0], [5, 9, 6, 6, 8, 9]])
    slots = locate_slots(ids, seg_id=9, rej_id=8)
    assert slots.batch_index.tolist() == [0, 0, 1, 1, 1]
    assert slots.token_position.tolist() == [2, 4, 1, 4, 5]
    assert slots.predict_position.tolist() == [1, 3, 0, 3, 4]
    assert slots.is_seg.tolist() == [True, False, True, False, True]
    with pytest.raises(ValueError):
        locate_slots(torch.tensor([[9, 1]]), 9, 8)


def test_seg_prompts_use_the_hidden_state_before_each_seg(micro_model, tokenizer):
    batch = _batch(micro_model, tokenizer)
    slots = locate_slots(batch.input_ids, micro_model.token_ids.seg, micro_model.token_ids.rej)
    hidden = torch.randn(*batch.input_ids.shape, micro_model.config.text.hidden_size)
    prompts = micro_model.seg_prompts(hidden, slots)
    rows, cols = (batch.input_ids == micro_model.token_ids.seg).nonzero(as_tuple=True)
    manual = micro_model.seg_projector(hidden[rows, cols - 1])
    assert prompts.shape == (3, micro_model.config.sam.prompt_embed_dim)
    torch.testing.assert_close(prompts, manual)


def test_image_token_count_is_checked(micro_model, tokenizer):
    batch = _batch(micro_model, tokenizer)
    feats = micro_model.image_features(batch.clip_pixels)
    assert feats.shape == (2, micro_model.config.num_image_tokens, micro_model.config.text.hidden_size)
    ids = batch.input_ids.clone()
    first_image = (ids[0] == micro_model.token_ids.image).nonzero()[0, 0]
    ids[0, first_image] = micro_model.token_ids.pad  # one image token short in row 0
    with pytest.raises(ValueError, match="image tokens"):
        micro_model.embed_inputs(ids, feats)
    with pytest.raises(ValueError, match="image tokens"):
        micro_model.embed_inputs(batch.input_ids, feats[:1])


def test_forward_backward_shapes_and_rej_masks(micro_model, tokenizer):
    batch = _batch(micro_model, tokenizer)
    set_trainable(micro_model, micro_model.config.trainable)
    out = micro_model(batch)
    assert [m.shape for m in out.mask_logits] == [(2, 40, 52), (1, 30, 30)]  # [REJ] decodes no mask
    assert out.loss.num_masks == 3
    out.loss.total.backward()
    assert micro_model.seg_projector.layers[0].weight.grad.abs().sum() > 0
    assert micro_model.sam.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0


def test_trainable_set_of_paper_configs(tokenizer):
    """LoRA (q/v of the LLM only), lm_head, embed_tokens, [SEG] projector, mask decoder; nothing else."""
    model = GSVAModel(micro_config(lora_rank=4, from_scratch=False), add_control_tokens(tokenizer), len(tokenizer))
    names = set_trainable(model, model.config.trainable)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(n.startswith("mllm.model.language_model.layers.") for n in lora)
    assert all(("q_proj" in n or "v_proj" in n) for n in lora)
    assert len(lora) == 2 * 2 * model.config.text.num_hidden_layers  # A and B of q and v per layer
    others = {n.split(".weight")[0].split(".bias")[0] for n in names if "lora_" not in n}
    allowed = ("mllm.lm_head", "mllm.model.language_model.embed_tokens", "seg_projector.", "sam.mask_decoder.")
    assert all(n.startswith(allowed) for n in others), sorted(others)
    assert any(n.startswith("sam.mask_decoder.") for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    for prefix in ("mllm.model.vision_tower.", "mllm.model.multi_modal_projector.", "sam.image_encoder.",
                   "sam.prompt_encoder.", "mllm.model.language_model.layers.0.self_attn.q_proj.base_layer"):
        assert any(n.startswith(prefix) for n in frozen), prefix
    assert not any("vision_tower" in n and "lora" in n for n, _ in model.named_parameters())


def test_bf16_mask_decoding_runs(micro_model, tokenizer):
    """SAM's fp32 positional-encoding buffer is cast to the embedding dtype (DeepSpeed bf16 trap)."""
    model = micro_model.to(torch.bfloat16)
    batch = _batch(model, tokenizer)
    with torch.no_grad():
        out = model(batch)
    assert out.mask_logits[0].dtype == torch.float32 and torch.isfinite(out.mask_logits[0]).all()


def test_point_prompt_objective_trains_sam_and_is_off_by_default(micro_model, tokenizer):
    import dataclasses

    batch = _batch(micro_model, tokenizer)
    set_trainable(micro_model, micro_model.config.trainable)
    assert micro_model(batch).loss.point_mask is None  # official recipe: no auxiliary term
    h, w = batch.original_hw[0]
    inst = torch.zeros(1, h, w)
    inst[0, 10:20, 10:30] = 1
    batch.point_coords = [torch.tensor([[20.0, 15.0]]) * batch.resized_hw[0][0] / h, torch.zeros(0, 2)]
    batch.point_masks = [inst, torch.zeros(0, *batch.original_hw[1])]
    micro_model.config = dataclasses.replace(
        micro_model.config, loss=dataclasses.replace(micro_model.config.loss, point_prompt_weight=1.0))
    out = micro_model(batch)
    assert out.loss.point_mask is not None and out.loss.point_mask.item() > 0
    without = out.loss.ce + out.loss.mask_bce + out.loss.mask_dice
    assert out.loss.total.item() == pytest.approx((without + out.loss.point_mask).item(), rel=1e-6)
    micro_model.zero_grad()
    out.loss.point_mask.backward()
    assert micro_model.sam.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert micro_model.sam.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert micro_model.seg_projector.layers[0].weight.grad is None  # points do not touch the [SEG] path


def test_normed_projector_removes_a_shared_feature_vector(tokenizer):
    """gsva-tiny's projector centres each image's tokens and layer-norms them: a huge vector shared by every token
    (what a from-scratch tower grows) must not change the image tokens, and different images must stay different."""
    import dataclasses

    from gsva.config import ConfigError
    from gsva.modeling.mllm import NormedMlpProjector

    cfg = micro_config()
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, projector_type="ln_mlp2x_gelu"))
    model = GSVAModel(cfg, add_control_tokens(tokenizer), len(tokenizer))
    proj = model.mllm.model.multi_modal_projector
    assert isinstance(proj, NormedMlpProjector)
    assert "mllm.model.multi_modal_projector.norm.weight" in {n for n, _ in model.named_parameters()}
    signal = torch.randn(2, 4, cfg.vision.hidden_size)  # (B, T, Dv)
    shared = 500.0 * torch.randn(1, 1, cfg.vision.hidden_size)
    with torch.no_grad():
        out, out_shifted = proj(signal), proj(signal + shared)
        assert out.shape == (2, 4, cfg.text.hidden_size)
        assert torch.allclose(out, out_shifted, atol=1e-4)
        assert (out[0] - out[1]).abs().mean() > 0.1 * out.abs().mean()
        # transformers' plain mlp2x_gelu, for contrast: the shared vector swamps the image-dependent part
        plain = GSVAModel(micro_config(), add_control_tokens(tokenizer), len(tokenizer)).mllm.model.multi_modal_projector
        p = plain(signal + shared)
        assert (p[0] - p[1]).abs().mean() < 0.1 * p.abs().mean()
    with pytest.raises(ConfigError, match="projector_type"):
        dataclasses.replace(cfg.vision, projector_type="mlp3x").validate()


def test_cpu_gqa_attention_with_a_mask_equals_transformers_sdpa(monkeypatch):
    """gsva.modeling.attention: grouped-query attention on CPU with a padding mask takes the unrepeated path and
    gives transformers' SDPA outputs and gradients."""
    import dataclasses

    import gsva.modeling.attention as attention
    from gsva.modeling.mllm import build_llava

    from .conftest import micro_config

    cfg = micro_config()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_key_value_heads=2))
    lm = build_llava(cfg, 420, 410, 0).model.language_model
    assert lm.config._attn_implementation == attention.ATTENTION_NAME
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("enable_gqa", False))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    x = torch.randn(3, 10, 64, requires_grad=True)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    ours = lm(inputs_embeds=x, attention_mask=mask).last_hidden_state
    (grad_ours,) = torch.autograd.grad(ours[mask.bool()].sum(), x)
    assert calls and all(calls)  # every layer: enable_gqa, no repeated key/value heads
    lm.set_attn_implementation("sdpa")
    theirs = lm(inputs_embeds=x, attention_mask=mask).last_hidden_state
    (grad_theirs,) = torch.autograd.grad(theirs[mask.bool()].sum(), x)
    keep = mask.bool()
    assert torch.allclose(ours[keep], theirs[keep], atol=1e-6) and torch.allclose(grad_ours, grad_theirs, atol=1e-6)
