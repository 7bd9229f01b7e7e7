"""Stage (c) of ``gsva-smol``: train Segment Anything from scratch with its own objective, point and box prompts.

SAM's promptable-segmentation training (Kirillov et al., 2023, "Segment Anything", section 3 and appendix A):
a prompt is one positive point drawn uniformly inside an instance, or the instance's box with noise (standard
deviation 10 % of the box side per coordinate, at most 20 pixels), and the predicted mask is supervised by the
instance mask. Simplified here: one prompt per instance and one round (no iterative clicks), a single mask output
(``multimask_output=False``, as GSVA decodes [SEG] prompts), loss ``bce_weight`` x BCE + ``dice_weight`` x Dice (the
GSVA mask loss, :mod:`gsva.losses`) instead of SAM's focal + Dice + IoU-head MSE.

Every module of SAM trains (image encoder, prompt encoder, mask decoder); the masks are compared in the SAM input
frame (the longest side resized to ``sam.img_size``, zero-padded to a square; the low-resolution logits upsampled
bilinearly to it). Output: ``<output_dir>/sam.safetensors`` with the ``sam.*`` keys of
:class:`gsva.modeling.gsva_model.GSVAModel` and ``sam.json`` (config name, steps, held-out mean IoU per prompt kind).

Shape legend: B images, m_b prompts of image b, N = sum m_b, S = ``sam.img_size``, h = S / ``sam.patch_size``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .config import ConfigError, GSVAConfig
from .data.grefcoco import GRefCOCO
from .data.transforms import sam_preprocess
from .images import load_image
from .losses import dice_loss, sigmoid_bce_loss
from .modeling.sam import build_sam, decode_box_masks, decode_point_masks
from .training.stage_loop import StageRecipe, StageTrainer, load_stage_weights

__all__ = ["SamRecipe", "SamPromptDataset", "SamTrainer", "load_sam_recipe", "load_sam_weights", "SAM_PREFIX",
           "BOX_NOISE", "BOX_NOISE_MAX"]

logger = logging.getLogger(__name__)

SAM_PREFIX = "sam."
"""The model keys stage (c) trains and writes."""

BOX_NOISE = 0.1
"""Standard deviation of the box-corner noise, as a fraction of the box side (SAM paper, appendix A)."""

BOX_NOISE_MAX = 20.0
"""Largest box-corner shift in pixels of the SAM input frame (SAM paper, appendix A)."""


@dataclass
class SamRecipe(StageRecipe):
    """Stage (c) recipe (:class:`gsva.training.stage_loop.StageRecipe` fields and these). ``box_rate``: share of prompts
    that are boxes (the rest are points). ``prompts_per_image``: most instances of an image prompted in one step."""

    output_dir: str = "runs/gsva-smol-sam"
    batch_size: int = 16
    val_images: int = 100
    prompts_per_image: int = 4
    box_rate: float = 0.5

    def validate(self) -> "SamRecipe":
        super().validate()
        if self.prompts_per_image < 1:
            raise ConfigError("prompts_per_image must be >= 1")
        if not 0.0 <= self.box_rate <= 1.0:
            raise ConfigError(f"box_rate must be in [0, 1], got {self.box_rate}")
        return self


def load_sam_recipe(path: str | Path, overrides: list[str] | None = None) -> SamRecipe:
    """Read a YAML stage-(c) recipe with ``key=value`` overrides. Raises ConfigError."""
    from .training.recipe import load_recipe_as

    return load_recipe_as(SamRecipe, path, overrides)


def load_sam_weights(model: nn.Module, path: str | Path) -> None:
    """Copy a stage-(c) ``sam.safetensors`` into a GSVAModel (exactly its ``sam.*`` keys, same shapes).
    Raises :class:`gsva.checkpoint.CheckpointError`."""
    load_stage_weights(model, path, (SAM_PREFIX,))


def jitter_box(box: np.ndarray, rng: random.Random) -> np.ndarray:
    """(4,) (x0, y0, x1, y1) pixels -> the same box with each corner moved by N(0, (BOX_NOISE x side)^2), clipped
    to +-BOX_NOISE_MAX pixels; the corners stay ordered (x1 >= x0 + 1, y1 >= y0 + 1)."""
    w, h = box[2] - box[0], box[3] - box[1]
    sides = (w, h, w, h)
    out = [c + max(-BOX_NOISE_MAX, min(BOX_NOISE_MAX, rng.gauss(0.0, BOX_NOISE * s))) for c, s in zip(box, sides)]
    x0, y0, x1, y1 = out
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], np.float32)


class SamPromptDataset(torch.utils.data.Dataset):
    """Per image of ``split``: SAM pixels (3, S, S) float32, instance masks (m, S, S) float32 {0, 1} in the SAM input
    frame, prompts (m, 4) float32 and ``is_box`` (m,) bool. A point prompt is (x, y, x, y), a box (x0, y0, x1, y1),
    in pixels of the SAM input frame. ``augment`` flips left-right at random; the prompts and instances drawn
    depend on (seed, index, epoch) only."""

    def __init__(self, gref: GRefCOCO, split: str, config: GSVAConfig, prompts_per_image: int = 4,
                 box_rate: float = 0.5, augment: bool = False, seed: int = 0):
        self.gref, self.config, self.augment, self.seed = gref, config, augment, seed
        self.prompts_per_image, self.box_rate = prompts_per_image, box_rate
        self.records = gref.records(split)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rng = random.Random(f"{self.seed}-{index}-{self.epoch}")
        rec = self.records[index]
        image = load_image(self.gref.image_path(rec))
        flip = self.augment and rng.random() < 0.5
        if flip:
            image = np.ascontiguousarray(image[:, ::-1])
        size = self.config.sam.img_size
        pixels, (rh, rw) = sam_preprocess(image, size)
        ids = self.gref.instance_ids(rec.image_id)
        ids = rng.sample(ids, min(len(ids), self.prompts_per_image))
        masks, prompts, is_box = [], [], []
        for ann_id in ids:
            mask = self.gref.mask((ann_id,), rec.height, rec.width)
            if flip:
                mask = mask[:, ::-1]
            small = np.asarray(Image.fromarray(np.ascontiguousarray(mask) * 255).resize((rw, rh), Image.NEAREST)) > 127
            ys, xs = np.nonzero(small)
            if len(ys) == 0:
                continue
            framed = np.zeros((size, size), np.float32)
            framed[:rh, :rw] = small
            if rng.random() < self.box_rate:
                prompts.append(jitter_box(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32), rng))
                is_box.append(True)
            else:
                j = rng.randrange(len(ys))
                x, y = xs[j] + 0.5, ys[j] + 0.5
                prompts.append(np.array([x, y, x, y], np.float32))
                is_box.append(False)
            masks.append(framed)
        if not masks:
            return pixels, torch.zeros((0, size, size)), torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.bool)
        return (pixels, torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(prompts)),
                torch.tensor(is_box, dtype=torch.bool))


def _collate(items):
    """-> (pixels (B, 3, S, S), masks (N, S, S), prompts (N, 4), is_box (N,), image_index (N,) int64)."""
    index = torch.cat([torch.full((len(m),), b, dtype=torch.long) for b, (_, m, _, _) in enumerate(items)])
    return (torch.stack([p for p, _, _, _ in items]), torch.cat([m for _, m, _, _ in items]),
            torch.cat([q for _, _, q, _ in items]), torch.cat([k for _, _, _, k in items]), index)


class SamNet(nn.Module):
    """SAM under the key names of :class:`GSVAModel` (``sam.*``), so the weights drop into it."""

    def __init__(self, config: GSVAConfig) -> None:
        super().__init__()
        self.sam = build_sam(config.sam)

    def forward(self, pixels: torch.Tensor, prompts: torch.Tensor, is_box: torch.Tensor,
                image_index: torch.Tensor) -> torch.Tensor:
        """-> (N, S, S) mask logits in the SAM input frame, in prompt order."""
        embeddings = self.sam.image_encoder(pixels)
        n = prompts.shape[0]
        h = embeddings.shape[-1] * 4
        low = embeddings.new_zeros((n, 1, h, h))
        points, boxes = (~is_box).nonzero(as_tuple=True)[0], is_box.nonzero(as_tuple=True)[0]
        if len(points):
            low = low.index_put((points,), decode_point_masks(self.sam, embeddings, prompts[points, :2],
                                                              image_index[points]))
        if len(boxes):
            low = low.index_put((boxes,), decode_box_masks(self.sam, embeddings, prompts[boxes], image_index[boxes]))
        size = pixels.shape[-1]
        return F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)[:, 0]


def mask_iou(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with {0, 1} ``masks``, both (N, H, W); (N,) float32 (1 where both are empty)."""
    pred, gt = logits > 0, masks > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class SamTrainer(StageTrainer):
    """Runs a :class:`SamRecipe`; :meth:`run` trains (resuming from ``state.pt``) and writes the outputs."""

    stage = "stage (c)"

    def __init__(self, recipe: SamRecipe) -> None:
        self._open(recipe)
        self.net = SamNet(self.config)
        self._setup(recipe, list(self.net.parameters()))

    def dataset(self, split: str, augment: bool) -> SamPromptDataset:
        r = self.recipe
        return SamPromptDataset(self.gref, split, self.config, r.prompts_per_image, r.box_rate, augment, r.seed)

    collate = staticmethod(_collate)

    def loss(self, batch) -> torch.Tensor:
        pixels, masks, prompts, is_box, index = batch
        with self.autocast():
            logits = self.net(pixels, prompts, is_box, index)
        if len(masks) == 0:
            return 0.0 * logits.sum()
        cfg = self.config.loss
        return (cfg.bce_weight * sigmoid_bce_loss(logits, masks).mean()
                + cfg.dice_weight * dice_loss(logits, masks, cfg.dice_scale, cfg.dice_eps).mean())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean IoU (threshold: logit 0) on the first ``val_images`` images of ``val_split``, one point and one box
        prompt per instance (drawn with the recipe's seed), reported per prompt kind."""
        self.net.eval()
        out = {}
        for kind, rate in (("point", 0.0), ("box", 1.0)):
            data = SamPromptDataset(self.gref, self.recipe.val_split, self.config, 10**6, rate, False, self.recipe.seed)
            ious = []
            for start in range(0, min(len(data), self.recipe.val_images), 16):
                stop = min(start + 16, self.recipe.val_images, len(data))
                pixels, masks, prompts, is_box, index = self.batch_to_device(
                    _collate([data[i] for i in range(start, stop)]))
                if len(masks):
                    ious.append(mask_iou(self.net(pixels, prompts, is_box, index), masks))
            out[f"{kind}_miou"] = float(torch.cat(ious).mean()) if ious else 0.0
        self.net.train()
        return out

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        """``sam.safetensors`` + ``sam.json``; returns the safetensors path."""
        return self._write_output("sam", self.net.state_dict(), metrics)
