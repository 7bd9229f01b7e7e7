import math

import pytest
import torch

from gsva.config import LossConfig
from gsva.constants import IGNORE_INDEX
from gsva.losses import causal_lm_loss, dice_loss, gsva_loss, point_prompt_loss, sigmoid_bce_loss


def test_bce_hand_computed():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 4
    assert sigmoid_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_hand_computed_with_official_scale():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 0.0]]])  # p = 0.5, 1, 0, 0.5
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    s, eps = 1000.0, 1e-6
    num = 2 * (0.5 + 1.0) / s
    den = (0.5 + 1.0 + 0.0 + 0.5) / s + 2.0 / s
    expected = 1 - (num + eps) / (den + eps)
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # a perfect, confident prediction has (almost) zero loss
    assert dice_loss(target * 200 - 100, target).item() < 1e-3


def test_causal_lm_loss_uses_next_token_and_ignores():
    vocab = 5
    logits = torch.full((1, 3, vocab), -10.0)
    logits[0, 0, 2] = 10.0  # position 0 predicts token at position 1 (= 2): correct
    logits[0, 1, 0] = 10.0  # position 1 predicts label 4 at position 2: wrong
    labels = torch.tensor([[IGNORE_INDEX, 2, 4]])
    loss = causal_lm_loss(logits, labels)
    wrong = torch.log_softmax(logits[0, 1], -1)[4].neg()
    right = torch.log_softmax(logits[0, 0], -1)[2].neg()
    assert loss.item() == pytest.approx(((wrong + right) / 2).item(), rel=1e-5)
    labels2 = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4]])
    assert causal_lm_loss(logits, labels2).item() == pytest.approx(wrong.item(), rel=1e-5)


def test_rej_slots_do_not_enter_mask_losses():
    """Only [SEG] masks are averaged: adding an image whose slots are all [REJ] changes nothing."""
    cfg = LossConfig()
    lm = torch.zeros(2, 4, 7)
    labels = torch.full((2, 4), IGNORE_INDEX)
    pred = [torch.tensor([[[3.0, -3.0], [-3.0, 3.0]]])]
    gt = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])]
    one = gsva_loss(lm[:1], labels[:1], pred, gt, cfg)
    two = gsva_loss(lm, labels, pred + [torch.zeros(0, 3, 3)], gt + [torch.zeros(0, 3, 3)], cfg)
    assert one.num_masks == two.num_masks == 1
    assert two.mask_bce.item() == pytest.approx(one.mask_bce.item())
    assert two.mask_dice.item() == pytest.approx(one.mask_dice.item())
    expected_bce = 2.0 * sigmoid_bce_loss(pred[0], gt[0]).item()
    assert one.mask_bce.item() == pytest.approx(expected_bce, rel=1e-6)


def test_mask_losses_average_over_all_masks_of_the_batch():
    cfg = LossConfig(ce_weight=0.0)
    a, b = torch.randn(2, 4, 4), torch.randn(1, 4, 4)
    ga, gb = (torch.rand(2, 4, 4) > 0.5).float(), (torch.rand(1, 4, 4) > 0.5).float()
    out = gsva_loss(torch.zeros(2, 3, 5), torch.full((2, 3), IGNORE_INDEX), [a, b], [ga, gb], cfg)
    all_bce = torch.cat([sigmoid_bce_loss(a, ga), sigmoid_bce_loss(b, gb)]).mean() * 2.0
    assert out.mask_bce.item() == pytest.approx(all_bce.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((out.mask_bce + out.mask_dice).item(), rel=1e-6)


def test_mismatched_masks_raise():
    with pytest.raises(ValueError, match="predicted masks"):
        gsva_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), [torch.zeros(2, 4, 4)],
                  [torch.zeros(1, 4, 4)], LossConfig())


def test_slot_weighted_ce_by_hand():
    vocab = 4
    logits = torch.randn(1, 4, vocab)
    labels = torch.tensor([[IGNORE_INDEX, 1, 3, 2]])  # 3 is the slot id
    per = torch.stack([torch.log_softmax(logits[0, i], -1)[labels[0, i + 1]].neg() for i in range(3)])
    expected = (per[0] + 5 * per[1] + per[2]) / 7
    assert causal_lm_loss(logits, labels, (3,), 5.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert causal_lm_loss(logits, labels, (3,), 1.0).item() == pytest.approx(per.mean().item(), rel=1e-5)


def test_point_prompt_loss_by_hand():
    cfg = LossConfig(point_prompt_weight=0.5)
    a_logits, a_gt = torch.randn(2, 6, 7), (torch.rand(2, 6, 7) > 0.5).float()
    b_logits, b_gt = torch.randn(1, 4, 5), (torch.rand(1, 4, 5) > 0.5).float()
    bce = torch.cat([sigmoid_bce_loss(a_logits, a_gt), sigmoid_bce_loss(b_logits, b_gt)]).mean()
    dice = torch.cat([dice_loss(a_logits, a_gt), dice_loss(b_logits, b_gt)]).mean()
    expected = 0.5 * (cfg.bce_weight * bce + cfg.dice_weight * dice)
    got = point_prompt_loss([a_logits, b_logits, torch.zeros(0, 3, 3)], [a_gt, b_gt, torch.zeros(0, 3, 3)], cfg)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert point_prompt_loss([torch.zeros(0, 3, 3)], [torch.zeros(0, 3, 3)], cfg).item() == 0.0
    with pytest.raises(ValueError, match="ground truth"):
        point_prompt_loss([a_logits], [b_gt], cfg)
