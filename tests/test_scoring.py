"""Every scorer against hand-computed values, covering each branch of its definition; calibration; the rows file."""

import json

import numpy as np
import pytest

from gsva.data.masks import encode_rle
from gsva.scoring import PredictionError, ScoredSample, make_scorer, read_predictions, score_file
from gsva.scoring.calibration import calibrate
from gsva.scoring.dmmi import resize_nearest
from gsva.scoring.rec import box_iou, mask_box

EMPTY = np.zeros((2, 5), bool)


def _m(cells, shape=(2, 5)):
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


GT = _m([(0, 0), (0, 1), (0, 2), (0, 3)])
PRED_2_OF_4 = _m([(0, 2), (0, 3), (1, 4)])  # I = 2, U = 5 with GT
THREE = _m([(1, 0), (1, 1), (1, 2)])


def _s(gt, pred, gt_empty, reject, score=None, ignore=None):
    return ScoredSample(gt=gt, pred=pred, gt_empty=gt_empty, pred_reject=reject, score=score, ignore=ignore)


# the six branches every GRES scorer must distinguish
CASES = [
    _s(EMPTY, EMPTY, True, True),           # 1 empty GT, rejected
    _s(EMPTY, EMPTY, True, False),          # 2 empty GT, not rejected, empty mask
    _s(EMPTY, THREE, True, False),          # 3 empty GT, not rejected, 3-pixel mask
    _s(GT, PRED_2_OF_4, False, False),      # 4 target, accepted, I 2 / U 5
    _s(GT, PRED_2_OF_4, False, True),       # 5 target, wrongly rejected (its decoded mask is PRED_2_OF_4)
    _s(GT, GT, False, False),               # 6 target, perfect
]


def _run(name, cases, **kw):
    s = make_scorer(name, **kw)
    for c in cases:
        s.add(c)
    return s.result()


def test_rela_by_hand():
    r = _run("rela", CASES)
    # IoU terms: 1, 0, 0, 2/5, 0 (I := 0), 1; I: 2 + 0 + 4; U: 3 (FN area) + 5 + 5 (pred ∪ GT kept) + 4
    assert r["gIoU"] == pytest.approx((1 + 0.4 + 1) / 6)
    assert r["cIoU"] == pytest.approx(6 / 17)
    assert r["N-acc"] == pytest.approx(1 / 3) and r["T-acc"] == pytest.approx(2 / 3)
    assert r["Pr@0.7"] == pytest.approx(1 / 3) and r["Pr@0.9"] == pytest.approx(1 / 3)
    assert (r["num_expressions"], r["num_no_target"], r["num_target"]) == (6, 3, 3)


def test_rela_reports_zero_accuracies_without_no_target_samples():
    """ReLA ``ReferEvaluator.evaluate``: ``if empty_count[src] > 0: ... else: res['T_acc'] = res['N_acc'] = 0``."""
    r = _run("rela", [CASES[5]])
    assert r["N-acc"] == 0.0 and r["T-acc"] == 0.0 and r["gIoU"] == 1.0 and r["num_no_target"] == 0


def test_rela_wrongly_accepted_no_target_adds_the_union_with_a_non_empty_gt():
    """ReLA's false-negative branch adds ``U`` of ``computeIoU(pred_mask, gt_mask)`` to the cIoU denominator: a record
    flagged no-target whose GT mask is nevertheless non-empty adds |pred ∪ GT|, not |pred|."""
    flagged = _s(GT, PRED_2_OF_4, True, False)  # flag says no target, mask file holds GT; I 2, U 5
    r = _run("rela", [flagged, CASES[5]])
    assert r["cIoU"] == pytest.approx(4 / (5 + 4))  # the flagged record adds no I (ReLA: accum_I += 0)
    assert r["gIoU"] == pytest.approx(0.5) and r["N-acc"] == 0.0 and r["T-acc"] == 1.0
    rejected = _run("rela", [_s(GT, PRED_2_OF_4, True, True), CASES[5]])
    assert rejected["cIoU"] == pytest.approx(1.0) and rejected["N-acc"] == 1.0
    table = calibrate([flagged, CASES[5]], thresholds=(0.5,))
    assert table["recorded"]["cIoU"] == pytest.approx(r["cIoU"])


