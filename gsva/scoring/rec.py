"""Referring expression comprehension (REC) accuracy from masks (asked for in GSVA issue #16).

The predicted box is the tight box of the predicted mask (empty when rejected); the GT box the tight box of the GT
mask. Boxes are in pixels, inclusive-exclusive ``[x0, y0, x1, y1)``. A target expression is correct when
IoU(box_pred, box_gt) ≥ 0.5 (the standard REC criterion); a no-target expression is correct when no box is
predicted (as GREC's ``RefExpEvaluator`` counts a no-target sample with no box). Acc@0.5 = correct / all;
``Acc@0.5 (targets)`` counts target expressions only (the classic RefCOCO number).
"""

from __future__ import annotations

import numpy as np

from .base import Scorer
from .rows import ScoredSample

__all__ = ["RECScorer", "mask_box", "box_iou"]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (pixels, end-exclusive) of a (H, W) mask, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two end-exclusive pixel boxes."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


class RECScorer(Scorer):
    """Acc@0.5 of mask-derived boxes."""

    name = "rec"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.target_hits: list[bool] = []
        self.empty_hits: list[bool] = []

    def add(self, sample: ScoredSample) -> None:
        pred = None if sample.pred_reject else mask_box(sample.pred)
        gt = mask_box(sample.gt)
        if sample.gt_empty or gt is None:
            self.empty_hits.append(pred is None)
        else:
            self.target_hits.append(pred is not None and box_iou(pred, gt) >= self.threshold)

    def result(self) -> dict[str, float | int | None]:
        hits = self.target_hits + self.empty_hits
        return {
            f"Acc@{self.threshold}": float(np.mean(hits)) if hits else 0.0,
            f"Acc@{self.threshold} (targets)": float(np.mean(self.target_hits)) if self.target_hits else None,
            "num_expressions": len(hits), "num_no_target": len(self.empty_hits), "num_target": len(self.target_hits),
        }
