"""Per-expression predictions: one line of ``predictions.jsonl`` and its decoded masks.

A line is a JSON object with

* ``id`` (expression id, unique within the file), ``image_id``, ``sentence``;
* ``gt_empty`` (bool): the annotation says the expression refers to nothing (gRefCOCO ``ann_id == [-1]``,
  Ref-ZOM ``ann_id == []``);
* ``pred_reject`` (bool): the model answered ``[REJ]`` for the expression (or, in free generation, gave no slot for
  a target expression);
* ``score`` (float in [0, 1] or null): P([SEG]) / (P([SEG]) + P([REJ])) at the slot; null when there was no slot;
* ``gt_mask``, ``pred_mask`` and optionally ``ignore_mask``: COCO RLE ``{"size": [h, w], "counts": str}``.
  ``pred_mask`` is the mask the slot's embedding decodes to *whether or not the slot was rejected* (an all-zero mask
  when there was no slot); each scorer decides what a rejected slot's mask counts for (see :mod:`gsva.scoring`).

Other keys (``answer``, ``slot``, ``source``, ...) are carried along and ignored by the scorers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.masks import decode_segmentation
from ..errors import UserError

__all__ = ["PredictionError", "ScoredSample", "REQUIRED_KEYS", "sample_from_row", "read_predictions"]

REQUIRED_KEYS = ("id", "image_id", "gt_empty", "pred_reject", "score", "gt_mask", "pred_mask")


class PredictionError(UserError, ValueError):
    """A predictions file or line is malformed; the message names the file and the line."""


@dataclass(frozen=True)
class ScoredSample:
    """One expression, decoded for scoring. Masks are (H, W) bool at the image's original size.

    ``pred`` is the slot's decoded mask even when ``pred_reject`` is True; ``ignore`` marks pixels excluded from
    scoring (ReasonSeg "ignore" regions), None when the dataset has none; ``score`` as in the file (may be None).
    """

    gt: np.ndarray
    pred: np.ndarray
    gt_empty: bool
    pred_reject: bool
    score: float | None = None
    ignore: np.ndarray | None = None


def _decode(rle, key: str) -> np.ndarray:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{key} is not a COCO RLE object")
    h, w = (int(s) for s in rle["size"])
    return decode_segmentation(rle, h, w).astype(bool)


def sample_from_row(row: dict) -> ScoredSample:
    """Decode one ``predictions.jsonl`` object. Raises ValueError for missing keys, bad RLE or differing sizes."""
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"missing keys {', '.join(missing)}")
    gt, pred = _decode(row["gt_mask"], "gt_mask"), _decode(row["pred_mask"], "pred_mask")
    ignore = _decode(row["ignore_mask"], "ignore_mask") if row.get("ignore_mask") is not None else None
    for name, m in (("pred_mask", pred), ("ignore_mask", ignore)):
        if m is not None and m.shape != gt.shape:
            raise ValueError(f"{name} size {list(m.shape)} differs from gt_mask size {list(gt.shape)}")
    score = row["score"]
    if score is not None and not (isinstance(score, (int, float)) and 0.0 <= float(score) <= 1.0):
        raise ValueError(f"score {score!r} is not null or a probability in [0, 1]")
    return ScoredSample(gt=gt, pred=pred, gt_empty=bool(row["gt_empty"]), pred_reject=bool(row["pred_reject"]),
                        score=None if score is None else float(score), ignore=ignore)


def read_predictions(path: str | Path) -> Iterator[tuple[dict, ScoredSample]]:
    """Yield (row, decoded sample) for each line of a ``predictions.jsonl``.

    Raises :class:`PredictionError` naming the file and line for unreadable JSON, missing keys, bad masks or a
    repeated ``id``.
    """
    path = Path(path)
    seen: set = set()
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise PredictionError(f"{path}: cannot open ({exc.strerror or exc})") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                sample = sample_from_row(row)
            except (ValueError, TypeError) as exc:
                raise PredictionError(f"{path}: line {number}: {exc}") from None
            key = (row["image_id"], row["id"])
            if key in seen:
                raise PredictionError(f"{path}: line {number}: expression id {row['id']} of image "
                                      f"{row['image_id']} appears twice")
            seen.add(key)
            yield row, sample
