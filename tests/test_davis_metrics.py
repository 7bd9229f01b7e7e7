"""DAVIS's J (region IoU) and F (boundary F-measure), and J&F of a sequence."""

import numpy as np
import pytest

from gsva.scoring.davis import boundary_f_measure, boundary_map, region_similarity, sequence_j_and_f


def _square(h, w, y0, x0, side):
    m = np.zeros((h, w), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_region_similarity_is_iou_with_the_empty_convention():
    a, b = _square(20, 20, 0, 0, 10), _square(20, 20, 0, 5, 10)  # overlap 10 x 5 = 50, union 150
    assert region_similarity(a, b) == pytest.approx(50 / 150)
    assert region_similarity(a, a) == 1.0
    empty = np.zeros((20, 20), bool)
    assert region_similarity(empty, empty) == 1.0 and region_similarity(a, empty) == 0.0
    with pytest.raises(ValueError, match="one size"):
        region_similarity(a, np.zeros((20, 21), bool))


def test_boundary_map_marks_pixels_that_differ_from_right_or_lower_neighbours():
    m = _square(6, 6, 1, 1, 3)  # rows/cols 1..3
    b = boundary_map(m)
    # inside the square only its last row and column differ from a right/lower neighbour; the background pixels
    # just above and left of it differ from theirs
    assert b[3, 1] and b[1, 3] and not b[2, 2] and b[0, 1] and b[1, 0] and not b[5, 5]
    assert boundary_map(np.ones((4, 4), bool))[3].all()  # the image border counts as empty


def test_boundary_f_measure_tolerates_shifts_within_the_threshold_only():
    h = w = 100  # diagonal 141.4: tolerance ceil(0.008 x 141.4) = 2 px
    gt = _square(h, w, 30, 30, 40)
    assert boundary_f_measure(gt, gt) == 1.0
    assert boundary_f_measure(_square(h, w, 32, 30, 40), gt) == 1.0  # 2 px down: within tolerance
    far = boundary_f_measure(_square(h, w, 40, 30, 40), gt)  # 10 px down: only the side edges still match
    assert 0.3 < far < 0.7
    assert boundary_f_measure(_square(h, w, 40, 30, 40), gt, bound_th=10) == 1.0  # >= 1: pixels
    empty = np.zeros((h, w), bool)
    assert boundary_f_measure(empty, empty) == 1.0 and boundary_f_measure(empty, gt) == 0.0


def test_sequence_j_and_f_skips_the_given_first_frame():
    gt = [_square(50, 50, 10, 10, 20)] * 3
    preds = [np.zeros((50, 50), bool), gt[1], _square(50, 50, 10, 20, 20)]
    out = sequence_j_and_f(preds, gt)
    j = (1.0 + region_similarity(preds[2], gt[2])) / 2
    assert out["J"] == pytest.approx(j) and out["J&F"] == pytest.approx((out["J"] + out["F"]) / 2)
    assert sequence_j_and_f(preds, gt, skip_first=False)["J"] == pytest.approx((0 + 2 * j) / 3)
    with pytest.raises(ValueError, match="frames"):
        sequence_j_and_f(preds[:2], gt)
    with pytest.raises(ValueError, match="no frame"):
        sequence_j_and_f(preds[:1], gt[:1])
