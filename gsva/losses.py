"""GSVA training losses (official ``model/losses.py`` and ``modeling_lisa_gsva.py:322-362``).

total = ce_weight * CE  +  bce_weight * mean_masks(BCE)  +  dice_weight * mean_masks(Dice)

* CE: mean token cross-entropy over labelled (non-IGNORE) answer tokens; ``[SEG]``/``[REJ]`` are ordinary targets,
  so rejection is learned through CE.
* BCE: per-pixel BCE-with-logits averaged over the pixels of each mask; Dice: 1 - (2 sum(p t / s) + eps) /
  (sum(p / s) + sum(t / s) + eps) with p = sigmoid(logits), s = 1000, eps = 1e-6. Both are averaged over the
  ``[SEG]`` masks of the whole batch.
* Difference from the official code: ``[REJ]`` slots decode no mask and are *not* counted. The official code keeps a
  logit-0 placeholder for each ``[REJ]`` slot, which adds a gradient-free constant (BCE ln 2, Dice ~1) per slot and
  inflates the mask count, diluting the real gradients (LeapLabTHU/GSVA at 618dc79, ``model/modeling_lisa_gsva.py``,
  ``LisaGSVAForCausalLM.model_forward``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig
from .constants import IGNORE_INDEX

__all__ = ["sigmoid_bce_loss", "dice_loss", "causal_lm_loss", "causal_lm_loss_from_hidden", "LossBreakdown", "gsva_loss",
           "point_prompt_loss"]


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE-with-logits, mean over pixels. logits/targets (N, H, W); targets in {0, 1}. Returns (N,) fp32."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """Per-mask Dice loss (official constants: scale 1000, eps 1e-6). logits/targets (N, H, W). Returns (N,) fp32."""
    p = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    numerator = 2 * (p / scale * t).sum(-1)
    denominator = (p / scale).sum(-1) + (t / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, slot_ids: tuple[int, ...] = (),
                   slot_weight: float = 1.0) -> torch.Tensor:
    """Next-token CE: logits (B, L, V) predict labels shifted by one; labels (B, L) with IGNORE_INDEX = -100.

    Returns the mean over labelled positions (0 with grad if there are none). With ``slot_weight != 1`` the mean is
    weighted: targets in ``slot_ids`` ([SEG]/[REJ]) count ``slot_weight`` times (official: 1, a plain mean).
    """
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    valid = shift_labels != IGNORE_INDEX
    if valid.sum() == 0:
        return shift_logits.sum() * 0.0
    return _weighted_ce(shift_logits[valid], shift_labels[valid], slot_ids, slot_weight)


def causal_lm_loss_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head, slot_ids: tuple[int, ...] = (),
                               slot_weight: float = 1.0) -> torch.Tensor:
    """:func:`causal_lm_loss` of ``head(hidden)`` (hidden (B, L, D), ``head``: (..., D) -> (..., V)), computing the
    head only at the labelled positions: the same value, without (B, L, V) logits (with a 49k-word head those cost
    about as much as the language model itself)."""
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE_INDEX
    if valid.sum() == 0:
        return hidden.sum() * 0.0
    logits = head(hidden[:, :-1][valid]).float()
    return _weighted_ce(logits, shift_labels[valid], slot_ids, slot_weight)


def _weighted_ce(logits: torch.Tensor, targets: torch.Tensor, slot_ids: tuple[int, ...], slot_weight: float
                 ) -> torch.Tensor:
    """Mean CE of (N, V) logits against (N,) targets, targets in ``slot_ids`` counting ``slot_weight`` times."""
    if slot_weight == 1.0 or not slot_ids:
        return F.cross_entropy(logits, targets)
    per_token = F.cross_entropy(logits, targets, reduction="none")
    weights = torch.ones_like(per_token)
    weights[torch.isin(targets, torch.tensor(slot_ids, device=targets.device))] = slot_weight
    return (per_token * weights).sum() / weights.sum()


@dataclass
class LossBreakdown:
    """Scalar losses (0-dim fp32 tensors). ``total`` has the graph; the parts are weighted as in ``total``.

    ``num_masks`` counts the [SEG] masks the mask losses were averaged over. ``point_mask`` is the auxiliary
    point-prompt term (0 unless ``LossConfig.point_prompt_weight`` > 0; see :func:`point_prompt_loss`). ``pointer``
    the weighted object-pointer BCE (:func:`gsva.modeling.object_pointer.pointer_loss`; None without a pointer).
    """

    total: torch.Tensor
    ce: torch.Tensor
    mask_bce: torch.Tensor
    mask_dice: torch.Tensor
    num_masks: int
    point_mask: torch.Tensor | None = None
    pointer: torch.Tensor | None = None


def _mask_loss_sums(mask_logits: list[torch.Tensor], gt_masks: list[torch.Tensor], cfg: LossConfig,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed per-mask BCE and Dice over images, and the number of masks (see :func:`gsva_loss` for shapes)."""
    bce_sum = like.new_zeros((), dtype=torch.float32)
    dice_sum = like.new_zeros((), dtype=torch.float32)
    num_masks = 0
    for b, (pred, gt) in enumerate(zip(mask_logits, gt_masks, strict=True)):
        if pred.shape != gt.shape:
            raise ValueError(f"image {b}: predicted masks {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
        if pred.shape[0] == 0:
            continue
        bce_sum = bce_sum + sigmoid_bce_loss(pred, gt).sum()
        dice_sum = dice_sum + dice_loss(pred, gt, cfg.dice_scale, cfg.dice_eps).sum()
        num_masks += pred.shape[0]
    return bce_sum, dice_sum, num_masks


def gsva_loss(lm_logits: torch.Tensor | None, labels: torch.Tensor, mask_logits: list[torch.Tensor],
              gt_masks: list[torch.Tensor], cfg: LossConfig, slot_ids: tuple[int, ...] = (),
              ce: torch.Tensor | None = None) -> LossBreakdown:
    """Combine CE and mask losses.

    Args:
        lm_logits: (B, L, V) language-model logits. labels: (B, L) int64.
        mask_logits: per image, (n_b, H_b, W_b) logits of its [SEG] slots at the original image size.
        gt_masks: per image, (n_b, H_b, W_b) {0, 1} masks of the same slots, same order.
        slot_ids: the [SEG]/[REJ] ids, weighted by ``cfg.slot_ce_weight`` in the CE.
        ce: the unweighted CE when already computed (:func:`causal_lm_loss_from_hidden`); ``lm_logits`` may then
            be None.
    Raises ValueError if a prediction and its ground truth disagree in count or size.
    """
    if ce is None:
        ce = causal_lm_loss(lm_logits, labels, slot_ids, cfg.slot_ce_weight)
    ce = ce * cfg.ce_weight
    bce_sum, dice_sum, num_masks = _mask_loss_sums(mask_logits, gt_masks, cfg, ce)
    denom = max(num_masks, 1)
    mask_bce = cfg.bce_weight * bce_sum / denom
    mask_dice = cfg.dice_weight * dice_sum / denom
    return LossBreakdown(total=ce + mask_bce + mask_dice, ce=ce, mask_bce=mask_bce, mask_dice=mask_dice,
                         num_masks=num_masks)


def point_prompt_loss(mask_logits: list[torch.Tensor], gt_masks: list[torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """Auxiliary point-prompt loss: ``point_prompt_weight * (bce_weight * mean BCE + dice_weight * mean Dice)``.

    Args:
        mask_logits: per image, (m_b, H_b, W_b) logits of masks decoded from one positive point per object.
        gt_masks: per image, (m_b, H_b, W_b) {0, 1} instance masks of those objects.
    Returns a 0-dim fp32 tensor (0 with no masks). Raises ValueError on count or size mismatch.
    """
    like = mask_logits[0] if mask_logits else torch.zeros(())  # only its device is used
    bce_sum, dice_sum, n = _mask_loss_sums(mask_logits, gt_masks, cfg, like)
    n = max(n, 1)
    return cfg.point_prompt_weight * (cfg.bce_weight * bce_sum / n + cfg.dice_weight * dice_sum / n)
