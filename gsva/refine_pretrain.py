"""Stage (e) of gsva-smol: teach SAM to refine masks from clicks, by simulated interaction as SAM is trained.

SAM's interactive training (Kirillov et al., 2023, "Segment Anything", appendix A, "Training algorithm"): after a
first prompt, further points are sampled from the error region between the previous prediction and the ground
truth, and each round gets the previous round's low-resolution mask logits as its dense mask prompt. Here, per
training sample, one of two starts (as :meth:`gsva.inference.GSVAPredictor.refine` offers them):

- **from [SEG]**: the round-0 mask is the frozen model's own answer mask for an expression (the projected [SEG]
  embedding with the object pointer's boxes, teacher-forced on a GRES conversation), and every later round is
  prompted with that [SEG] embedding, all clicks so far and the previous logits;
- **from nothing**: the first click is positive, inside the target, and later rounds add clicks and the previous
  logits.

Each step runs ``rounds`` click rounds (drawn uniformly from 1..``max_rounds``, the same for the whole batch) with the
loss (``bce_weight`` x BCE + ``dice_weight`` x Dice, :mod:`gsva.losses`) averaged over rounds; the previous logits
are detached between rounds, as in SAM. A click is placed, with equal chance, at the standard evaluation click (the
interior point farthest from the boundary of the larger of the false-negative and false-positive regions:
:func:`evaluation_click`) or at a pixel drawn uniformly from the error region (SAM's rule); it is positive on missed
foreground, negative on a false positive. Every round decodes through :func:`gsva.refinement.refine_low_res`, the
function inference uses, so training and inference build the prompts the same way.

What trains (``train_decoder``): by default only SAM's prompt-encoder parts that answers never use (the positive and
negative point embeddings, ``not_a_point_embed`` and ``mask_downscaling``): the image encoder, the box-corner
embeddings, ``no_mask_embed`` and the mask decoder stay frozen, so every answer and its [SEG] masks stay
bit-identical. ``train_decoder: true`` trains the mask decoder as well (SAM's own choice), which changes answer masks.

The starts are captured once from the frozen model (one language-model forward per GRES batch, no gradient) and kept
in ``<output_dir>/starts_<split>.safetensors``, so a resumed run does not capture again. Output: the whole model in
``<output_dir>/final`` (``gsva export`` it like any checkpoint) and ``refine.json`` (the validation figures).

Validation: the evaluation click simulation (:func:`evaluation_click`, ``val_clicks`` clicks) on the captured val
starts, in SAM's input frame: mean IoU after 1, 3 and 5 clicks and NoC@90, from [SEG] (with its IoU at 0 clicks)
and from nothing.

Shape legend: N captured [SEG] slots, M captured images, C prompt width, h x w image-embedding grid, S =
``sam.img_size`` (the SAM input frame, pixels), 4h x 4w the low-resolution mask frame.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError
from .losses import dice_loss, sigmoid_bce_loss
from .modeling.seg_tokens import locate_slots
from .refinement import RefineState, refine_low_res
from .training.stage_loop import IndexDataset, StageRecipe, StageTrainer

__all__ = ["RefineRecipe", "load_refine_recipe", "capture_refine_starts", "evaluation_click", "sample_click",
           "RefineTrainer", "PROMPT_ENCODER_KEYS"]

logger = logging.getLogger(__name__)

PROMPT_ENCODER_KEYS = ("prompt_encoder.point_embeddings.0.", "prompt_encoder.point_embeddings.1.",
                       "prompt_encoder.not_a_point_embed.", "prompt_encoder.mask_downscaling.")
"""The SAM keys (under ``sam.``) stage (e) trains by default: what clicks and the dense mask prompt go through, and
no answer uses (SAM's ``PromptEncoder``: point_embeddings 0 negative, 1 positive, 2 and 3 the box corners)."""


@dataclass
class RefineRecipe(StageRecipe):
    """Stage (e) recipe (:class:`gsva.training.stage_loop.StageRecipe` fields and these). ``init_from``: the model
    directory to start from; ``capture_batches`` / ``val_batches``: GRES batches of ``capture_batch_size`` images
    whose [SEG] starts are captured from the train / val split; ``max_targets``: most expressions per conversation;
    ``max_rounds``: most click rounds per step; ``seg_start_rate``: share of samples that start from the [SEG] mask
    (the rest from nothing); ``train_decoder``: train SAM's mask decoder too; ``val_slots``: captured val slots the
    click simulation runs on, ``val_clicks`` its clicks."""

    init_from: str = "gsva/assets/gsva-smol"
    output_dir: str = "runs/gsva-smol-refine"
    capture_batches: int = 150
    val_batches: int = 20
    capture_batch_size: int = 8
    max_targets: int = 5
    max_rounds: int = 8
    seg_start_rate: float = 0.5
    train_decoder: bool = False
    val_slots: int = 200
    val_clicks: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    precision: str = "fp32"

    def validate(self) -> "RefineRecipe":
        super().validate()
        for name in ("capture_batches", "val_batches", "capture_batch_size", "max_targets", "max_rounds",
                     "val_clicks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.val_clicks < 5:
            raise ConfigError("val_clicks must be >= 5 (the figures report 1, 3 and 5 clicks)")
        if not 0.0 <= self.seg_start_rate <= 1.0:
            raise ConfigError(f"seg_start_rate must be in [0, 1], got {self.seg_start_rate}")
        if not self.init_from:
            raise ConfigError("init_from must name the model directory to start from")
        return self


def load_refine_recipe(path: str | Path, overrides: list[str] | None = None) -> RefineRecipe:
    """Read a YAML stage-(e) recipe with ``key=value`` overrides. Raises ConfigError."""
    from .training.recipe import load_recipe_as

    return load_recipe_as(RefineRecipe, path, overrides)


@torch.no_grad()
def capture_refine_starts(model, batches) -> dict[str, torch.Tensor]:
    """The refinement starts of every [SEG] slot of ``batches`` (collated GRES batches with ground-truth masks),
    teacher-forced through the frozen model.

    Returns a dict of CPU tensors: ``embeddings`` (M, C, h, w) float32 SAM ``image_embeddings``; ``image`` (N,) int64
    row of each slot's image; ``resized_hw`` (N, 2) int64 the SAM input frame's (h, w) before padding; ``prompt``
    (N, C) float32 projected [SEG] embeddings; ``low_res`` (N, 1, 4h, 4w) float32 the answer's mask logits (as
    :meth:`gsva.modeling.gsva_model.GSVAModel.slot_masks` decodes them at inference: the pointer's own choice); ``gt``
    (N, S, S) bool the ground truth in the SAM input frame (zero in the padding).
    """
    was_training = model.training
    model.eval()
    size = model.config.sam.img_size
    out = {k: [] for k in ("embeddings", "image", "resized_hw", "prompt", "low_res", "gt")}
    images = 0
    for i, batch in enumerate(batches, 1):
        if i % 25 == 0:
            logger.info("captured %d batches (%d [SEG] slots)", i, sum(len(t) for t in out["image"]))
        batch = batch.to(model.device)
        feats, layout = model.image_tokens(batch.clip_pixels)
        hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        slots = locate_slots(batch.input_ids, model.token_ids.seg, model.token_ids.rej)
        rows = slots.batch_index[slots.is_seg]
        embeddings = model.sam_image_embeddings(batch.sam_pixels).float()
        out["embeddings"].append(embeddings.cpu())
        if len(rows):
            seg_hidden = hidden[rows, slots.predict_position[slots.is_seg]]
            objects = model.object_slots(hidden, batch.input_ids, layout, batch.resized_hw) \
                if model.uses_object_pointer else None
            low, _ = model.slot_masks(seg_hidden, rows, embeddings.to(model.dtype), objects)
            out["low_res"].append(low.float().cpu())
            out["prompt"].append(model.seg_projector(seg_hidden).float().cpu())
            out["image"].append((rows + images).cpu())
            for b, masks in enumerate(batch.gt_masks):
                rh, rw = batch.resized_hw[b]
                framed = torch.zeros((len(masks), size, size), dtype=torch.bool)
                small = F.interpolate(masks[:, None].float().cpu(), (rh, rw), mode="nearest")[:, 0] > 0.5
                framed[:, :rh, :rw] = small
                out["gt"].append(framed)
                out["resized_hw"].append(torch.tensor([[rh, rw]] * len(masks), dtype=torch.long))
        images += embeddings.shape[0]
    model.train(was_training)
    result = {k: torch.cat(v) for k, v in out.items() if v}
    if "image" not in result:
        raise ConfigError("the captured batches hold no [SEG] slot: raise capture_batches")
    if len(result["gt"]) != len(result["image"]):
        raise ValueError(f"{len(result['gt'])} ground-truth masks for {len(result['image'])} [SEG] slots")
    return result


def _distance_inside(region: np.ndarray) -> np.ndarray:
    """(H, W) bool -> float32 Euclidean distance of each pixel to the nearest pixel outside ``region`` (the image
    border counts as outside)."""
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def evaluation_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[float, float], int] | None:
    """The standard evaluation click (Xu et al., "Deep Interactive Object Selection", CVPR 2016; RITM's protocol)
    on (H, W) bool masks: of the false-negative and false-positive regions, the interior point farthest from its
    region's boundary. Returns ((x, y) pixel centre, label 1 positive / 0 negative), or None for a perfect mask."""
    best = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        dist = _distance_inside(region)
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        if best is None or dist[y, x] > best[0]:
            best = (float(dist[y, x]), (float(x) + 0.5, float(y) + 0.5), label)
    return None if best is None else (best[1], best[2])


def sample_click(pred: np.ndarray, gt: np.ndarray, rng: random.Random) -> tuple[tuple[float, float], int]:
    """A training click on (H, W) bool masks: with equal chance :func:`evaluation_click` or a pixel drawn uniformly
    from the whole error region (SAM's rule); positive where the target was missed, negative on a false positive.
    A perfect mask gets a positive click drawn inside ``gt``. ``gt`` must not be empty."""
    if rng.random() < 0.5:
        click = evaluation_click(pred, gt)
        if click is not None:
            return click
    error = pred ^ gt
    if not error.any():
        error = gt
    ys, xs = np.nonzero(error)
    j = rng.randrange(len(ys))
    y, x = int(ys[j]), int(xs[j])
    return (x + 0.5, y + 0.5), int(gt[y, x])


class _SamNet(nn.Module):
    """The model's SAM under the key names of :class:`GSVAModel` (``sam.*``), for the stage loop's state."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam


class RefineTrainer(StageTrainer):
    """Runs a :class:`RefineRecipe` (see the module docstring)."""

    stage = "stage (e) refinement"

    def __init__(self, recipe: RefineRecipe) -> None:
        from .checkpoint import load_model
        from .training.data import endless_batches

        recipe.validate()
        self._open(recipe)
        self.model, self.tokenizer = load_model(recipe.init_from)
        self.model.requires_grad_(False)
        self.net = _SamNet(self.model.sam)
        sam = self.model.sam
        params = [p for k, p in sam.named_parameters()
                  if k.startswith(PROMPT_ENCODER_KEYS) or (recipe.train_decoder and k.startswith("mask_decoder."))]
        for p in params:
            p.requires_grad_(True)
        self._setup(recipe, params)
        self.model.to(self.device)
        self.rng = random.Random(recipe.seed)
        self.starts = {}
        for split, n, seed in ((recipe.train_split, recipe.capture_batches, recipe.seed),
                               (recipe.val_split, recipe.val_batches, recipe.seed + 1)):
            path = self.out / f"starts_{split}.safetensors"
            if path.is_file():
                self.starts[split] = load_file(str(path))
                logger.info("refinement starts of %s read from %s (%d slots)", split, path,
                            len(self.starts[split]["image"]))
                continue
            data = self._conversations(split, seed)
            batches = itertools.islice(endless_batches(data, recipe.capture_batch_size, 0, 1, seed,
                                                       recipe.num_workers), n)
            logger.info("capturing the refinement starts of %d %s batches", n, split)
            self.starts[split] = capture_refine_starts(self.model, batches)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in self.starts[split].items()}, str(tmp))
            tmp.replace(path)

    def _conversations(self, split: str, seed: int):
        from .data.gres_dataset import GRESConversationDataset
        from .tokens import add_control_tokens

        return GRESConversationDataset(self.gref, split, self.tokenizer, add_control_tokens(self.tokenizer),
                                       self.model.config, max_targets=self.recipe.max_targets, seed=seed)

    def dataset(self, split: str, augment: bool) -> torch.utils.data.Dataset:
        return IndexDataset(len(self.starts[split]["image"]))

    @staticmethod
    def collate(items):
        return torch.tensor(items, dtype=torch.long)

    def batch_to_device(self, batch):
        return batch

    # -- one sample's rounds -------------------------------------------------------------------------------------
    def _decode(self, starts: dict, i: int, state: RefineState) -> torch.Tensor:
        """(1, 4h, 4w) logits of one round for captured slot ``i``; clicks are SAM-frame pixels."""
        hw = tuple(int(v) for v in starts["resized_hw"][i])
        embeddings = starts["embeddings"][int(starts["image"][i])][None].to(self.device, self.model.dtype)
        return refine_low_res(self.model.sam, embeddings, state, hw, hw)

    def _upsample(self, low: torch.Tensor) -> torch.Tensor:
        """(n, 4h, 4w) low-res logits -> (n, S, S) logits in the SAM input frame."""
        size = self.config.sam.img_size
        return F.interpolate(low[:, None].float(), (size, size), mode="bilinear", align_corners=False)[:, 0]

    def _start(self, starts: dict, i: int, from_seg: bool) -> RefineState:
        if from_seg:
            return RefineState(prompt=starts["prompt"][i].to(self.device), low_res=starts["low_res"][i].to(self.device))
        return RefineState(prompt=None, low_res=None)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        starts, cfg = self.starts[self.recipe.train_split], self.config.loss
        rounds = self.rng.randint(1, self.recipe.max_rounds)
        total, count = 0.0, 0
        for i in rows.tolist():
            gt = starts["gt"][i]
            gt_np = gt.numpy()
            state = self._start(starts, i, self.rng.random() < self.recipe.seg_start_rate)
            for _ in range(rounds):
                if state.low_res is None:
                    pred = np.zeros_like(gt_np)
                else:
                    pred = (self._upsample(state.low_res.detach()) > 0)[0].cpu().numpy()
                point, label = sample_click(pred, gt_np, self.rng)
                state = RefineState(state.prompt, state.low_res, state.points + (point,), state.labels + (label,))
                with self.autocast():
                    low = self._decode(starts, i, state)
                logits = self._upsample(low)
                target = gt[None].float().to(self.device)
                total = total + (cfg.bce_weight * sigmoid_bce_loss(logits, target).mean()
                                 + cfg.dice_weight * dice_loss(logits, target, cfg.dice_scale, cfg.dice_eps).mean())
                count += 1
                state = RefineState(state.prompt, low.detach(), state.points, state.labels)
        return total / count

    @torch.no_grad()
    def click_curves(self, split: str, from_seg: bool, slots: int, clicks: int) -> list[list[float]]:
        """IoU after 0..``clicks`` evaluation clicks (:func:`evaluation_click`) on the first ``slots`` captured
        starts of ``split``, in the SAM input frame."""
        starts = self.starts[split]
        curves = []
        for i in range(min(slots, len(starts["image"]))):
            gt = starts["gt"][i].numpy()
            state = self._start(starts, i, from_seg)
            pred = (self._upsample(state.low_res) > 0)[0].cpu().numpy() if from_seg else np.zeros_like(gt)
            curve = [_iou(pred, gt)]
            for _ in range(clicks):
                click = evaluation_click(pred, gt) or ((float(np.nonzero(gt)[1][0]) + 0.5,
                                                        float(np.nonzero(gt)[0][0]) + 0.5), 1)
                state = RefineState(state.prompt, state.low_res, state.points + (click[0],), state.labels + (click[1],))
                low = self._decode(starts, i, state)
                state = RefineState(state.prompt, low, state.points, state.labels)
                pred = (self._upsample(low) > 0)[0].cpu().numpy()
                curve.append(_iou(pred, gt))
            curves.append(curve)
        return curves

    def evaluate(self) -> dict[str, float]:
        r = self.recipe
        self.net.eval()
        out = {}
        for name, from_seg in (("from_seg", True), ("from_nothing", False)):
            curves = self.click_curves(r.val_split, from_seg, r.val_slots, r.val_clicks)
            means = np.mean(np.array(curves), axis=0)
            if from_seg:
                out[f"{name}_miou_0"] = float(means[0])
            for k in (1, 3, 5):
                out[f"{name}_miou_{k}"] = float(means[k])
            out[f"{name}_noc90"] = float(np.mean([next((k for k, v in enumerate(c) if v >= 0.9), r.val_clicks)
                                                  for c in curves]))
        self.net.train()
        return out

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        from .checkpoint import save_model

        final = self.out / "final"
        save_model(self.model, self.tokenizer, final)
        (self.out / "refine.json").write_text(json.dumps(
            {"init_from": self.recipe.init_from, "steps": self.step, "train_decoder": self.recipe.train_decoder,
             "val": metrics}, indent=2) + "\n")
        return final


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
