"""ReasonSeg / RefCOCO metrics: LISA's ``train_ds.py`` ``validate()`` (dvlab-research/LISA at 3cb2d43; GSVA
``solver.py`` ``validate``, LeapLabTHU/GSVA at 618dc79).

LISA's ``validate`` has no rejection: it always scores the mask decoded at the slot. So does this scorer — the
slot's mask counts whatever the ``[SEG]``/``[REJ]`` decision was (a missing slot has an empty mask); it measures
segmentation only. Pixels in the ignore region are removed from both prediction and GT
(``intersectionAndUnionGPU(..., ignore_index=255)``). Per mask IoU = I / (U + 1e-5), plus 1 when U is 0 (both empty
count as a hit); gIoU = ΣIoU / (count + 1e-5); cIoU = ΣI / (ΣU + 1e-10).

GSVA's own ReasonSeg validation turns the ignore regions into *foreground* (``masks.bool()`` in LeapLabTHU/GSVA at
618dc79, ``data/dataset.py``, ``ValDataset.__getitem__``); this scorer follows LISA, which excludes them, so GSVA's
ReasonSeg figures are not reproduced bit for bit.
"""

from __future__ import annotations

import numpy as np

from .base import Scorer
from .rows import ScoredSample

__all__ = ["LISAScorer"]


class LISAScorer(Scorer):
    """gIoU and cIoU as LISA/GSVA ``validate`` computes them."""

    name = "lisa"

    def __init__(self) -> None:
        self.giou_sum = 0.0
        self.count = 0
        self.inter = 0
        self.union = 0

    def add(self, sample: ScoredSample) -> None:
        pred, gt = sample.pred, sample.gt
        if sample.ignore is not None:
            keep = ~sample.ignore
            pred, gt = pred & keep, gt & keep
        i = int(np.logical_and(pred, gt).sum())
        u = int(np.logical_or(pred, gt).sum())
        self.giou_sum += i / (u + 1e-5) + (1.0 if u == 0 else 0.0)
        self.count += 1
        self.inter += i
        self.union += u

    def result(self) -> dict[str, float | int | None]:
        return {"gIoU": self.giou_sum / (self.count + 1e-5), "cIoU": self.inter / (self.union + 1e-10),
                "num_expressions": self.count}
