"""Ref-ZOM metrics: DMMI's ``test.py`` ``evaluate()`` (toggle1995/RIS-DMMI at 753cd60).

The prediction is the slot's mask, or an empty mask when the slot is rejected (DMMI has no rejection flag: an empty
mask *is* its "no target" answer).

* zero-target samples (``gt_empty``; Ref-ZOM ``source == 'zero'``): Acc = share whose predicted mask is empty;
* other samples: IoU = I / U (0 if U is 0); oIoU = ΣI / ΣU; mIoU = mean IoU; Pr@0.5..0.9 over them.

``resize``: DMMI evaluates at its network input size: image and GT mask resized to ``resize`` × ``resize``
(480 in the official script; the mask with PIL nearest-neighbour), the prediction made at that size. With
``resize`` set, both our (original-size) prediction and the GT are resized that way before scoring; None scores at
the original size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import InputError
from .base import Scorer
from .rows import ScoredSample

__all__ = ["DMMIScorer", "resize_nearest"]


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool with PIL nearest-neighbour (as DMMI's ``transforms.Resize`` on targets)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.NEAREST)) > 0


class DMMIScorer(Scorer):
    """oIoU, mIoU and Pr@X over non-empty samples; Acc over zero-target samples."""

    name = "dmmi"

    def __init__(self, resize: int | None = None, thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> None:
        if resize is not None and resize < 1:
            raise InputError(f"resize must be a positive size in pixels, got {resize}")
        self.resize = resize
        self.thresholds = thresholds
        self.inter = 0
        self.union = 0
        self.ious: list[float] = []
        self.zero_correct: list[bool] = []

    def add(self, sample: ScoredSample) -> None:
        pred = np.zeros_like(sample.gt) if sample.pred_reject else sample.pred
        gt = sample.gt
        if self.resize is not None:
            pred, gt = resize_nearest(pred, self.resize), resize_nearest(gt, self.resize)
        if sample.gt_empty:
            self.zero_correct.append(not pred.any())
            return
        i = int(np.logical_and(pred, gt).sum())
        u = int(np.logical_or(pred, gt).sum())
        self.ious.append(i / u if u else 0.0)
        self.inter += i
        self.union += u

    def result(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            "oIoU": self.inter / self.union if self.union else 0.0,
            "mIoU": float(np.mean(self.ious)) if self.ious else 0.0,
            "Acc": float(np.mean(self.zero_correct)) if self.zero_correct else None,
        }
        for t in self.thresholds:
            out[f"Pr@{t}"] = float(np.mean([v >= t for v in self.ious])) if self.ious else 0.0
        out.update({"num_expressions": len(self.ious) + len(self.zero_correct),
                    "num_no_target": len(self.zero_correct), "num_target": len(self.ious)})
        return out
