"""Interactive refinement: clicks, boxes and scribbles prompt SAM with the [SEG] embedding and the previous mask."""

import math

import numpy as np
import pytest
import torch

from gsva.errors import InputError
from gsva.inference import GSVAPredictor
from gsva.refinement import (SCRIBBLE_MAX_POINTS, RefineState, check_box, check_clicks, refine_low_res,
                             scribble_points, to_sam_frame)


def _image():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_scribble_points_are_spaced_along_the_stroke_from_end_to_end():
    hw = (100, 200)  # spacing 0.05 x 200 = 10 px
    pts = scribble_points([(0, 0), (30, 0), (30, 20)], hw)  # 50 px long: 6 points, 10 px apart
    assert len(pts) == 6 and pts[0] == (0.0, 0.0) and pts[-1] == pytest.approx((30.0, 20.0))
    gaps = [math.dist(a, b) for a, b in zip(pts, pts[1:])]
    assert gaps == pytest.approx([10.0] * 5)
    long = scribble_points([(0, 50), (200, 50)], hw)
    assert len(long) == SCRIBBLE_MAX_POINTS and long[-1] == pytest.approx((200.0, 50.0))
    assert scribble_points([(5, 5)], hw) == [(5.0, 5.0)] == scribble_points([(5, 5), (5, 5)], hw)
    with pytest.raises(InputError, match="at least one"):
        scribble_points([], hw)


def test_clicks_and_boxes_are_checked_in_original_pixels():
    assert check_clicks([(1, 2), (55.5, 39)], None, (40, 56)) == ([(1.0, 2.0), (55.5, 39.0)], [1, 1])
    assert check_clicks([(1, 2)], [0], (40, 56))[1] == [0]
    for points, labels, match in (([(60, 2)], None, "outside"), ([(1, float("nan"))], None, "outside"),
                                  ([(1,)], None, "pair"), (["xy"], None, "pair"), ([(1, 2)], [1, 0], "labels"),
                                  ([(1, 2)], [2], "positive")):
        with pytest.raises(InputError, match=match):
            check_clicks(points, labels, (40, 56))
    assert check_box((1, 2, 30, 20), (40, 56)) == (1.0, 2.0, 30.0, 20.0)
    for box in ((30, 2, 1, 20), (1, 2, 60, 20), (1, 2, 3), "box"):
        with pytest.raises(InputError, match="box"):
            check_box(box, (40, 56))


def test_points_map_to_the_sam_input_frame():
    xy = torch.tensor([[56.0, 40.0], [28.0, 10.0]])
    out = to_sam_frame(xy, original_hw=(40, 56), resized_hw=(46, 64))
    torch.testing.assert_close(out, torch.tensor([[64.0, 46.0], [32.0, 11.5]]))


def _answered(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=8)
    with torch.no_grad():  # an answer that reaches a slot, decided [SEG]
        micro_model.mllm.lm_head.weight[predictor.ids.seg] += 5.0 * micro_model.mllm.lm_head.weight.abs().max()
    predictor.set_image(_image())
    answer = predictor.ask("the red circle")
    target = next(t for t in answer.targets if t.status == "seg")
    return predictor, target


def test_the_state_of_an_answer_decodes_to_its_own_mask(micro_model, tokenizer):
    """With no click and no mask prompt, a refinement round is the answer's own [SEG] decoding (the same logits)."""
    predictor, target = _answered(micro_model, tokenizer)
    state = target.refine_state
    assert state is not None and state.prompt is not None and state.points == () and state.box is None
    enc = predictor.encoded
    low = refine_low_res(micro_model.sam, enc.embeddings, RefineState(state.prompt, None), enc.image.shape[:2],
                         enc.resized_hw, use_previous_mask=False)
    torch.testing.assert_close(low, state.low_res, atol=1e-5, rtol=1e-5)


def test_refinement_rounds_accumulate_clicks_and_start_from_the_last_mask(micro_model, tokenizer, monkeypatch):
    import gsva.inference as inference

    predictor, target = _answered(micro_model, tokenizer)
    seen = []
    real = inference.refine_low_res

    def spy(sam, embeddings, state, *args):
        seen.append(state)
        return real(sam, embeddings, state, *args)

    monkeypatch.setattr(inference, "refine_low_res", spy)
    first = predictor.refine(target, points=[(10, 12)], point_labels=[1])
    assert first.mask.shape == (40, 56) and first.mask.dtype == bool and first.logits.shape == (40, 56)
    assert first.phrase == target.phrase and first.status == "seg"
    assert seen[0].low_res is target.refine_state.low_res and seen[0].prompt is target.refine_state.prompt
    second = predictor.refine(first, points=[(40, 30)], point_labels=[0], box=(2, 2, 50, 38))
    assert second.refine_state.points == ((10.0, 12.0), (40.0, 30.0)) and second.refine_state.labels == (1, 0)
    assert second.refine_state.box == (2.0, 2.0, 50.0, 38.0)
    assert seen[1].low_res is first.refine_state.low_res  # the previous round's logits are the dense prompt
    assert not torch.equal(first.refine_state.low_res, second.refine_state.low_res)
    third = predictor.refine(second, scribble=[(5, 5), (25, 5)])
    assert len(third.refine_state.points) == 2 + len(scribble_points([(5, 5), (25, 5)], (40, 56)))
    assert third.refine_state.box == second.refine_state.box  # kept until replaced


def test_a_mask_can_start_from_clicks_alone_and_bad_requests_are_refused(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=4)
    with pytest.raises(InputError, match="set an image"):
        predictor.refine(None, points=[(1, 1)])
    predictor.set_image(_image())
    fresh = predictor.refine(None, points=[(20, 20)])
    assert fresh.phrase == "" and fresh.score == 1.0 and fresh.refine_state.prompt is None
    assert fresh.mask.shape == (40, 56)
    with pytest.raises(InputError, match="nothing to segment"):
        predictor.refine(None)
    with pytest.raises(InputError, match="outside"):
        predictor.refine(fresh, points=[(100, 1)])
    rejected = type(fresh)(phrase="the zebra", status="rej", score=0.1)
    with pytest.raises(InputError, match="no decoded mask"):
        predictor.refine(rejected, points=[(1, 1)])
