"""Rejection calibration: sweep the [SEG]/[REJ] decision threshold over the per-slot scores.

A slot with score s = P([SEG]) / (P([SEG]) + P([REJ])) is rejected at threshold t when s < t. Expressions without
a score (no slot in the answer) keep their recorded decision. At each t the ReLA definitions
(:mod:`gsva.scoring.rela`) give gIoU, cIoU, N-acc and T-acc; a slot's mask is the one its embedding decodes to, so
a newly accepted slot contributes its real mask. The table's ``recorded`` entry scores the decisions as recorded
(what ``metrics.json`` reports under ``rela``). t = 0.5 equals them except where the argmax at a slot was a third
token (possible under teacher forcing, where the slot's token is given; GSVA counts it as the wrong class) or a
probability tie.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError
from .rows import ScoredSample

__all__ = ["calibrate", "plot_calibration", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = tuple(round(i / 100, 2) for i in range(101))


def _metrics(reject, empty, inter, union) -> dict:
    """ReLA gIoU, cIoU, N-acc, T-acc of one set of decisions (arrays over expressions; see :mod:`.rela`)."""
    target_iou = np.where(reject, 0.0, np.divide(inter, union, out=np.zeros_like(inter), where=union > 0))
    iou = np.where(empty, reject.astype(np.float64), target_iou)
    total_i = np.where(empty | reject, 0.0, inter).sum()
    total_u = np.where(empty & reject, 0.0, union).sum()
    has_empty = bool(empty.any())
    return {"gIoU": float(iou.mean()), "cIoU": float(total_i / total_u) if total_u else 0.0,
            "N-acc": float(reject[empty].mean()) if has_empty else 0.0,
            "T-acc": (float((~reject[~empty]).mean()) if (~empty).any() else 0.0) if has_empty else 0.0}


def calibrate(samples: Iterable[ScoredSample], thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> dict:
    """ReLA metrics against the reject threshold.

    Returns ``{"thresholds": [...], "gIoU": [...], "cIoU": [...], "N-acc": [...], "T-acc": [...],
    "best": {"threshold", "gIoU", "cIoU", "N-acc", "T-acc"}, "recorded": {...}}`` with thresholds ascending; N-acc
    and T-acc are 0 when the samples have no no-target expression (as ReLA reports). ``best`` maximises gIoU (the
    smallest such threshold on ties). Raises ValueError when there are no samples or no thresholds, or a threshold
    is outside [0, 1].
    """
    thresholds = sorted(float(t) for t in thresholds)
    if not thresholds or thresholds[0] < 0 or thresholds[-1] > 1:
        raise InputError(f"thresholds must be a non-empty list of values in [0, 1], got {thresholds}")
    empty, score, fixed, inter, union = [], [], [], [], []
    for s in samples:
        empty.append(s.gt_empty)
        score.append(np.nan if s.score is None else s.score)
        fixed.append(s.pred_reject)
        inter.append(int(np.logical_and(s.pred, s.gt).sum()))
        union.append(int(np.logical_or(s.pred, s.gt).sum()))
    if not empty:
        raise InputError("no predictions to calibrate")
    empty, fixed = np.array(empty), np.array(fixed)
    score, inter, union = (np.array(a, dtype=np.float64) for a in (score, inter, union))
    has_score = ~np.isnan(score)
    table: dict = {"thresholds": [], "gIoU": [], "cIoU": [], "N-acc": [], "T-acc": []}
    for t in thresholds:
        reject = np.where(has_score, np.nan_to_num(score, nan=1.0) < t, fixed)
        table["thresholds"].append(t)
        for key, value in _metrics(reject, empty, inter, union).items():
            table[key].append(value)
    k = int(np.argmax(table["gIoU"]))
    table["best"] = {key: table[key][k] for key in ("gIoU", "cIoU", "N-acc", "T-acc")}
    table["best"]["threshold"] = table["thresholds"][k]
    table["recorded"] = _metrics(fixed, empty, inter, union)
    return table


def plot_calibration(table: dict, path: str | Path, title: str = "") -> None:
    """Write N-acc, T-acc, gIoU and cIoU against the threshold as a PNG (needs matplotlib: ``pip install .[eval]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    t = table["thresholds"]
    for key in ("gIoU", "cIoU", "N-acc", "T-acc"):
        values = [np.nan if v is None else v for v in table[key]]
        ax.plot(t, values, label=key)
    best = table["best"]
    ax.axvline(best["threshold"], color="grey", linestyle="--", linewidth=1,
               label=f"best gIoU {best['gIoU']:.3f} at t={best['threshold']:.2f}")
    ax.set_xlabel("reject threshold t ([REJ] when P([SEG]) / (P([SEG]) + P([REJ])) < t)")
    ax.set_ylabel("metric (fraction)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
