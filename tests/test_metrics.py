"""ReLA (gRefCOCO) metric definitions on hand-computed cases covering every branch."""

import numpy as np
import pytest

from gsva.metrics import ReLAScorer


def _m(cells, shape=(2, 5)):
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_every_branch_by_hand():
    s = ReLAScorer()
    empty = np.zeros((2, 5), bool)
    gt = _m([(0, 0), (0, 1), (0, 2), (0, 3)])
    # 1. no-target GT, rejected: NT TP, IoU 1, adds nothing to I/U
    assert s.add(None, empty, pred_reject=True, gt_empty=True) == 1.0
    # 2. no-target GT, not rejected, empty mask: NT FN, IoU 0 (only the NT flag earns credit)
    assert s.add(empty, empty, pred_reject=False, gt_empty=True) == 0.0
    # 3. no-target GT, not rejected, 3-pixel mask: NT FN, IoU 0, U += 3
    assert s.add(_m([(1, 0), (1, 1), (1, 2)]), empty, pred_reject=False, gt_empty=True) == 0.0
    # 4. target, not rejected: I = 2, U = 5 (4 GT + 1 extra) -> IoU 0.4
    assert s.add(_m([(0, 2), (0, 3), (1, 4)]), gt, pred_reject=False, gt_empty=False) == pytest.approx(0.4)
    # 5. target, wrongly rejected: I := 0, U = |GT| = 4 (no mask decoded), IoU 0
    assert s.add(None, gt, pred_reject=True, gt_empty=False) == 0.0
    # 6. target, perfect
    assert s.add(gt, gt, pred_reject=False, gt_empty=False) == 1.0
    r = s.result()
    assert r["gIoU"] == pytest.approx((1 + 0 + 0 + 0.4 + 0 + 1) / 6)
    assert r["cIoU"] == pytest.approx((2 + 0 + 4) / (3 + 5 + 4 + 4))
    assert r["N-acc"] == pytest.approx(1 / 3) and r["T-acc"] == pytest.approx(2 / 3)
    assert r["Pr@0.7"] == pytest.approx(1 / 3)
    assert (r["num_expressions"], r["num_no_target"], r["num_target"]) == (6, 3, 3)


def test_accuracies_are_not_reported_without_no_target_samples():
    s = ReLAScorer()
    gt = _m([(0, 0)])
    s.add(gt, gt, pred_reject=False)
    r = s.result()
    assert r["N-acc"] is None and r["T-acc"] is None and r["gIoU"] == 1.0


def test_size_mismatch_raises():
    with pytest.raises(ValueError):
        ReLAScorer().add(np.zeros((2, 2), bool), np.zeros((3, 3), bool), False)
