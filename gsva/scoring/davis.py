"""Video object segmentation measures of DAVIS (Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for
Video Object Segmentation", CVPR 2016, section 4; the 2017 challenge's evaluation, github.com/davisvideochallenge/
davis2017-evaluation, ``metrics.py``): J, the region similarity (IoU), and F, the boundary F-measure, per frame;
a sequence's J&F is the mean of its mean J and its mean F.

F matches the predicted and the true object boundary within a tolerance of ``bound_th`` x the image diagonal
(0.008 in the 2017 evaluation; rounded up to whole pixels): precision is the share of predicted boundary pixels
within that distance of the true boundary, recall the share of true boundary pixels within that distance of the
predicted one (distance by dilation with a disk, as the DAVIS code does instead of a bipartite matching), and F their
harmonic mean. A boundary pixel is a pixel whose value differs from its right, lower or lower-right neighbour (the
last row and column compare with an empty neighbour), which is DAVIS's ``seg2bmap`` at the mask's own size.

Empty cases follow DAVIS: J is 1 when both masks are empty; F is 1 when neither has a boundary and 0 when exactly one
has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["region_similarity", "boundary_map", "boundary_f_measure", "sequence_j_and_f", "BOUNDARY_THRESHOLD"]

BOUNDARY_THRESHOLD = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS 2017 evaluation)."""


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"masks must be (H, W) of one size, got {pred.shape} and {gt.shape}")
    return pred.astype(bool), gt.astype(bool)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two (H, W) bool masks, in [0, 1]; 1 when both are empty. Raises ValueError on a shape mismatch."""
    pred, gt = _check(pred, gt)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool, True on pixels that differ from their right, lower or lower-right neighbour
    (outside the image counts as empty)."""
    m = np.pad(np.asarray(mask, bool), ((0, 1), (0, 1)))
    here = m[:-1, :-1]
    return (here ^ m[:-1, 1:]) | (here ^ m[1:, :-1]) | (here ^ m[1:, 1:])


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """F: boundary F-measure of two (H, W) bool masks, in [0, 1] (see the module docstring). ``bound_th`` < 1 is a
    fraction of the image diagonal, >= 1 a distance in pixels. Raises ValueError on a shape mismatch."""
    pred, gt = _check(pred, gt)
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    pb, gb = boundary_map(pred), boundary_map(gt)
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    size = 2 * int(radius) + 1
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    gt_near = cv2.dilate(gb.astype(np.uint8), disk).astype(bool)
    pred_near = cv2.dilate(pb.astype(np.uint8), disk).astype(bool)
    precision = float((pb & gt_near).sum() / pb.sum())
    recall = float((gb & pred_near).sum() / gb.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sequence_j_and_f(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], skip_first: bool = True) -> dict:
    """J, F and J&F of one sequence: per-frame means over the frames (without the first, whose mask is given, when
    ``skip_first``, as DAVIS's semi-supervised protocol does). Returns {"J", "F", "J&F"} floats in [0, 1]. Raises
    ValueError when the counts differ or no frame is left."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks for {len(gts)} frames")
    pairs = list(zip(preds, gts))[1 if skip_first else 0:]
    if not pairs:
        raise ValueError("no frame to score")
    j = float(np.mean([region_similarity(p, g) for p, g in pairs]))
    f = float(np.mean([boundary_f_measure(p, g) for p, g in pairs]))
    return {"J": j, "F": f, "J&F": (j + f) / 2}
