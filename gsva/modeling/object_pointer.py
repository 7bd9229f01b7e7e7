"""Object pointer: which of the image's objects a ``[SEG]`` names, and that object's box as a SAM prompt.

Why (measured on ``gsva-smol``, docs/gsva-smol.md): with the paper's prompting alone (the projected
``[SEG]`` hidden state as SAM's only sparse prompt) the masks landed on *an* object but mostly not the one asked about
(9 of 39 one-target questions on the asked object, 27 on another), although the language model told present from
absent targets well. The language model already matches the phrase against the object tokens it reads
(:class:`gsva.modeling.object_projector.ObjectWordProjector`); the pointer makes that match explicit:

1. each object slot's state is the mean of the language model's last hidden states over the slot's G + 1 tokens
   (:func:`object_states`);
2. a bilinear score between the ``[SEG]`` hidden state and every present slot (:class:`ObjectPointer`) is trained
   with BCE against the slots the ground-truth mask covers (:func:`pointer_targets`);
3. every chosen slot (the best one, plus any other with probability > 0.5: GRES targets may be several objects,
   :func:`choose_objects`) prompts SAM with its patch box (SAM's own box prompt) *and* the projected ``[SEG]``
   embedding, the paper's prompt, as one more sparse token; the [SEG] mask is the pixel-wise max of its slots' mask
   logits (their union).

4. optionally (``GSVAConfig.pointer_relation_layers`` > 0, stage (d6) of ``gsva-smol``) a small transformer over the
   [SEG] query and the slots, each slot token carrying its box, adds a correction to the bilinear logits
   (:class:`SlotRelations`). Why: the bilinear score sees one slot at a time, but "the leftmost circle", "the bottom
   object" or "the star below the heart" name a slot only relative to the others. Measured on (d5): 16 of 43
   ordinal target expressions of the fresh val split had their mask on another object, cIoU 0.26 on them against
   0.71 on attribute phrases (docs/gsva-smol.md, stage (d6)).

This is a ``gsva-smol`` design (``GSVAConfig.seg_prompt = "embedding_and_object_box"``); the Vicuna configs keep the
paper's prompting unchanged.

Shape legend: B images, L tokens, D language-model width, S object slots per image (``max_objects``), N [SEG] slots,
E pointer width, R relation width, M (slot, object) pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ObjectPointer", "SlotRelations", "box_features", "object_states", "pointer_targets", "choose_objects", "pointer_loss",
           "EXTRA_OBJECT_THRESHOLD", "TARGET_COVERAGE"]

EXTRA_OBJECT_THRESHOLD = 0.5
"""Probability above which slots other than the best one also join a [SEG] mask."""

TARGET_COVERAGE = 0.5
"""A slot is a pointer target when the ground-truth mask covers at least this fraction of the best slot's coverage
(coverage: the mean ground-truth fraction of the slot's patch box, :func:`pointer_targets`)."""


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes (x0, y0, x1, y1) as fractions of the image -> (..., 8) float32 (x0, y0, x1, y1, centre x, centre
    y, width, height), the same fractions."""
    x0, y0, x1, y1 = boxes.float().unbind(-1)
    return torch.stack([x0, y0, x1, y1, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


class SlotRelations(nn.Module):
    """A correction to the pointer logits that lets slots be compared with each other.

    Tokens: the [SEG] query ``W_q' (W_q h)`` followed by one token per slot, ``W_k' (W_k s) + W_b box_features(box)``
    (the frozen bilinear projections' outputs feed it, so the correction starts from what the pointer already reads);
    ``layers`` pre-norm transformer-encoder layers (width R, ``heads`` heads, feed-forward 2R, dropout ``dropout`` in
    training) with free slots masked as keys; a final LayerNorm and a linear read-out per slot token, zero-initialised
    so that a fresh module changes no logit.

    ``forward(q (N, E), k (N, S, E), boxes (N, S, 4) fractions, present (N, S) bool) -> (N, S)`` fp32, 0 on free
    slots.
    """

    def __init__(self, width: int, layers: int, relation_width: int = 128, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.query = nn.Linear(width, relation_width)
        self.key = nn.Linear(width, relation_width)
        self.box = nn.Linear(8, relation_width)
        layer = nn.TransformerEncoderLayer(relation_width, heads, 2 * relation_width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(relation_width)
        self.read_out = nn.Linear(relation_width, 1)
        nn.init.zeros_(self.read_out.weight)
        nn.init.zeros_(self.read_out.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        dtype = self.query.weight.dtype
        slots = self.key(k.to(dtype)) + self.box(box_features(boxes).to(dtype))
        tokens = torch.cat([self.query(q.to(dtype))[:, None], slots], 1)  # (N, 1 + S, R)
        free = torch.cat([torch.zeros_like(present[:, :1]), ~present], 1)  # the query is never masked
        out = self.norm(self.encoder(tokens, src_key_padding_mask=free))
        return self.read_out(out[:, 1:]).squeeze(-1).float().masked_fill(~present, 0.0)


class ObjectPointer(nn.Module):
    """Bilinear scores between [SEG] hidden states and object-slot states, plus an optional :class:`SlotRelations`
    correction (``relation_layers`` > 0, of width ``relation_width``).

    ``forward(seg_hidden (N, D), slot_states (N, S, D), present (N, S) bool, boxes (N, S, 4) fractions or None)
    -> (N, S)`` fp32 logits (q . k / sqrt(E), q = W_q h, k = W_k s, plus the correction); free slots get -1e4
    (probability 0, finite so the losses stay finite). ``boxes`` is required with relations (ValueError).
    """

    def __init__(self, hidden_size: int, width: int = 256, relation_layers: int = 0,
                 relation_width: int = 128) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, width)
        self.key = nn.Linear(hidden_size, width)
        self.width = width
        self.relations = SlotRelations(width, relation_layers, relation_width) if relation_layers > 0 else None

    def forward(self, seg_hidden: torch.Tensor, slot_states: torch.Tensor, present: torch.Tensor,
                boxes: torch.Tensor | None = None) -> torch.Tensor:
        n, s, _ = slot_states.shape
        if seg_hidden.shape[0] != n or present.shape != (n, s):
            raise ValueError(f"seg_hidden {tuple(seg_hidden.shape)}, slot_states {tuple(slot_states.shape)} and "
                             f"present {tuple(present.shape)} disagree")
        q = self.query(seg_hidden.to(self.query.weight.dtype))  # (N, E)
        k = self.key(slot_states.to(self.key.weight.dtype))  # (N, S, E)
        logits = torch.einsum("ne,nse->ns", q, k).float() / math.sqrt(self.width)
        if self.relations is not None:
            if boxes is None or boxes.shape != (n, s, 4):
                raise ValueError(f"the pointer's slot relations need boxes (N, S, 4) = ({n}, {s}, 4), got "
                                 f"{None if boxes is None else tuple(boxes.shape)}")
            logits = logits + self.relations(q, k, boxes, present)
        return logits.masked_fill(~present, -1e4)


def object_states(hidden: torch.Tensor, is_image: torch.Tensor, tokens_per_object: int) -> torch.Tensor:
    """Mean last hidden state per object slot: hidden (B, L, D), is_image (B, L) bool with T = S x tokens_per_object
    image tokens in every row (in slot order) -> (B, S, D). Raises ValueError on an uneven image-token count."""
    b, _, d = hidden.shape
    per_row = is_image.sum(1)
    t = int(per_row[0]) if b else 0
    if bool((per_row != t).any()) or t % tokens_per_object:
        raise ValueError(f"image tokens per row {per_row.tolist()} are not the same multiple of {tokens_per_object}")
    states = hidden[is_image].view(b, t // tokens_per_object, tokens_per_object, d)
    return states.mean(2)


def pointer_targets(boxes: torch.Tensor, present: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """Which slots each ground-truth mask names.

    Args:
        boxes: (N, S, 4) slot patch boxes (x0, y0, x1, y1) as fractions of the image (the tower's input is the whole
            image resized, so fractions of the original image too). present: (N, S) bool.
        gt_masks: (N, H, W) {0, 1} masks at the original image size.

    Returns:
        (N, S) float32 in {0, 1}: 1 where the slot's coverage (the mean of the mask over the slot's box) is at least
        ``TARGET_COVERAGE`` times the best slot's and above 0; rows whose mask covers no slot are all 0.
    """
    n, s, _ = boxes.shape
    out = torch.zeros((n, s), dtype=torch.float32, device=boxes.device)
    for i in range(n):
        gt = gt_masks[i].float()
        h, w = gt.shape
        integral = F.pad(gt.cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H + 1, W + 1) summed-area table
        cov = torch.zeros(s, device=boxes.device)
        for j in range(s):
            if not present[i, j]:
                continue
            x0, y0, x1, y1 = boxes[i, j].tolist()
            c0, r0 = int(round(x0 * w)), int(round(y0 * h))
            c1, r1 = max(int(round(x1 * w)), c0 + 1), max(int(round(y1 * h)), r0 + 1)
            total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
            cov[j] = total / ((r1 - r0) * (c1 - c0))
        best = float(cov.max()) if s else 0.0
        if best > 0:
            out[i] = (cov >= TARGET_COVERAGE * best).float() * present[i].float()
    return out


def choose_objects(logits: torch.Tensor, present: torch.Tensor) -> list[list[int]]:
    """(N, S) pointer logits -> per [SEG] slot the object slots that prompt SAM: the best present slot, plus every
    other present slot with probability > ``EXTRA_OBJECT_THRESHOLD``; [] when the image has no object."""
    out = []
    for row, ok in zip(logits.float(), present):
        if not bool(ok.any()):
            out.append([])
            continue
        best = int(row.masked_fill(~ok, float("-inf")).argmax())
        extra = ((row.sigmoid() > EXTRA_OBJECT_THRESHOLD) & ok).nonzero(as_tuple=True)[0].tolist()
        out.append(sorted({best, *extra}))
    return out


def pointer_loss(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the present slots of the rows that name at least one slot. logits/targets (N, S), present
    (N, S) bool. Returns 0-dim fp32 (0, with the graph, when no row names a slot)."""
    rows = targets.sum(1) > 0
    keep = present & rows[:, None]
    if not bool(keep.any()):
        return 0.0 * logits.sum()
    return F.binary_cross_entropy_with_logits(logits[keep].float(), targets[keep].float())
