"""Build a GSVA model from pretrained parts on local disk: an HF-format LLaVA directory and a SAM checkpoint.

This is how the paper configurations start training (LLaVA-Vicuna + SAM ViT-H). Nothing is downloaded: both paths
must exist locally. The LLaVA directory is either in transformers' ``LlavaForConditionalGeneration`` format (e.g.
llava-1.5-7b-hf, 2-layer GELU projector) or a LLaVA base converted from an original haotian-liu LLaVA-v1 checkpoint
by ``gsva convert llava`` (:mod:`gsva.convert.llava`; one-Linear projector). The SAM file is a released ``sam_vit_*.pth`` state
dict (or a fine-tuned/custom-size one in the same layout), read with ``torch.load(weights_only=True)``; its
hyper-parameters come from its tensor shapes (:mod:`gsva.convert.sam`) and it is loaded strictly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from .checkpoint import CheckpointError, check_state_dict
from .config import GSVAConfig, LoraSettings
from .modeling.gsva_model import GSVAModel
from .tokens import add_control_tokens

__all__ = ["build_from_components"]

logger = logging.getLogger(__name__)


def build_from_components(config: GSVAConfig, llava_dir: str | Path, sam_checkpoint: str | Path,
                          dtype: torch.dtype = torch.float32, sam_variant: str | None = None
                          ) -> tuple[GSVAModel, object]:
    """Return ``(model, tokenizer)``: LLaVA and SAM weights loaded, control tokens added, embeddings resized.

    ``config.sam`` is replaced by the SAM hyper-parameters read from the checkpoint's shapes; ``sam_variant``
    ("vit_h"/"vit_l"/"vit_b", default: implied by an official file name) must agree with them.
    New embedding rows get transformers' default initialisation (as the official ``resize_token_embeddings``).
    The [SEG] projector is freshly initialised. Raises :class:`gsva.checkpoint.CheckpointError` if a path is missing
    or a checkpoint does not match ``config`` (architecture numbers, SAM keys or shapes, the named SAM variant).
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from .convert.llava import LLAVA_BASE_CONFIG, load_llava_base
    from .legacy_tokenization import LegacyTokenizerError, prepare_tokenizer
    from .convert.sam import load_sam

    llava_dir, sam_checkpoint = Path(llava_dir), Path(sam_checkpoint)
    for path in (llava_dir, sam_checkpoint):
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(llava_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - tokenizer loaders raise many types
        raise CheckpointError(f"{llava_dir}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    try:
        prepare_tokenizer(tokenizer, config.text.tokenization, llava_dir)
    except LegacyTokenizerError as exc:
        raise CheckpointError(f"{exc} (config {config.name} has text.tokenization: {config.text.tokenization})") \
            from None
    if (llava_dir / LLAVA_BASE_CONFIG).is_file():  # converted by `gsva convert llava`
        llava, vision, text, _ = load_llava_base(llava_dir, dtype)
        projector = vision.projector_type
    else:
        try:
            llava = LlavaForConditionalGeneration.from_pretrained(str(llava_dir), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{llava_dir}: cannot load an HF-format LLaVA ({exc})") from None
        vision, text, projector = llava.config.vision_config, llava.config.text_config, "mlp2x_gelu"
    _check_llava(config, vision, text, projector, llava_dir)
    sam_config, state = load_sam(sam_checkpoint, sam_variant, base=config.sam)
    config = dataclasses.replace(config, sam=sam_config)
    ids = add_control_tokens(tokenizer)
    llava.resize_token_embeddings(len(tokenizer))
    llava.config.image_token_id = ids.image
    llava.config.text_config.pad_token_id = ids.pad
    model = GSVAModel(dataclasses.replace(config, lora=LoraSettings(rank=0)), ids, len(tokenizer))
    model.config = config
    model.mllm = llava  # LoRA (if any) is injected after the pretrained weights are in place
    if config.lora.rank > 0:
        from .trainable import apply_lora

        apply_lora(model, config.lora)
    check_state_dict(model.sam, state, sam_checkpoint)
    model.sam.load_state_dict(state, strict=True)
    return model.to(dtype), tokenizer


def _check_llava(config: GSVAConfig, vision, text, projector: str, where: Path) -> None:
    """The LLaVA's architecture numbers must be those of ``config`` (vision/text: config objects with the same
    field names as ours or transformers')."""
    pairs = [("text.hidden_size", config.text.hidden_size, text.hidden_size),
             ("text.num_hidden_layers", config.text.num_hidden_layers, text.num_hidden_layers),
             ("vision.hidden_size", config.vision.hidden_size, vision.hidden_size),
             ("vision.image_size", config.vision.image_size, vision.image_size),
             ("vision.patch_size", config.vision.patch_size, vision.patch_size),
             ("vision.projector_type", config.vision.projector_type, projector)]
    wrong = [f"{name}: config {ours!r} vs checkpoint {theirs!r}" for name, ours, theirs in pairs if ours != theirs]
    if wrong and projector == "mlp2x_gelu" and config.vision.projector_type == "linear":
        wrong.append("(an original LLaVA-v1 checkpoint must be converted first: gsva convert llava)")
    if wrong:
        raise CheckpointError(f"{where} does not match config {config.name}: " + "; ".join(wrong))
