"""GSVA's own gRefCOCO/Ref-ZOM scoring: ``solver.py`` ``eval_gres`` (with ``intersectionAndUnionGPU``) of
LeapLabTHU/GSVA at 618dc79. Use it to compare with the GSVA README's numbers; use ``rela`` for the benchmark's.

Per slot (the masks of *every* slot come from the re-evaluation pass, rejected ones included):

* GT empty (fewer than 1 pixel): rejected → N-TP, IoU term 1; not rejected → N-FN, IoU term 0, and only for
  gRefCOCO (``add_fn_union``) |pred| is added to ΣU;
* GT non-empty: rejected → T-FP, else T-TN; **in both cases** IoU = I / (U + 1e-8) of the slot's mask enters gIoU
  and I, U enter cIoU (a wrongly rejected target is not zeroed, unlike ReLA).

gIoU = ΣIoU / (count + 1e-5) (``AverageMeter.all_reduce``), cIoU = ΣI / (ΣU + 1e-10), N-acc = TP / (TP + FN),
T-acc = TN / (TN + FP). (The official meters sum in float32 on the GPU; we sum in float64. Its masks are
``logits >= 0``; our predictor, like LISA, uses ``logits > 0`` — they differ only at logits of exactly 0.)
"""

from __future__ import annotations

import numpy as np

from .base import Scorer
from .rows import ScoredSample

__all__ = ["GSVAScorer"]


class GSVAScorer(Scorer):
    """``eval_gres`` semantics. ``add_fn_union``: True for gRefCOCO, False for Ref-ZOM (as the official code)."""

    name = "gsva"

    def __init__(self, add_fn_union: bool = True) -> None:
        self.add_fn_union = add_fn_union
        self.giou_sum = 0.0
        self.count = 0
        self.inter = 0
        self.union = 0
        self.nt = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}

    def add(self, sample: ScoredSample) -> None:
        gt, pred = sample.gt, sample.pred
        i = int(np.logical_and(pred, gt).sum())
        u = int(np.logical_or(pred, gt).sum())
        self.count += 1
        if gt.sum() < 1:
            if sample.pred_reject:
                self.nt["TP"] += 1
                self.giou_sum += 1.0
            else:
                self.nt["FN"] += 1
                if self.add_fn_union:
                    self.union += u
        else:
            self.nt["FP" if sample.pred_reject else "TN"] += 1
            self.giou_sum += i / (u + 1e-8)
            self.inter += i
            self.union += u

    def result(self) -> dict[str, float | int | None]:
        tp, fn, fp, tn = (self.nt[k] for k in ("TP", "FN", "FP", "TN"))
        return {
            "gIoU": self.giou_sum / (self.count + 1e-5),
            "cIoU": self.inter / (self.union + 1e-10),
            "N-acc": tp / (tp + fn) if tp + fn else None,
            "T-acc": tn / (tn + fp) if tn + fp else None,
            "num_expressions": self.count, "num_no_target": tp + fn, "num_target": tn + fp,
        }