def test_gsva_eval_gres_by_hand():
    r = _run("gsva", CASES, dataset="grefcoco")
    # a wrongly rejected target keeps its IoU 2/5 and its I/U; FN union added for gRefCOCO
    assert r["gIoU"] == pytest.approx((1 + 0 + 0 + 2 / (5 + 1e-8) + 2 / (5 + 1e-8) + 4 / (4 + 1e-8)) / (6 + 1e-5))
    assert r["cIoU"] == pytest.approx((2 + 2 + 4) / (3 + 5 + 5 + 4 + 1e-10))
    assert r["N-acc"] == pytest.approx(1 / 3) and r["T-acc"] == pytest.approx(2 / 3)
    refzom = _run("gsva", CASES, dataset="refzom")  # Ref-ZOM: the FN area is not added to the union
    assert refzom["cIoU"] == pytest.approx(8 / (14 + 1e-10))


def test_dmmi_by_hand():
    r = _run("dmmi", CASES)
    # zero-target: correct iff the predicted mask is empty (rejected -> empty): cases 1, 2 yes; 3 no
    assert r["Acc"] == pytest.approx(2 / 3)
    # non-empty: IoU 2/5, 0 (rejected -> empty mask: I 0, U 4), 1; oIoU = (2 + 0 + 4) / (5 + 4 + 4)
    assert r["mIoU"] == pytest.approx((0.4 + 0 + 1) / 3)
    assert r["oIoU"] == pytest.approx(6 / 13)
    assert r["Pr@0.5"] == pytest.approx(1 / 3)


def test_dmmi_resize_is_nearest_neighbour():
    m = _m([(0, 0)], shape=(2, 2))
    big = resize_nearest(m, 4)
    assert big.shape == (4, 4) and big[:2, :2].all() and big.sum() == 4
    r = _run("dmmi", [_s(m, m, False, False)], dmmi_resize=4)
    assert r["oIoU"] == 1.0
    with pytest.raises(ValueError):
        make_scorer("dmmi", dmmi_resize=0)


def test_lisa_by_hand_with_both_empty_and_ignore():
    ignore = _m([(0, 3), (1, 4)])
    cases = [
        _s(EMPTY, EMPTY, False, False),                     # both empty: I 0, U 0 -> IoU term 1
        _s(GT, PRED_2_OF_4, False, False, ignore=ignore),   # ignore removes (0,3) and (1,4): I 1, U 3
        _s(GT, PRED_2_OF_4, False, True),                   # a rejected slot's mask still counts: I 2, U 5
        _s(GT, EMPTY, False, True),                         # no slot (empty mask): I 0, U 4
    ]
    r = _run("lisa", cases)
    assert r["gIoU"] == pytest.approx((0 / (0 + 1e-5) + 1 + 1 / (3 + 1e-5) + 2 / (5 + 1e-5) + 0) / (4 + 1e-5))
    assert r["cIoU"] == pytest.approx(3 / (12 + 1e-10))


def test_rec_boxes_from_masks():
    assert mask_box(EMPTY) is None
    assert mask_box(PRED_2_OF_4) == (2, 0, 5, 2)
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    r = _run("rec", CASES)
    # boxes: GT (0,0,4,1); case 4 pred box (2,0,5,2): IoU 2/(4+6-2)=0.25 -> miss; 5 rejected -> miss; 6 hit
    # no-target: correct iff no box: cases 1, 2 yes, 3 no
    assert r["Acc@0.5 (targets)"] == pytest.approx(1 / 3)
    assert r["Acc@0.5"] == pytest.approx(3 / 6)


def test_unknown_scorer():
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("miou")


