"""GSVA: a LLaVA language model whose ``[SEG]`` hidden states prompt SAM's mask decoder.

Shape legend: B images (one per conversation row), L tokens (image tokens expanded), T image tokens per image,
D LLM hidden size, V vocabulary, C SAM prompt dim, h x w SAM embedding grid, S slots ([SEG] and [REJ]) in the
batch, N [SEG] slots, H x W an image's original size.

The forward pass orchestrates named steps, each usable alone by the predictor:
``image_features`` -> ``embed_inputs`` -> ``language_forward`` -> ``locate_slots`` -> ``seg_prompts`` ->
``sam_image_embeddings`` -> ``decode_masks`` -> ``postprocess`` -> :func:`gsva.losses.gsva_loss`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..config import GSVAConfig
from ..data.collate import Batch
from ..data.transforms import sam_postprocess
from ..losses import LossBreakdown, gsva_loss, point_prompt_loss
from ..tokens import ControlTokenIds
from .mllm import build_llava
from .projector import SegProjector
from .sam import build_sam, decode_masks, decode_point_masks
from .seg_tokens import Slots, locate_slots

__all__ = ["GSVAModel", "GSVAOutput"]

logger = logging.getLogger(__name__)


@dataclass
class GSVAOutput:
    """Result of :meth:`GSVAModel.forward`.

    ``lm_logits`` (B, L, V); ``slots`` every [SEG]/[REJ] slot; ``mask_logits`` per image (n_b, H_b, W_b) fp32 logits
    of its [SEG] slots in order; ``loss`` the weighted losses (None when the batch has no labels/masks).
    """

    lm_logits: torch.Tensor
    slots: Slots
    mask_logits: list[torch.Tensor]
    loss: LossBreakdown | None


class GSVAModel(nn.Module):
    """The GSVA network. Build with random weights; load weights with :func:`gsva.checkpoint.load_model`.

    Args:
        config: architecture and training switches.
        token_ids: control-token ids of the tokenizer used with this model.
        vocab_size: ``len(tokenizer)`` including the control tokens.
    """

    def __init__(self, config: GSVAConfig, token_ids: ControlTokenIds, vocab_size: int) -> None:
        super().__init__()
        self.config = config.validate()
        self.token_ids = token_ids
        self.mllm = build_llava(config, vocab_size, token_ids.image, token_ids.pad)
        self.seg_projector = SegProjector(config.text.hidden_size, config.sam.prompt_embed_dim)
        self.sam = build_sam(config.sam)
        if config.lora.rank > 0:
            from ..trainable import apply_lora

            apply_lora(self, config.lora)

    # -- the named steps ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.seg_projector.layers[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.seg_projector.layers[0].weight.dtype

    def image_features(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """CLIP pixels (B, 3, s, s) -> projected image features (B, T, D)."""
        grad = torch.is_grad_enabled() and (self.config.trainable.vision_tower or self.config.trainable.mm_projector)
        with torch.set_grad_enabled(grad):
            out = self.mllm.model.get_image_features(
                pixel_values=clip_pixels.to(self.dtype), vision_feature_layer=self.config.vision.feature_layer,
                vision_feature_select_strategy="default", output_hidden_states=True)
        feats = out.pooler_output
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, D) with the image-token rows replaced by ``image_features`` (B, T, D).

        Raises ValueError unless every row holds exactly T image tokens (transformers' Llava count check).
        """
        embeds = self.mllm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.token_ids.image
        per_row = is_image.sum(1)
        t = image_features.shape[1]
        if image_features.shape[0] != input_ids.shape[0] or bool((per_row != t).any()):
            raise ValueError(f"image tokens per row {per_row.tolist()} do not match image features "
                             f"{tuple(image_features.shape)}")
        return embeds.masked_scatter(is_image.unsqueeze(-1), image_features.to(embeds.dtype))

    def language_forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         past_key_values=None, use_cache: bool = False):
        """Run the LLaMA body. Returns (last hidden states (B, L, D) after the final norm, cache or None)."""
        out = self.mllm.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                             past_key_values=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., V) next-token logits."""
        return self.mllm.lm_head(hidden)

    def seg_prompts(self, hidden: torch.Tensor, slots: Slots) -> torch.Tensor:
        """Projected embeddings (N, C) of the [SEG] slots, taken at their predicting positions."""
        sel = slots.is_seg
        return self.seg_projector(hidden[slots.batch_index[sel], slots.predict_position[sel]])

    def sam_image_embeddings(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """SAM-normalised pixels (B, 3, S, S) -> ``image_embeddings`` (B, C, h, w)."""
        grad = torch.is_grad_enabled() and self.config.trainable.sam_image_encoder
        with torch.set_grad_enabled(grad):
            return self.sam.image_encoder(sam_pixels.to(self.dtype))

    def decode_masks(self, image_embeddings: torch.Tensor, prompts: torch.Tensor,
                     image_index: torch.Tensor) -> torch.Tensor:
        """(N, C) prompts of images ``image_index`` (N,) -> low-res mask logits (N, 1, 4h, 4w)."""
        return decode_masks(self.sam, image_embeddings, prompts, image_index)

    def postprocess(self, low_res: torch.Tensor, resized_hw: tuple[int, int],
                    original_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits (n, 1, 4h, 4w) -> fp32 logits (n, H, W) at the original image size."""
        return sam_postprocess(low_res, self.config.sam.img_size, resized_hw, original_hw)

    def _mask_branch_anchor(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        params = [p for m in (self.seg_projector, self.sam.mask_decoder) for p in m.parameters() if p.requires_grad]
        return sum(p.sum() for p in params) + image_embeddings.sum()

    def point_prompt_loss(self, image_embeddings: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Auxiliary SAM objective (``LossConfig.point_prompt_weight``): masks from one positive point per instance.

        ``image_embeddings`` (B, C, h, w); uses ``batch.point_coords`` / ``batch.point_masks``. Returns 0-dim fp32.
        """
        counts = [len(c) for c in batch.point_coords]
        coords = torch.cat(batch.point_coords).to(image_embeddings.device)
        index = torch.repeat_interleave(torch.arange(len(counts), device=coords.device),
                                        torch.tensor(counts, device=coords.device))
        low_res = decode_point_masks(self.sam, image_embeddings, coords, index)
        logits = [self.postprocess(chunk, rhw, ohw)
                  for chunk, rhw, ohw in zip(low_res.split(counts), batch.resized_hw, batch.original_hw)]
        return point_prompt_loss(logits, batch.point_masks, self.config.loss)

    # -- training forward --------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> GSVAOutput:
        """Teacher-forced pass over a collated batch; returns logits, [SEG] mask logits and (when labelled) losses."""
        feats = self.image_features(batch.clip_pixels)
        hidden, _ = self.language_forward(self.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        logits = self.lm_logits(hidden)
        slots = locate_slots(batch.input_ids, self.token_ids.seg, self.token_ids.rej)
        prompts = self.seg_prompts(hidden, slots)
        image_embeddings = self.sam_image_embeddings(batch.sam_pixels)
        low_res = self.decode_masks(image_embeddings, prompts, slots.batch_index[slots.is_seg])
        per_image = torch.bincount(slots.batch_index[slots.is_seg], minlength=len(batch.original_hw)).tolist()
        mask_logits = [self.postprocess(chunk, rhw, ohw)
                       for chunk, rhw, ohw in zip(low_res.split(per_image), batch.resized_hw, batch.original_hw)]
        loss = None
        if batch.labels is not None and batch.gt_masks is not None:
            loss = gsva_loss(logits, batch.labels, mask_logits, batch.gt_masks, self.config.loss,
                             slot_ids=(self.token_ids.seg, self.token_ids.rej))
            if len(prompts) == 0:  # no [SEG] here: keep every mask-branch parameter in the graph (ZeRO reductions)
                loss.total = loss.total + 0.0 * self._mask_branch_anchor(image_embeddings)
            if self.config.loss.point_prompt_weight > 0 and batch.point_coords is not None:
                loss.point_mask = self.point_prompt_loss(image_embeddings, batch)
                loss.total = loss.total + loss.point_mask
        return GSVAOutput(lm_logits=logits, slots=slots, mask_logits=mask_logits, loss=loss)
