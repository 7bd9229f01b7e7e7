"""GRES metrics with the official gRefCOCO definitions (ReLA ``ReferEvaluator.evaluate``, commit 884ef17).

Per expression (metrics-data-peers.md §1.2), with I/U the intersection/union of the predicted and GT masks:

* no-target GT, rejected (NT true positive): gIoU term 1, adds nothing to I or U;
* no-target GT, not rejected (NT false negative): gIoU term 0, adds the predicted area to U;
* target GT, rejected (NT false positive): I := 0, U kept, IoU 0;
* target GT, not rejected (NT true negative): IoU = I / U (0 if U is 0).

gIoU = mean IoU over all expressions; cIoU = sum I / sum U; N-acc = TP / (TP + FN) over no-target expressions;
T-acc = TN / (TN + FP) over target expressions; Pr@X = share of target expressions with IoU >= X. Reported as
fractions in [0, 1] (the papers multiply by 100). N-acc and T-acc are None when the split has no no-target
expression (ReLA reports them only then).

In the free-generation protocol a rejected slot decodes no mask, so for a wrongly rejected target U = |GT| (ReLA, which
always predicts a mask, uses |pred OR GT|); I is 0 either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ReLAScorer"]


@dataclass
class ReLAScorer:
    """Accumulates expressions; :meth:`result` gives gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9 and counts."""

    thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    ious: list[float] = field(default_factory=list)
    inter: int = 0
    union: int = 0
    nt: dict[str, int] = field(default_factory=lambda: {"TP": 0, "FN": 0, "FP": 0, "TN": 0})
    target_ious: list[float] = field(default_factory=list)

    def add(self, pred_mask: np.ndarray | None, gt_mask: np.ndarray, pred_reject: bool,
            gt_empty: bool | None = None) -> float:
        """Add one expression. Masks (H, W) bool/{0,1}; ``pred_mask`` None means empty. ``gt_empty`` is the
        annotation's no-target flag (``ann_id == [-1]``); None derives it from the mask. Returns its IoU term."""
        gt = np.asarray(gt_mask, bool)
        pred = np.zeros_like(gt) if pred_mask is None else np.asarray(pred_mask, bool)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        if gt_empty is None:
            gt_empty = not gt.any()
        i = int(np.logical_and(pred, gt).sum())
        u = int(np.logical_or(pred, gt).sum())
        if gt_empty:
            if pred_reject:
                self.nt["TP"] += 1
                iou = 1.0
            else:
                self.nt["FN"] += 1
                iou = 0.0
                self.union += int(pred.sum())
        else:
            if pred_reject:
                self.nt["FP"] += 1
                i = 0
            else:
                self.nt["TN"] += 1
            iou = i / u if u > 0 else 0.0
            self.inter += i
            self.union += u
            self.target_ious.append(iou)
        self.ious.append(iou)
        return iou

    def result(self) -> dict[str, float | int | None]:
        n = len(self.ious)
        tp, fn, fp, tn = (self.nt[k] for k in ("TP", "FN", "FP", "TN"))
        out: dict[str, float | int] = {
            "gIoU": float(np.mean(self.ious)) if n else 0.0,
            "cIoU": self.inter / self.union if self.union else 0.0,
            "N-acc": tp / (tp + fn) if tp + fn else None,
            "T-acc": (tn / (tn + fp) if tn + fp else 0.0) if tp + fn else None,
        }
        for t in self.thresholds:
            out[f"Pr@{t}"] = float(np.mean([v >= t for v in self.target_ious])) if self.target_ious else 0.0
        out.update({"num_expressions": n, "num_no_target": tp + fn, "num_target": tn + fp})
        return out
