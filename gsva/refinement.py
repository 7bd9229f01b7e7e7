"""Interactive refinement of a mask: clicks, a box and scribbles prompt SAM together with the [SEG] embedding and
the previous round's mask, as in SAM's interactive protocol (Kirillov et al., "Segment Anything", 2023, section 3
and appendix A: the previous low-resolution mask logits are the dense mask prompt of the next round).

One refinement round feeds SAM's mask decoder with

- sparse prompts: the projected [SEG] embedding of the target (when it came from an answer), then SAM's own
  prompt-encoder tokens of every click so far (positive label 1, negative label 0) and of the box, if any;
- the dense prompt: the previous round's low-resolution mask logits through SAM's ``mask_downscaling`` (the
  ``no_mask_embed`` when there is no previous mask).

Coordinates given by users are pixels of the original image, (x, y) with the origin at the top-left corner; they are
mapped to SAM's input frame (the longest side resized to ``img_size``) as ``segment_anything``'s
``ResizeLongestSide.apply_coords`` does. A scribble (a polyline of (x, y) points) becomes positive clicks spaced
evenly along its length (:func:`scribble_points`).

Shape legend: C prompt width, h x w image-embedding grid, P clicks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InputError

__all__ = ["RefineState", "scribble_points", "to_sam_frame", "refine_low_res", "check_clicks", "check_box",
           "SCRIBBLE_SPACING", "SCRIBBLE_MAX_POINTS"]

SCRIBBLE_SPACING = 0.05
"""Spacing of the clicks sampled along a scribble, as a fraction of the image's longer side."""

SCRIBBLE_MAX_POINTS = 8
"""Most clicks one scribble contributes (evenly spread over its length when it is longer)."""


@dataclass(frozen=True)
class RefineState:
    """What the next refinement round of a target starts from.

    ``prompt`` (C,) the projected [SEG] embedding, or None for a mask started from clicks alone; ``low_res`` (1, 4h,
    4w) float32 mask logits of the last round (SAM's low-resolution frame); ``points`` every click so far, (x, y)
    pixels of the original image; ``labels`` 1 (positive) / 0 (negative) per click; ``box`` (x0, y0, x1, y1) pixels
    of the original image, or None.
    """

    prompt: torch.Tensor | None
    low_res: torch.Tensor | None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None


def scribble_points(stroke: Sequence[Sequence[float]], image_hw: tuple[int, int]) -> list[tuple[float, float]]:
    """Clicks along a scribble: points every :data:`SCRIBBLE_SPACING` x the image's longer side of arc length,
    starting at the stroke's first point and including its last; at most :data:`SCRIBBLE_MAX_POINTS` (then spread
    evenly over the whole length). ``stroke``: (x, y) pixels of the original image, at least one point. Raises
    InputError for an empty or malformed stroke."""
    pts = check_clicks(stroke, None, image_hw)[0]
    if not pts:
        raise InputError("a scribble needs at least one (x, y) point")
    lengths = [math.dist(a, b) for a, b in zip(pts, pts[1:])]
    total = sum(lengths)
    if total == 0:
        return [pts[0]]
    step = SCRIBBLE_SPACING * max(image_hw)
    count = min(SCRIBBLE_MAX_POINTS, int(total // step) + 1)
    count = max(count, 2)
    targets = [total * i / (count - 1) for i in range(count)]
    out, walked, seg = [], 0.0, 0
    for t in targets:
        while seg < len(lengths) - 1 and walked + lengths[seg] < t:
            walked += lengths[seg]
            seg += 1
        frac = 0.0 if lengths[seg] == 0 else min(max((t - walked) / lengths[seg], 0.0), 1.0)
        (x0, y0), (x1, y1) = pts[seg], pts[seg + 1]
        out.append((x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)))
    return out


def check_clicks(points, labels, image_hw: tuple[int, int]) -> tuple[list[tuple[float, float]], list[int]]:
    """Validate (x, y) pixel clicks inside an image of ``image_hw`` (H, W) and their 0/1 labels (None: all 1).
    Returns (points, labels) as Python lists. Raises InputError naming the first bad click."""
    h, w = image_hw
    pts = []
    for i, p in enumerate(points or ()):
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise InputError(f"click {i} must be an (x, y) pair of numbers, got {p!r}") from None
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= w and 0 <= y <= h):
            raise InputError(f"click {i} at ({x:g}, {y:g}) lies outside the {w}x{h} image")
        pts.append((x, y))
    if labels is None:
        return pts, [1] * len(pts)
    labels = list(labels)
    if len(labels) != len(pts):
        raise InputError(f"{len(pts)} clicks but {len(labels)} labels")
    if any(v not in (0, 1) for v in labels):
        raise InputError(f"click labels must be 1 (positive) or 0 (negative), got {labels}")
    return pts, [int(v) for v in labels]


def check_box(box, image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """Validate an (x0, y0, x1, y1) pixel box inside an image of ``image_hw`` (H, W), x0 < x1 and y0 < y1. Raises
    InputError."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"a box is (x0, y0, x1, y1) in pixels, got {box!r}") from None
    h, w = image_hw
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must satisfy 0 <= x0 < x1 <= {w} and "
                         f"0 <= y0 < y1 <= {h}")
    return x0, y0, x1, y1


def to_sam_frame(xy: torch.Tensor, original_hw: tuple[int, int], resized_hw: tuple[int, int]) -> torch.Tensor:
    """(..., 2) (x, y) pixels of the original image -> the same points in SAM's input frame (longest side resized,
    before padding): x * w' / W, y * h' / H."""
    (h, w), (rh, rw) = original_hw, resized_hw
    scale = torch.tensor([rw / w, rh / h], dtype=torch.float32, device=xy.device)
    return xy.float() * scale


def refine_low_res(sam, image_embeddings: torch.Tensor, state: RefineState, original_hw: tuple[int, int],
                   resized_hw: tuple[int, int], use_previous_mask: bool = True) -> torch.Tensor:
    """One refinement round: SAM's mask decoder on ``state``'s [SEG] prompt, clicks, box and (with
    ``use_previous_mask``) previous logits. ``image_embeddings`` (1, C, h, w). Returns (1, 4h, 4w) low-resolution
    mask logits (not probabilities), float32. Raises InputError when the state holds no prompt at all."""
    from .modeling.sam import _keep_pe_fp32

    device, dtype = image_embeddings.device, image_embeddings.dtype
    if state.prompt is None and not state.points and state.box is None:
        raise InputError("nothing to segment from: give a click, a box or a target of an answer")
    points = None
    if state.points:
        coords = to_sam_frame(torch.tensor([state.points], device=device), original_hw, resized_hw)  # (1, P, 2)
        points = (coords, torch.tensor([state.labels], dtype=torch.int64, device=device))
    boxes = None
    if state.box is not None:
        corners = torch.tensor([state.box], device=device).view(1, 2, 2)
        boxes = to_sam_frame(corners, original_hw, resized_hw).view(1, 4)
    masks = state.low_res[None].to(device).float() if use_previous_mask and state.low_res is not None else None
    _keep_pe_fp32(sam)
    with torch.autocast(device.type, enabled=False):
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)  # (1, k, C), (1, C, h, w)
    if state.prompt is not None:
        sparse = torch.cat([state.prompt.view(1, 1, -1).to(sparse.dtype), sparse], dim=1)
    image_pe = sam.prompt_encoder.get_dense_pe().to(dtype)
    low, _ = sam.mask_decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                              sparse_prompt_embeddings=sparse.to(dtype), dense_prompt_embeddings=dense.to(dtype),
                              multimask_output=False)
    return low[0].float()  # (1, 4h, 4w)
