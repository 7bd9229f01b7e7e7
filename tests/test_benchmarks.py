"""Readers of the real formats (gRefCOCO, RefCOCO pickles, Ref-ZOM, ReasonSeg) through ``open_benchmark``."""

import pickle

import numpy as np
import pytest

from gsva.data.refer import AnnotationError, refzom_split_match
from gsva.data.safe_pickle import UnsafePickleError, load_plain_pickle
from gsva.evaluation import open_benchmark
from tests import refer_fixtures as fx


def _gt(bench, image, expr):
    return bench.ground_truth(image, expr, image.height, image.width)


def test_grefcoco_layout_targets_unions_and_no_target(tmp_path):
    fx.write_grefcoco(tmp_path)
    bench = open_benchmark("grefcoco", tmp_path, "val")
    assert [i.image_id for i in bench.images] == [1, 2]
    assert bench.images[0].path == tmp_path / "images/mscoco/images/train2014/COCO_train2014_000000000001.jpg"
    by_id = {e.id: (img, e) for img in bench.images for e in img.expressions}
    assert sorted(by_id) == [10, 11, 12, 13, 14]  # the train ref (15) is not in val
    gt, ignore = _gt(bench, *by_id[10])
    assert ignore is None and np.array_equal(gt, fx.POLY_MASK.astype(bool))  # polygon
    gt, _ = _gt(bench, *by_id[11])
    assert np.array_equal(gt, (fx.POLY_MASK | fx.RLE_MASK).astype(bool))  # polygon + uncompressed RLE union
    img, e = by_id[13]
    assert e.gt_empty and not _gt(bench, img, e)[0].any()
    gt, _ = _gt(bench, *by_id[14])
    assert np.array_equal(gt, fx.CRLE_MASK.astype(bool))  # compressed RLE; the crowd instance is left out
    img, e = by_id[10]
    with pytest.raises(AnnotationError, match="image is 5x5 but the annotation says 16x20"):
        bench.ground_truth(img, e, 5, 5)


def test_grefcoco_reads_the_pickle_when_present(tmp_path):
    fx.write_grefcoco(tmp_path)
    import json

    refs = json.loads((tmp_path / "grefcoco/grefs(unc).json").read_text())
    (tmp_path / "grefcoco/grefs(unc).p").write_bytes(pickle.dumps(refs[:1], protocol=2))
    bench = open_benchmark("grefcoco", tmp_path, "val")
    assert [e.id for i in bench.images for e in i.expressions] == [10]


@pytest.mark.parametrize("dataset", ["refcoco", "refcoco+", "refcocog"])
def test_refcoco_family_pickles(tmp_path, dataset):
    fx.write_refcoco(tmp_path, dataset)
    bench = open_benchmark(dataset, tmp_path, "testA")
    sentences = [(e.id, e.sentence, e.gt_empty) for i in bench.images for e in i.expressions]
    assert sentences == [(20, "dog on the left", False), (21, "small dog", False), (22, "caf\u00e9 dog", False)]
    img = bench.images[1]
    assert np.array_equal(_gt(bench, img, img.expressions[0])[0], fx.CRLE_MASK.astype(bool))
    with pytest.raises(ValueError, match="split 'testC' not in .*available: testA, val"):
        open_benchmark(dataset, tmp_path, "testC")


def test_refzom_empty_ann_list_and_test_split(tmp_path):
    fx.write_refzom(tmp_path)
    bench = open_benchmark("refzom", tmp_path, "test")
    assert bench.images[0].path.parent.name == "trainval2014"
    exprs = {e.id: e for i in bench.images for e in i.expressions}
    assert sorted(exprs) == [30, 31] and exprs[31].gt_empty and not exprs[30].gt_empty
    img = bench.images[0]
    assert np.array_equal(_gt(bench, img, exprs[30])[0], (fx.POLY_MASK | fx.RLE_MASK).astype(bool))
    assert refzom_split_match("test", "testAB") and refzom_split_match("testB", "testAB")
    assert not refzom_split_match("testC", "testAB") and not refzom_split_match("val", "test")


def test_reasonseg_polygons_ignore_flag_and_cp1252(tmp_path):
    fx.write_reasonseg(tmp_path)
    bench = open_benchmark("reasonseg", tmp_path, "val")
    a, b = bench.images
    assert [e.sentence for e in a.expressions] == ["the thing you sit on"]  # text[0] only
    assert a.expressions[0].is_sentence and not b.expressions[0].is_sentence
    assert b.expressions[0].sentence == "caf\u00e9 table"  # read through the cp1252 fallback
    gt, ignore = bench.ground_truth(a, a.expressions[0], fx.REASON_H, fx.REASON_W)
    # target: cv2 outline + fill of x 2..12, y 2..12 inclusive; the smaller "ignore" square overwrites its part;
    # the "flag" shape covering the whole image is skipped
    expected_ignore = np.zeros((fx.REASON_H, fx.REASON_W), bool)
    expected_ignore[4:7, 4:7] = True
    expected_gt = np.zeros_like(expected_ignore)
    expected_gt[2:13, 2:13] = True
    expected_gt &= ~expected_ignore
    assert np.array_equal(ignore, expected_ignore) and np.array_equal(gt, expected_gt)


def test_reasonseg_errors_name_the_file(tmp_path):
    folder = fx.write_reasonseg(tmp_path)
    (folder / "a.json").write_text('{"text": ["x"], "shapes": [{"label": "t", "points": "nope"}]}')
    bench = open_benchmark("reasonseg", tmp_path, "val")
    with pytest.raises(AnnotationError, match=r"a.json: shapes\[0\] has malformed 'points'|a.json: shapes\[0\] 'points'"):
        bench.ground_truth(bench.images[0], bench.images[0].expressions[0], 20, 24)
    (folder / "b.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="b.json: cannot read JSON"):
        open_benchmark("reasonseg", tmp_path, "val")
    with pytest.raises(AnnotationError, match="no ReasonSeg split folder 'test'"):
        open_benchmark("reasonseg", tmp_path, "test")


def test_pickles_that_name_code_are_refused(tmp_path):
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([{"ref_id": 0, "call": print}], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\).p: refusing to load (__builtin__|builtins).print"):
        load_plain_pickle(evil)
    fx.write_instances(tmp_path / "refcoco")
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(evil.read_bytes())
    with pytest.raises(AnnotationError, match="refusing to load"):
        open_benchmark("refcoco", tmp_path, "val")
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(b"\x80\x02]q\x00(")  # truncated
    with pytest.raises(AnnotationError, match=r"refs\(unc\).p: not a readable pickle"):
        open_benchmark("refcoco", tmp_path, "val")


def test_missing_files_and_unknown_dataset(tmp_path):
    with pytest.raises(AnnotationError, match=r"no refs file \(Ref_ZOM.p or refs\(final\).p\)"):
        open_benchmark("refzom", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        open_benchmark("coco", tmp_path, "val")
