"""GSVA: a LLaVA language model whose ``[SEG]`` hidden states prompt SAM's mask decoder.

Shape legend: B images (one per conversation row), L tokens (image tokens expanded), T image tokens per image,
D LLM hidden size, V vocabulary, C SAM prompt dim, h x w SAM embedding grid, S slots ([SEG] and [REJ]) in the
batch, N [SEG] slots, H x W an image's original size.

The forward pass orchestrates named steps, each usable alone by the predictor:
``image_tokens`` -> ``embed_inputs`` -> ``language_forward`` -> ``locate_slots`` -> (``object_slots``) ->
``sam_image_embeddings`` -> ``slot_masks`` -> ``postprocess`` -> :func:`gsva.losses.gsva_loss`.
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
from .object_pointer import ObjectPointer, choose_objects, object_states, pointer_loss, pointer_targets
from .object_projector import ObjectLayout
from .projector import SegProjector
from .sam import build_sam, decode_masks, decode_point_masks
from .seg_tokens import Slots, locate_slots

__all__ = ["GSVAModel", "GSVAOutput", "ObjectSlots"]

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


@dataclass
class ObjectSlots:
    """The object slots the object pointer chooses from (``seg_prompt="embedding_and_object_box"``).

    ``states`` (B, S, D) language-model states of the slots (:func:`gsva.modeling.object_pointer.object_states`);
    ``boxes`` (B, S, 4) float32 (x0, y0, x1, y1) pixels of each image's SAM input frame; ``present`` (B, S) bool;
    ``fractions`` (B, S, 4) float32 the same boxes as fractions of the image (the pointer's slot relations read them).
    """

    states: torch.Tensor
    boxes: torch.Tensor
    present: torch.Tensor
    fractions: torch.Tensor

    def select(self, index: torch.Tensor) -> "ObjectSlots":
        """The rows ``index`` (N,) int64, e.g. the image of every [SEG] slot."""
        return ObjectSlots(self.states[index], self.boxes[index], self.present[index], self.fractions[index])


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
        self.object_pointer = ObjectPointer(config.text.hidden_size, relation_layers=config.pointer_relation_layers
                                            ) if self.uses_object_pointer else None
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

    @property
    def uses_object_pointer(self) -> bool:
        return self.config.seg_prompt == "embedding_and_object_box"

    def image_features(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """CLIP pixels (B, 3, s, s) -> projected image features (B, T, D)."""
        return self.image_tokens(clip_pixels)[0]

    def image_tokens(self, clip_pixels: torch.Tensor) -> tuple[torch.Tensor, ObjectLayout | None]:
        """CLIP pixels (B, 3, s, s) -> (image features (B, T, D), where its objects are: an
        :class:`gsva.modeling.object_projector.ObjectLayout` for ``projector_type="object_words"``, else None)."""
        grad = torch.is_grad_enabled() and (self.config.trainable.vision_tower or self.config.trainable.mm_projector)
        if self.config.vision.projector_type == "object_words":  # its projector also reads the pixels
            with torch.set_grad_enabled(grad):
                out = self.mllm.model.vision_tower(pixel_values=clip_pixels.to(self.dtype), output_hidden_states=True)
                patches = out.hidden_states[self.config.vision.feature_layer][:, 1:]  # CLS dropped ("default")
                return self.mllm.model.multi_modal_projector.encode(patches, clip_pixels.to(self.dtype))
        return self._projected_features(clip_pixels, grad), None

    def _projected_features(self, clip_pixels: torch.Tensor, grad: bool) -> torch.Tensor:
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
                         past_key_values=None, use_cache: bool = False, position_ids: torch.Tensor | None = None):
        """Run the LLaMA body on ``inputs_embeds`` (B, L, D). ``attention_mask`` (B, C + L) int, 1 for columns to
        attend (C cached ones first); ``position_ids`` (B, L) int64 RoPE positions (None: the cache length onward).
        Returns (last hidden states (B, L, D) after the final norm, cache or None)."""
        out = self.mllm.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                             past_key_values=past_key_values, use_cache=use_cache,
                                             position_ids=position_ids)
        return out.last_hidden_state, out.past_key_values

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLaMA layers' activations in the backward pass instead of storing them (transformers'
        ``gradient_checkpointing_enable``, non-reentrant): less memory, about a third more compute."""
        self.mllm.model.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})

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

    def object_slots(self, hidden: torch.Tensor, input_ids: torch.Tensor, layout: ObjectLayout,
                     resized_hw: list[tuple[int, int]]) -> ObjectSlots:
        """The object slots of every row: hidden (B, L, D), input_ids (B, L), ``layout`` of the rows' images (B
        rows), ``resized_hw`` per row the SAM input frame's (h, w) pixels before padding."""
        states = object_states(hidden, input_ids == self.token_ids.image,
                               self.mllm.model.multi_modal_projector.tokens_per_object)
        scale = torch.tensor([[w, h, w, h] for h, w in resized_hw], dtype=torch.float32, device=hidden.device)
        fractions = layout.boxes.float()
        return ObjectSlots(states, fractions * scale[:, None, :], layout.present, fractions)

    def slot_masks(self, seg_hidden: torch.Tensor, image_index: torch.Tensor, image_embeddings: torch.Tensor,
                   objects: ObjectSlots | None = None, targets: torch.Tensor | None = None,
                   object_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Low-res mask logits of [SEG] slots from the hidden states that predict them.

        Args:
            seg_hidden: (N, D) hidden states; image_index: (N,) int64 row of ``image_embeddings`` (B, C, h, w).
            objects: the object slots of every image (B rows), required with the object pointer, else ignored.
            targets: None, or (N, S) pointer targets (:func:`gsva.modeling.object_pointer.pointer_targets`): rows
                that name a slot use those slots (teacher forcing in training), the others the pointer's choice.
            object_index: (N,) int64 row of ``objects`` of each slot (None: ``image_index``), for slots whose
                object slots come from a row of their own (batched answers about one image decode together).

        Returns:
            (low-res logits (N, 1, 4h, 4w), pointer logits (N, S) fp32 or None without the pointer). With the
            pointer a [SEG]'s logits are the pixel-wise max over the masks of its chosen slots, each prompted by the
            projected [SEG] embedding plus the slot's box; an image without objects decodes without a box prompt.
        """
        prompts = self.seg_projector(seg_hidden)  # (N, C)
        if not self.uses_object_pointer:
            return decode_masks(self.sam, image_embeddings, prompts, image_index), None
        if objects is None:
            raise ValueError(f"config {self.config.name!r} prompts SAM with object boxes: pass the object slots")
        rows = objects.select(image_index if object_index is None else object_index)
        logits = self.object_pointer(seg_hidden, rows.states, rows.present, rows.fractions)  # (N, S)
        chosen = choose_objects(logits.detach(), rows.present)
        if targets is not None:
            chosen = [t.nonzero(as_tuple=True)[0].tolist() if bool(t.any()) else c for t, c in zip(targets, chosen)]
        pair_slot = [i for i, c in enumerate(chosen) for _ in (c or [None])]
        pair_box = [rows.boxes[i, j] if j is not None else None for i, c in enumerate(chosen) for j in (c or [None])]
        out = []
        with_box = [k for k, b in enumerate(pair_box) if b is not None]
        without = [k for k, b in enumerate(pair_box) if b is None]
        low = image_embeddings.new_zeros((len(pair_slot), 1, 4 * image_embeddings.shape[-2],
                                          4 * image_embeddings.shape[-1]))
        slot_t = torch.tensor(pair_slot, dtype=torch.long, device=seg_hidden.device)
        for keep, boxed in ((with_box, True), (without, False)):
            if not keep:
                continue
            k = torch.tensor(keep, dtype=torch.long, device=seg_hidden.device)
            boxes = torch.stack([pair_box[i] for i in keep]) if boxed else None
            low = low.index_put((k,), decode_masks(self.sam, image_embeddings, prompts[slot_t[k]],
                                                   image_index[slot_t[k]], boxes=boxes))
        for i in range(len(chosen)):
            out.append(low[slot_t == i].amax(0))
        return (torch.stack(out) if out else low), logits

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
        runs, so a VQA batch on one GPU beside a segmentation batch on another must not change the graph. (With the
        object pointer, ``gsva-smol``, the decoder runs once per image and prompt kind, with and without a box; that
        model is not meant for ZeRO-3.)
        """
        feats, layout = self.image_tokens(batch.clip_pixels)
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
        objects = targets = None
        if self.uses_object_pointer:
            objects = self.object_slots(hidden, batch.input_ids, layout, batch.resized_hw)
            if batch.gt_masks is not None:
                named = [pointer_targets(layout.boxes[b].expand(len(m), -1, -1),
                                         layout.present[b].expand(len(m), -1), m)
                         for b, m in enumerate(batch.gt_masks)]  # per image (n_b, S), its [SEG] slots in order
                targets = torch.cat(named + [torch.zeros((len(dummy_rows), layout.present.shape[1]),
                                                         device=hidden.device)])
        low_res_all, pointer_logits = self.slot_masks(hidden[rows, positions], rows, image_embeddings, objects,
                                                      targets)
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
            if pointer_logits is not None:
                loss.pointer = self.config.loss.pointer_weight * pointer_loss(
                    pointer_logits[:n_real], targets[:n_real], objects.present[rows[:n_real]])
                loss.total = loss.total + loss.pointer + 0.0 * pointer_logits[n_real:].sum()
            if self.config.loss.point_prompt_weight > 0:
                loss.point_mask = self.point_prompt_loss(image_embeddings, batch)
                loss.total = loss.total + loss.point_mask
        return GSVAOutput(lm_logits=logits, slots=slots, mask_logits=mask_logits, loss=loss)
