"""The official gRefCOCO (GRES) metrics: ReLA ``gres_model/evaluation/refer_evaluation.py``, ``ReferEvaluator``,
after commit 884ef17 ("fix eval metrics"); definitions from ``ReferEvaluator.evaluate``.

Per expression, with I = |pred ∩ GT| and U = |pred ∪ GT| of the slot's mask (decoded even when rejected; ReLA always
predicts a mask next to its no-target flag):

* no-target GT, rejected (NT true positive): IoU term 1, nothing added to ΣI or ΣU;
* no-target GT, not rejected (NT false negative): IoU term 0, |pred ∪ GT| added to ΣU (an empty mask still scores
  0; the GT of a no-target expression is normally empty, so this is |pred|, but ReLA adds the union whatever the
  mask file holds);
* target GT, rejected (NT false positive): I := 0, U kept, IoU 0;
* target GT, not rejected (NT true negative): IoU = I / U (0 if U is 0).

gIoU = mean IoU over all expressions; cIoU = ΣI / ΣU; N-acc = TP / (TP + FN); T-acc = TN / (TN + FP);
Pr@X = share of target expressions with IoU ≥ X. When the split has no no-target expression N-acc and T-acc are
0, as ReLA sets them (``else: res['T_acc'] = res['N_acc'] = 0``); ``num_no_target`` tells that case apart. When it
has no-target expressions but no target one, T-acc is 0 (ReLA would divide by zero there). Ignore regions do not
exist in gRefCOCO and are not used.
"""

from __future__ import annotations

import numpy as np

from .base import Scorer
from .rows import ScoredSample

__all__ = ["ReLAScorer"]


class ReLAScorer(Scorer):
    """gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9 as ReLA computes them."""

    name = "rela"

    def __init__(self, thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)) -> None:
        self.thresholds = thresholds
        self.ious: list[float] = []
        self.target_ious: list[float] = []
        self.inter = 0
        self.union = 0
        self.nt = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}

    def add(self, sample: ScoredSample) -> float:
        """Add one expression; returns its IoU term."""
        gt, pred = sample.gt, sample.pred
        if sample.gt_empty:
            if sample.pred_reject:
                self.nt["TP"] += 1
                iou = 1.0
            else:
                self.nt["FN"] += 1
                iou = 0.0
                self.union += int(np.logical_or(pred, gt).sum())
        else:
            i = 0 if sample.pred_reject else int(np.logical_and(pred, gt).sum())
            u = int(np.logical_or(pred, gt).sum())
            self.nt["FP" if sample.pred_reject else "TN"] += 1
            iou = i / u if u > 0 else 0.0
            self.inter += i
            self.union += u
            self.target_ious.append(iou)
        self.ious.append(iou)
        return iou

    def result(self) -> dict[str, float | int]:
        tp, fn, fp, tn = (self.nt[k] for k in ("TP", "FN", "FP", "TN"))
        has_nt = tp + fn > 0
        out: dict[str, float | int] = {
            "gIoU": float(np.mean(self.ious)) if self.ious else 0.0,
            "cIoU": self.inter / self.union if self.union else 0.0,
            "N-acc": tp / (tp + fn) if has_nt else 0.0,
            "T-acc": (tn / (tn + fp) if tn + fp else 0.0) if has_nt else 0.0,
        }
        for t in self.thresholds:
            out[f"Pr@{t}"] = float(np.mean([v >= t for v in self.target_ious])) if self.target_ious else 0.0
        out.update({"num_expressions": len(self.ious), "num_no_target": tp + fn, "num_target": tn + fp})
        return out
