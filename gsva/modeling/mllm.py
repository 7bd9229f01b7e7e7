"""The multimodal LLM: transformers' ``LlavaForConditionalGeneration`` built from a :class:`GSVAConfig`.

Module paths (transformers 5): ``model.vision_tower`` (CLIP), ``model.multi_modal_projector``,
``model.language_model`` (LLaMA without head; its ``norm`` is applied to the last hidden state), ``lm_head``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ..config import GSVAConfig
from .attention import use_gsva_attention
from .object_projector import ObjectWordProjector
from .word_projector import WordProjector

__all__ = ["build_llava", "llava_config", "NormedMlpProjector"]


class NormedMlpProjector(nn.Module):
    """Centre over tokens -> LayerNorm -> Linear -> GELU -> Linear: (B, T, Dv) features -> (B, T, D) embeddings.

    For vision towers trained from scratch (``gsva-tiny``). LLaVA feeds the language model a pre-LN ViT's
    unnormalised residual stream; a pretrained CLIP's layer -2 is well scaled, but a tower trained from scratch with
    the GSVA losses grows one vector shared by every token of every image (measured on gsva-tiny: 14 % of the
    feature energy at initialisation, 89 % after 600 steps, 99.9 % after 4500), after which the image tokens are
    almost identical for every image and the language model answers without looking (the same [SEG]/[REJ]
    probabilities for any image). Subtracting each image's mean token removes that shared vector exactly (the
    image-dependent differences between tokens stay); the LayerNorm then fixes each token's scale.
    """

    def __init__(self, vision_hidden: int, text_hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(vision_hidden)
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features - features.mean(dim=-2, keepdim=True)
        return self.linear_2(self.act(self.linear_1(self.norm(centred))))


def llava_config(cfg: GSVAConfig, vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaConfig:
    """The transformers ``LlavaConfig`` matching ``cfg``; ``vocab_size`` includes the added control tokens."""
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision.hidden_size, intermediate_size=cfg.vision.intermediate_size,
        num_hidden_layers=cfg.vision.num_hidden_layers, num_attention_heads=cfg.vision.num_attention_heads,
        image_size=cfg.vision.image_size, patch_size=cfg.vision.patch_size, hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=cfg.text.hidden_size, intermediate_size=cfg.text.intermediate_size,
        num_hidden_layers=cfg.text.num_hidden_layers, num_attention_heads=cfg.text.num_attention_heads,
        num_key_value_heads=cfg.text.num_key_value_heads, vocab_size=vocab_size,
        max_position_embeddings=cfg.text.max_position_embeddings, rms_norm_eps=cfg.text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.text.rope_theta},
        pad_token_id=pad_token_id, tie_word_embeddings=cfg.text.tie_word_embeddings,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        image_seq_length=cfg.num_image_tokens, vision_feature_layer=cfg.vision.feature_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=cfg.text.tie_word_embeddings,
    )


def build_llava(cfg: GSVAConfig, vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA. With ``projector_type == "linear"`` (LLaVA-v1) the projector is one
    ``nn.Linear(vision_hidden, text_hidden)``; ``"mlp2x_gelu"`` keeps transformers' Linear-GELU-Linear;
    ``"ln_mlp2x_gelu"`` is :class:`NormedMlpProjector` (ours, for towers trained from scratch); ``"word"`` is
    :class:`gsva.modeling.word_projector.WordProjector`; ``"object_words"`` is
    :class:`gsva.modeling.object_projector.ObjectWordProjector`. With ``text.tie_word_embeddings`` the ``lm_head``
    weight is the input embedding matrix (checked). Attention: :mod:`gsva.modeling.attention`."""
    model = LlavaForConditionalGeneration(llava_config(cfg, vocab_size, image_token_id, pad_token_id))
    if cfg.vision.projector_type == "linear":
        model.model.multi_modal_projector = nn.Linear(cfg.vision.hidden_size, cfg.text.hidden_size)
    elif cfg.vision.projector_type == "ln_mlp2x_gelu":
        model.model.multi_modal_projector = NormedMlpProjector(cfg.vision.hidden_size, cfg.text.hidden_size)
    elif cfg.vision.projector_type == "word":
        model.model.multi_modal_projector = WordProjector(cfg.vision.hidden_size, cfg.text.hidden_size,
                                                          cfg.vision.num_patches,
                                                          [len(g) for g in cfg.vision.word_groups])
    elif cfg.vision.projector_type == "object_words":
        v = cfg.vision
        model.model.multi_modal_projector = ObjectWordProjector(v.hidden_size, cfg.text.hidden_size, v.num_patches,
                                                                [len(g) for g in v.word_groups], v.max_objects,
                                                                v.object_group, v.position_scale)
    if cfg.text.tie_word_embeddings and model.lm_head.weight is not model.get_input_embeddings().weight:
        raise RuntimeError("transformers did not tie lm_head to the input embeddings")
    use_gsva_attention(model)  # SDPA; on CPU GQA without copying key/value heads (gsva.modeling.attention)
    return model
