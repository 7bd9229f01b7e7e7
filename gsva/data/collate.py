"""Encoded samples and their collation into a padded :class:`Batch`.

Shape legend: B images/rows, L tokens (padded), s CLIP input side, S SAM input side, n_b [SEG] masks of row b,
H_b x W_b the original size of image b.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..config import GSVAConfig
from ..constants import IGNORE_INDEX
from ..conversation import Piece, PromptTooLongError, tokenize_pieces
from ..tokens import ControlTokenIds
from .transforms import clip_preprocess, sam_preprocess

__all__ = ["EncodedSample", "Batch", "encode_sample", "encode_longest_prefix", "collate"]


@dataclass
class EncodedSample:
    """One conversation on one image, ready to batch.

    ``input_ids``/``labels`` (L,) int64; ``clip_pixels`` (3, s, s); ``sam_pixels`` (3, S, S) float32;
    ``gt_masks`` (n, H, W) float32 {0, 1} for the [SEG] slots in order (None at inference); ``meta`` free-form.
    Optional point prompts for the auxiliary SAM objective: ``point_coords`` (m, 2) float32 (x, y) pixels of the SAM
    input frame, ``point_masks`` (m, H, W) float32 {0, 1} the instance each point lies in.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]
    gt_masks: torch.Tensor | None = None
    point_coords: torch.Tensor | None = None
    point_masks: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Batch:
    """A padded batch (right padding). ``attention_mask`` (B, L) int64 is 1 on real tokens.

    ``labels`` (B, L) int64 with IGNORE_INDEX (-100), or None; ``gt_masks`` list of (n_b, H_b, W_b) or None;
    ``point_coords``/``point_masks`` lists of (m_b, 2) / (m_b, H_b, W_b), or None (see :class:`EncodedSample`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    resized_hw: list[tuple[int, int]]
    original_hw: list[tuple[int, int]]
    gt_masks: list[torch.Tensor] | None = None
    point_coords: list[torch.Tensor] | None = None
    point_masks: list[torch.Tensor] | None = None
    meta: list[dict] = field(default_factory=list)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Move tensors to ``device``; floating pixel tensors are cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                v = [t.to(device) for t in v]
            out[f.name] = v
        return Batch(**out)


def encode_sample(image: np.ndarray, pieces: list[Piece], masks: np.ndarray | None, tokenizer,
                  token_ids: ControlTokenIds, config: GSVAConfig, meta: dict | None = None) -> EncodedSample:
    """Tokenise ``pieces`` and preprocess ``image`` (H, W, 3) uint8; ``masks`` (n, H, W) {0, 1} for the [SEG] slots.

    Raises ValueError if the number of masks differs from the number of [SEG] slots, and
    :class:`gsva.conversation.PromptTooLongError` if the conversation exceeds ``config.max_length``.
    """
    ids, labels = tokenize_pieces(pieces, tokenizer, token_ids, config.num_image_tokens, config.max_length)
    n_seg = ids.count(token_ids.seg)
    if masks is not None and len(masks) != n_seg:
        raise ValueError(f"{len(masks)} masks for {n_seg} [SEG] slots")
    sam_pixels, resized = sam_preprocess(image, config.sam.img_size)
    return EncodedSample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        clip_pixels=clip_preprocess(image, config.vision.image_size, config.vision.preprocess),
        sam_pixels=sam_pixels,
        resized_hw=resized,
        original_hw=(int(image.shape[0]), int(image.shape[1])),
        gt_masks=None if masks is None else torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)),
        meta=meta or {},
    )


def encode_longest_prefix(build: Callable[[int], EncodedSample], n: int) -> EncodedSample:
    """``build(k)`` for the largest ``k <= n`` whose conversation fits the model's ``max_length``.

    ``build(k)`` encodes a conversation with the first ``k`` items (targets, VQA rounds): when too long, items are
    dropped from the end rather than cutting the token sequence through a ``[SEG]`` (official defect: LeapLabTHU/GSVA at
    618dc79, ``data/dataset.py``, ``collate_fn``). Raises :class:`gsva.conversation.PromptTooLongError` when even one
    item does not fit.
    """
    for k in range(n, 0, -1):
        try:
            return build(k)
        except PromptTooLongError:
            if k == 1:
                raise
    raise ValueError("encode_longest_prefix needs n >= 1")


def collate(samples: list[EncodedSample], pad_id: int) -> Batch:
    """Right-pad ``input_ids`` with ``pad_id`` and labels with IGNORE_INDEX; stack the pixel tensors."""
    if not samples:
        raise ValueError("cannot collate an empty list")
    length = max(s.input_ids.numel() for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(samples), length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = s.input_ids.numel()
        ids[i, :n], labels[i, :n], attn[i, :n] = s.input_ids, s.labels, 1
    has_masks = all(s.gt_masks is not None for s in samples)
    has_points = any(s.point_coords is not None for s in samples)
    if has_points:  # samples without point prompts (e.g. VQA in a mixed batch) get none, not the batch's
        point_coords = [s.point_coords if s.point_coords is not None else torch.zeros((0, 2)) for s in samples]
        point_masks = [s.point_masks if s.point_masks is not None
                       else torch.zeros((0, *s.original_hw)) for s in samples]
    return Batch(
        input_ids=ids, attention_mask=attn, labels=labels,
        clip_pixels=torch.stack([s.clip_pixels for s in samples]),
        sam_pixels=torch.stack([s.sam_pixels for s in samples]),
        resized_hw=[s.resized_hw for s in samples], original_hw=[s.original_hw for s in samples],
        gt_masks=[s.gt_masks for s in samples] if has_masks else None,
        point_coords=point_coords if has_points else None,
        point_masks=point_masks if has_points else None,
        meta=[s.meta for s in samples],
    )
