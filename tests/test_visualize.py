"""Overlays (colours shared with the legend, labels that never cover their own mask) and the answer files."""

import json

import numpy as np
import pytest
from PIL import Image

from gsva.answer_files import answer_record, write_answer
from gsva.inference import Answer, Target
from gsva.visualize import PALETTE, found_colors, overlay_masks, place_labels


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_labels_never_cover_their_own_mask():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        masks = [_disc(h, w, rng.integers(0, h), rng.integers(0, w), rng.integers(5, 60)) for _ in range(3)]
        sizes = [(int(rng.integers(20, 60)), int(rng.integers(10, 20))) for _ in masks]
        boxes = place_labels(masks, sizes, step=1)  # every pixel position: None must mean no room at all
        for k, (mask, (lw, lh), box) in enumerate(zip(masks, sizes, boxes)):
            if box is None:  # then no window of that size, at any pixel, avoids both the mask and earlier labels
                blocked = mask.copy()
                for b in boxes[:k]:
                    if b:
                        blocked[b.y0:b.y1, b.x0:b.x1] = True
                table = np.pad(blocked.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
                sums = table[lh:, lw:] - table[:-lh, lw:] - table[lh:, :-lw] + table[:-lh, :-lw]
                assert (sums > 0).all()
                continue
            assert (box.x1 - box.x0, box.y1 - box.y0) == (lw, lh)
            assert 0 <= box.x0 and box.x1 <= w and 0 <= box.y0 and box.y1 <= h
            assert not mask[box.y0:box.y1, box.x0:box.x1].any()
        placed = [b for b in boxes if b]
        assert not any(a.overlaps(b) for i, a in enumerate(placed) for b in placed[i + 1:])


def test_a_label_goes_next_to_its_mask_and_is_dropped_when_nothing_is_free():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 30:70] = True
    (box,) = place_labels([mask], [(30, 10)])
    assert (box.x0, box.y1) == (30, 38)  # just above the bounding box, left-aligned
    assert place_labels([np.ones((50, 50), bool)], [(10, 10)]) == [None]  # the mask fills the image
    assert place_labels([mask], [(120, 10)]) == [None]  # wider than the image
    with pytest.raises(ValueError, match="label sizes"):
        place_labels([mask], [])


def _answer(h=80, w=120):
    a = _disc(h, w, 40, 30, 20)
    b = _disc(h, w, 40, 90, 15)
    return Answer("Sure, the red circle: [SEG], the zebra: [REJ], the blue circle: [SEG].",
                  [Target("the red circle", "seg", 0.91, a), Target("the zebra", "rej", 0.2),
                   Target("the blue circle", "seg", 0.8, b)])


def test_overlay_colours_are_the_legends_and_labels_stay_off_their_masks():
    answer = _answer()
    assert found_colors(answer) == [PALETTE[0], None, PALETTE[1]]
    image = np.full((80, 120, 3), 128, np.uint8)
    plain = overlay_masks(image, answer, labels=False)
    labelled = overlay_masks(image, answer)
    assert plain.shape == image.shape and plain.dtype == np.uint8
    assert (plain[~(answer.targets[0].mask | answer.targets[2].mask)] == 128).all()  # nothing outside the masks
    assert tuple(plain[40, 30]) == tuple((0.5 * 128 + 0.5 * np.array(PALETTE[0])).astype(np.uint8))
    changed = (labelled != plain).any(axis=2)
    assert changed.any()  # the labels are drawn ...
    assert not changed[answer.targets[0].mask | answer.targets[2].mask].any()  # ... and on no mask
    with pytest.raises(ValueError, match="mask of shape"):
        overlay_masks(np.zeros((10, 10, 3), np.uint8), answer)


def test_answer_files_record_every_target_with_rle_masks(tmp_path):
    from pycocotools import mask as mask_utils

    answer = _answer()
    image = np.zeros((80, 120, 3), np.uint8)
    record = write_answer(image, answer, tmp_path / "out")
    assert record == json.loads((tmp_path / "out" / "result.json").read_text()) == answer_record(answer, 80, 120)
    assert [t["mask"] for t in record["targets"]] == ["mask_0.png", None, "mask_1.png"]
    assert [t["color"] for t in record["targets"]] == [list(PALETTE[0]), None, list(PALETTE[1])]
    assert [t["status"] for t in record["targets"]] == ["seg", "rej", "seg"]
    for t, target in zip(record["targets"], answer.targets):
        if t["mask"]:
            rle = dict(t["segmentation"], counts=t["segmentation"]["counts"].encode())
            assert (mask_utils.decode(rle).astype(bool) == target.mask).all()
            png = np.asarray(Image.open(tmp_path / "out" / t["mask"]))
            assert ((png == 255) == target.mask).all() and ((png == 0) | (png == 255)).all()
    assert Image.open(tmp_path / "out" / "overlay.png").size == (120, 80)
    with pytest.raises(ValueError, match="mask of shape"):
        answer_record(answer, 10, 10)


def test_clicks_are_drawn_where_they_were_made_in_their_colours():
    from gsva.visualize import BOX_COLOR, NEGATIVE_CLICK, POSITIVE_CLICK, draw_clicks

    image = np.full((100, 200, 3), 128, np.uint8)
    out = draw_clicks(image, [(20.0, 30.0), (150.0, 70.0)], [1, 0], box=(60, 10, 120, 90), corner=(5, 95))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all(), "the input image was changed"
    assert tuple(out[30, 20]) == POSITIVE_CLICK and tuple(out[70, 150]) == NEGATIVE_CLICK
    assert tuple(out[10, 90]) == BOX_COLOR and tuple(out[50, 60]) == BOX_COLOR  # the box's edges
    assert tuple(out[50, 90]) == (128, 128, 128)  # its inside is left as it was
    assert tuple(out[95, 5]) == BOX_COLOR  # the pending corner's cross
    with pytest.raises(ValueError, match="2 clicks but 1 labels"):
        draw_clicks(image, [(1, 1), (2, 2)], [1])


def test_a_refined_target_records_its_clicks_and_box_in_result_json():
    from gsva.refinement import RefineState

    mask = _disc(40, 50, 20, 25, 8)
    state = RefineState(prompt=None, low_res=None, points=((25.5, 20.25), (3.0, 4.0)), labels=(1, 0),
                        box=(10.0, 5.0, 40.0, 35.0))
    answer = Answer(text="x", targets=[Target("", "seg", 1.0, mask=mask, refine_state=state),
                                       Target("the dog", "seg", 0.9, mask=mask,
                                              refine_state=RefineState(prompt=None, low_res=None))])
    refined, plain = answer_record(answer, 40, 50)["targets"]
    assert refined["refinement"] == {"points": [[25.5, 20.25], [3.0, 4.0]], "labels": [1, 0],
                                     "box": [10.0, 5.0, 40.0, 35.0]}
    assert "refinement" not in plain  # an answer's own target, not refined
    json.dumps(refined)  # plain JSON types
