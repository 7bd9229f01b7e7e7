"""The one place that declares what GSVA trains, and LoRA injection.

Official ``init_vision_seg_for_model`` (LeapLabTHU/GSVA at 618dc79, ``model/prepare_model_tokenizer.py``): freeze
everything, add LoRA (peft) to the language model's ``q_proj``/``v_proj`` (never to CLIP, SAM, the projector or the
[SEG] projector), then train ``lm_head``, ``embed_tokens`` (full matrices), the [SEG] projector (``text_hidden_fcs``)
and SAM's mask decoder. CLIP, the multimodal projector, SAM's image encoder and prompt encoder stay frozen unless a
:class:`TrainableConfig` switch says otherwise (``gsva-tiny`` trains from scratch).
"""

from __future__ import annotations

import re

from torch import nn

from .config import LoraSettings, TrainableConfig

__all__ = ["ALWAYS_TRAINABLE", "OPTIONAL_TRAINABLE", "apply_lora", "is_trainable", "set_trainable"]

ALWAYS_TRAINABLE = (
    "mllm.lm_head.",
    "mllm.model.language_model.embed_tokens.",
    "seg_projector.",
    "object_pointer.",
    "sam.mask_decoder.",
)
"""Parameter-name prefixes that are always trained (besides LoRA weights)."""

OPTIONAL_TRAINABLE = {
    "vision_tower": ("mllm.model.vision_tower.",),
    "mm_projector": ("mllm.model.multi_modal_projector.",),
    "sam_image_encoder": ("sam.image_encoder.",),
    "llm_layers": ("mllm.model.language_model.layers.", "mllm.model.language_model.norm."),
}
"""Prefixes trained only when the :class:`TrainableConfig` switch of the same name is on."""


def apply_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Inject peft LoRA layers (in place) into the language model's target projections only."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = "|".join(re.escape(t) for t in settings.target_modules)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                        target_modules=rf".*mllm\.model\.language_model\.layers\.\d+\..*\.({targets})")
    inject_adapter_in_model(config, model)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA layer into its base ``nn.Linear`` (W <- W + (alpha / r) B A, peft's ``merge``) and put the
    plain Linear back in its place. Returns the number of merged layers (0 when the model has no LoRA)."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
            merged += 1
    return merged


def is_trainable(name: str, trainable: TrainableConfig) -> bool:
    """Whether the parameter called ``name`` (a ``GSVAModel.named_parameters()`` key) is trained."""
    if ".lora_A." in name or ".lora_B." in name:
        return True
    if name.startswith(ALWAYS_TRAINABLE):
        return True
    return any(getattr(trainable, switch) and name.startswith(prefixes)
               for switch, prefixes in OPTIONAL_TRAINABLE.items())


def set_trainable(model: nn.Module, trainable: TrainableConfig) -> list[str]:
    """Set ``requires_grad`` on every parameter of a GSVAModel; return the names of the trainable ones."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, trainable))
        if param.requires_grad:
            names.append(name)
    return names