def test_calibration_sweeps_the_threshold():
    cases = [
        _s(EMPTY, THREE, True, False, score=0.6),   # empty GT: rejected once t > 0.6
        _s(EMPTY, EMPTY, True, False, score=0.65),  # empty GT: rejected once t > 0.65
        _s(GT, GT, False, True, score=0.4),         # target wrongly rejected at 0.5, accepted once t <= 0.4
        _s(GT, PRED_2_OF_4, False, False, score=0.9),
        _s(GT, EMPTY, False, True, score=None),     # no slot: keeps its decision at every threshold
    ]
    table = calibrate(cases, thresholds=(0.0, 0.4, 0.5, 0.7, 1.0))
    g = dict(zip(table["thresholds"], table["gIoU"]))
    assert g[0.0] == pytest.approx((0 + 0 + 1 + 0.4 + 0) / 5)      # everything with a score accepted
    assert g[0.5] == pytest.approx((0 + 0 + 0 + 0.4 + 0) / 5)      # the argmax decisions
    assert g[0.7] == pytest.approx((1 + 1 + 0 + 0.4 + 0) / 5)
    assert g[1.0] == pytest.approx((1 + 1 + 0 + 0 + 0) / 5)
    c = dict(zip(table["thresholds"], table["cIoU"]))
    assert c[0.0] == pytest.approx((4 + 2) / (3 + 0 + 4 + 5 + 4))  # FN areas 3 and 0 enter the union
    assert c[0.7] == pytest.approx(2 / (4 + 5 + 4))
    n = dict(zip(table["thresholds"], table["N-acc"]))
    t = dict(zip(table["thresholds"], table["T-acc"]))
    assert n[0.5] == 0.0 and n[0.7] == 1.0 and t[0.0] == pytest.approx(2 / 3) and t[1.0] == 0.0
    assert table["best"]["threshold"] == 0.7 and table["best"]["gIoU"] == pytest.approx(2.4 / 5)
    # here every recorded decision follows its score, so t = 0.5 equals the rela scorer and the recorded entry
    rela = _run("rela", cases)
    assert g[0.5] == pytest.approx(rela["gIoU"]) and c[0.5] == pytest.approx(rela["cIoU"])
    assert table["recorded"]["gIoU"] == pytest.approx(rela["gIoU"])
    assert table["recorded"]["N-acc"] == rela["N-acc"] and table["recorded"]["T-acc"] == rela["T-acc"]


def test_calibration_recorded_decisions_and_edge_cases():
    # teacher forcing: a third token won the argmax, so the slot counts as rejected although its score is 0.8
    third_token = [_s(GT, GT, False, True, score=0.8), _s(EMPTY, EMPTY, True, True, score=0.1)]
    table = calibrate(third_token, thresholds=(1.0, 0.5, 0.0))
    assert table["thresholds"] == [0.0, 0.5, 1.0]
    assert table["recorded"]["gIoU"] == pytest.approx(_run("rela", third_token)["gIoU"]) == pytest.approx(0.5)
    assert dict(zip(table["thresholds"], table["gIoU"]))[0.5] == pytest.approx(1.0)
    only_targets = calibrate([_s(GT, GT, False, False, score=0.9)], thresholds=(0.5,))
    assert only_targets["N-acc"] == [0.0] and only_targets["T-acc"] == [0.0]  # as rela reports
    with pytest.raises(ValueError, match="thresholds"):
        calibrate(third_token, thresholds=())
    with pytest.raises(ValueError, match="thresholds"):
        calibrate(third_token, thresholds=(1.5,))
    with pytest.raises(ValueError, match="no predictions"):
        calibrate([])


def _row(i, gt, pred, gt_empty=False, reject=False, score=0.9, **extra):
    return {"id": i, "image_id": 1, "sentence": "x", "gt_empty": gt_empty, "pred_reject": reject, "score": score,
            "gt_mask": encode_rle(gt), "pred_mask": encode_rle(pred), **extra}


def test_score_file_roundtrip_and_errors(tmp_path):
    rows = [_row(0, GT, PRED_2_OF_4), _row(1, EMPTY, EMPTY, gt_empty=True, reject=True, score=0.1),
            _row(2, GT, GT, ignore_mask=encode_rle(EMPTY))]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = score_file(path, ["rela", "lisa"])
    assert res["rela"]["gIoU"] == pytest.approx((0.4 + 1 + 1) / 3)
    assert len(list(read_predictions(path))) == 3

    def bad(lines, match):
        p = tmp_path / "bad.jsonl"
        p.write_text("".join(lines))
        with pytest.raises(PredictionError, match=match):
            list(read_predictions(p))

    bad(['{"id": 0\n'], r"bad.jsonl: line 1")
    bad([json.dumps({"id": 0}) + "\n"], "missing keys")
    bad([json.dumps(rows[0]) + "\n", json.dumps(rows[0]) + "\n"], "line 2: expression id 0 of image 1 appears twice")
    bad([json.dumps(_row(0, GT, np.zeros((3, 3), bool))) + "\n"], "differs from gt_mask size")
    bad([json.dumps(_row(0, GT, GT, score=1.5)) + "\n"], "not null or a probability")
    with pytest.raises(PredictionError, match="cannot open"):
        list(read_predictions(tmp_path / "none.jsonl"))
