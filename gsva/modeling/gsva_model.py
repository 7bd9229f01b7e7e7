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
from ..losses import LossBreakdown, causal_lm_loss_from_hidden, gsva_loss, point_prompt_loss
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

    ``lm_logits`` (B, L, V), or None in training mode with labels and masks (the CE then evaluates ``lm_head`` only
    at the labelled positions, :func:`gsva.losses.causal_lm_loss_from_hidden`); ``slots`` every [SEG]/[REJ] slot;
    ``mask_logits`` per image (n_b, H_b, W_b) fp32 logits of its [SEG] slots in order; ``loss`` the weighted losses
    (None when the batch has no labels/masks).
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
        if self.config.vision.projector_type == "object_words":  # its projector also reads the pixels
            with torch.set_grad_enabled(grad):
                out = self.mllm.model.vision_tower(pixel_values=clip_pixels.to(self.dtype), output_hidden_states=True)
                patches = out.hidden_states[self.config.vision.feature_layer][:, 1:]  # CLS dropped ("default")
                return self.mllm.model.multi_modal_projector(patches, clip_pixels.to(self.dtype))
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

    def point_prompt_loss(self, image_embeddings: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Auxiliary SAM objective (``LossConfig.point_prompt_weight``): masks from one positive point per instance.

        ``image_embeddings`` (B, C, h, w); uses ``batch.point_coords`` / ``batch.point_masks`` (None, or images with
        no point, allowed). Returns 0-dim fp32, 0 when the batch has no point. Like the [SEG] branch, the decoder
        runs once per image: an image without a point decodes a dummy point at (0, 0) whose output enters the loss
        multiplied by zero (see :meth:`forward`).
        """
        b = len(batch.original_hw)
        device = image_embeddings.device
        coords = [c.to(device).float() for c in batch.point_coords] if batch.point_coords is not None \
            else [torch.zeros((0, 2), device=device) for _ in range(b)]
        counts = [len(c) for c in coords]
        dummy_rows = [i for i, n in enumerate(counts) if n == 0]
        all_coords = torch.cat(coords + [torch.zeros((len(dummy_rows), 2), device=device)])
        index = torch.cat([torch.repeat_interleave(torch.arange(b, device=device), torch.tensor(counts, device=device)),
                           torch.tensor(dummy_rows, dtype=torch.long, device=device)])
        low_res_all = decode_point_masks(self.sam, image_embeddings, all_coords, index)
        n_real = sum(counts)
        anchor = 0.0 * low_res_all[n_real:].sum().float()
        if n_real == 0:
            return anchor
        logits = [self.postprocess(chunk, rhw, ohw)
                  for chunk, rhw, ohw in zip(low_res_all[:n_real].split(counts), batch.resized_hw, batch.original_hw)]
        keep = [i for i, n in enumerate(counts) if n]
        return point_prompt_loss([logits[i] for i in keep], [batch.point_masks[i] for i in keep],
                                 self.config.loss) + anchor

    # -- training forward --------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> GSVAOutput:
        """Teacher-forced pass over a collated batch; returns logits, [SEG] mask logits and (when labelled) losses.

        Every batch runs the same modules the same number of times, whatever it holds: the [SEG] projector once, the
        mask decoder once per image (an image without a [SEG] slot, e.g. a VQA sample, decodes one dummy prompt taken
        at its last position, whose output enters the loss multiplied by zero). Data-parallel ZeRO needs this: stage
        2 reduces gradients in the order they are produced and stage 3 gathers each module's parameters when it
        runs, so a VQA batch on one GPU beside a segmentation batch on another must not change the graph.
        """
        feats = self.image_features(batch.clip_pixels)
        hidden, _ = self.language_forward(self.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        labelled_only = self.training and batch.labels is not None and batch.gt_masks is not None
        logits = None if labelled_only else self.lm_logits(hidden)
        slots = locate_slots(batch.input_ids, self.token_ids.seg, self.token_ids.rej)
        image_embeddings = self.sam_image_embeddings(batch.sam_pixels)
        seg_rows = slots.batch_index[slots.is_seg]
        n_real = int(seg_rows.numel())
        per_image = torch.bincount(seg_rows, minlength=len(batch.original_hw)).tolist()
        dummy_rows = torch.tensor([b for b, n in enumerate(per_image) if n == 0], dtype=torch.long,
                                  device=seg_rows.device)
        last = batch.attention_mask.sum(1) - 1  # last real position of each row
        rows = torch.cat([seg_rows, dummy_rows])
        positions = torch.cat([slots.predict_position[slots.is_seg], last[dummy_rows]])
        prompts = self.seg_projector(hidden[rows, positions])
        low_res_all = self.decode_masks(image_embeddings, prompts, rows)
        low_res = low_res_all[:n_real]
        mask_logits = [self.postprocess(chunk, rhw, ohw)
                       for chunk, rhw, ohw in zip(low_res.split(per_image), batch.resized_hw, batch.original_hw)]
        loss = None
        if batch.labels is not None and batch.gt_masks is not None:
            slot_ids = (self.token_ids.seg, self.token_ids.rej)
            ce = causal_lm_loss_from_hidden(hidden, batch.labels, self.lm_logits, slot_ids,
                                            self.config.loss.slot_ce_weight) if labelled_only else None
            loss = gsva_loss(logits, batch.labels, mask_logits, batch.gt_masks, self.config.loss,
                             slot_ids=slot_ids, ce=ce)
            if len(dummy_rows):
                loss.total = loss.total + 0.0 * low_res_all[n_real:].sum()
            if self.config.loss.point_prompt_weight > 0:
                loss.point_mask = self.point_prompt_loss(image_embeddings, batch)
                loss.total = loss.total + loss.point_mask
        return GSVAOutput(lm_logits=logits, slots=slots, mask_logits=mask_logits, loss=loss)
