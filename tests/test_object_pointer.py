"""The object pointer of gsva-smol: slot states, targets from ground-truth masks, choices, loss, box prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gsva.modeling.object_pointer import (ObjectPointer, choose_objects, object_states, pointer_loss,
                                          pointer_targets)
from gsva.modeling.sam import decode_masks


def test_object_states_average_each_slots_tokens():
    hidden = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    is_image = torch.zeros(2, 7, dtype=torch.bool)
    is_image[0, 1:5] = True  # row 0: image tokens at 1..4, row 1 at 3..6 (2 slots of 2 tokens)
    is_image[1, 3:7] = True
    states = object_states(hidden, is_image, tokens_per_object=2)
    assert states.shape == (2, 2, 3)
    torch.testing.assert_close(states[0, 0], hidden[0, 1:3].mean(0))
    torch.testing.assert_close(states[1, 1], hidden[1, 5:7].mean(0))
    is_image[1, 3] = False
    with pytest.raises(ValueError, match="image tokens per row"):
        object_states(hidden, is_image, tokens_per_object=2)


def test_targets_are_the_slots_the_mask_covers():
    # 100 x 100 image; slot 0 box left quarter, slot 1 right quarter, slot 2 centre, slot 3 free
    boxes = torch.tensor([[[0.0, 0.0, 0.25, 1.0], [0.75, 0.0, 1.0, 1.0], [0.4, 0.4, 0.6, 0.6], [0.0, 0.0, 0.0, 0.0]]])
    present = torch.tensor([[True, True, True, False]])
    mask = torch.zeros(1, 100, 100)
    mask[0, 10:90, 2:22] = 1  # covers 64 % of slot 0's box, nothing of the others
    assert pointer_targets(boxes, present, mask).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    both = mask.clone()
    both[0, 5:95, 78:98] = 1  # now slot 1 too (72 %), a GRES target of two objects
    assert pointer_targets(boxes, present, both).tolist() == [[1.0, 1.0, 0.0, 0.0]]
    sliver = mask.clone()
    sliver[0, 45:47, 45:47] = 1  # a touch of slot 2's box (1 %): not named
    assert pointer_targets(boxes, present, sliver).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    empty = torch.zeros(1, 100, 100)
    empty[0, :, :] = 0
    assert pointer_targets(boxes, present, empty).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    hidden_under_free = torch.zeros(1, 100, 100)
    hidden_under_free[0, 0:1, 0:1] = 1  # inside the free slot's (empty) box only, and slot 0's
    assert pointer_targets(boxes, present, hidden_under_free)[0, 3] == 0


def test_choice_is_the_best_slot_plus_confident_others():
    present = torch.tensor([[True, True, True, False], [True, True, False, False], [False] * 4])
    logits = torch.tensor([[-3.0, -1.0, -2.0, 9.0],  # all unlikely: the best present slot (1) still prompts SAM
                           [2.0, 1.0, 0.0, 0.0],  # both above 0.5: a two-object target
                           [0.0, 0.0, 0.0, 0.0]])  # no object in the image
    assert choose_objects(logits, present) == [[1], [0, 1], []]


def test_pointer_scores_free_slots_out_and_its_loss_is_bce_over_present_slots():
    torch.manual_seed(0)
    pointer = ObjectPointer(hidden_size=8, width=4)
    present = torch.tensor([[True, True, False], [True, False, False]])
    logits = pointer(torch.randn(2, 8), torch.randn(2, 3, 8), present)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert bool((logits[~present] == -1e4).all())
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # row 1 names no slot: left out
    expected = F.binary_cross_entropy_with_logits(logits[0, :2], targets[0, :2])
    torch.testing.assert_close(pointer_loss(logits, targets, present), expected)
    none = pointer_loss(logits, torch.zeros(2, 3), present)
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="disagree"):
        pointer(torch.randn(1, 8), torch.randn(2, 3, 8), present)


def test_a_box_prompt_joins_the_seg_token(micro_model):
    sam = micro_model.sam
    c = micro_model.config.sam.prompt_embed_dim
    grid = micro_model.config.sam.embedding_size
    torch.manual_seed(0)
    embeddings = torch.randn(1, c, grid, grid)
    prompts = torch.randn(2, c)
    index = torch.zeros(2, dtype=torch.long)
    size = micro_model.config.sam.img_size
    boxes = torch.tensor([[0.0, 0.0, size / 2, size / 2], [size / 2, size / 2, size, size]])
    with torch.no_grad():
        plain = decode_masks(sam, embeddings, prompts, index)
        boxed = decode_masks(sam, embeddings, prompts, index, boxes=boxes)
        swapped = decode_masks(sam, embeddings, prompts, index, boxes=boxes.flip(0))
    assert boxed.shape == plain.shape == (2, 1, 4 * grid, 4 * grid)
    assert not torch.allclose(boxed, plain)
    assert not torch.allclose(boxed[0], swapped[0])  # the box, not only the token, decides the mask
    with pytest.raises(ValueError, match="boxes must be"):
        decode_masks(sam, embeddings, prompts, index, boxes=boxes[:1])
