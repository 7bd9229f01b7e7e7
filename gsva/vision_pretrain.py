"""Stage (a) of ``gsva-smol``: train the vision tower to read words in image patches (our stand-in for CLIP).

Dense supervision from the generator's annotations: for each of the tower's P patches (row-major over the resized
``image_size`` x ``image_size`` input), the instance covering the largest share of the patch, if that share is at
least :data:`MIN_COVER`, gives one word per group of ``vision.word_groups`` (its size, colour and shape:
``attributes.size``, ``attributes.color`` and the category name in ``instances.json``); otherwise every group's
label is its last word ("background"). The loss is the mean over groups of the cross-entropy of
:meth:`gsva.modeling.word_projector.WordProjector.word_logits` against those labels, object patches weighted
``object_weight`` times a background patch (most patches are background; unweighted, the tower learned colour but
read shapes on object patches at 0.27, chance 0.17, after 750 steps).

Output: ``<output_dir>/vision.safetensors`` holding the keys of ``mllm.model.vision_tower.*`` and
``mllm.model.multi_modal_projector.{norm,classifier}.*`` (prefixes as in :class:`gsva.modeling.gsva_model.GSVAModel`)
and ``vision.json`` (config name, steps, held-out patch accuracy per group). Checkpoints every ``save_every`` steps
in ``<output_dir>/state.pt`` (tensors and numbers only) let a killed run resume from its last saved step
(the interrupted pass over the data starts again from its beginning, in a new order).

Shape legend: B images, P patches, G word groups, K_g words in group g.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError, GSVAConfig, get_named_config
from .data.grefcoco import GRefCOCO
from .data.refer import default_image_dir
from .data.transforms import clip_preprocess
from .images import load_image

__all__ = ["VisionRecipe", "PatchWordDataset", "patch_labels", "patch_word_loss", "VisionTrainer", "MIN_COVER",
           "load_vision_weights", "VISION_PREFIXES"]

logger = logging.getLogger(__name__)

MIN_COVER = 0.15
"""Least share of a patch an instance must cover for the patch to be labelled with its words."""

VISION_PREFIXES = ("mllm.model.vision_tower.", "mllm.model.multi_modal_projector.norm.",
                   "mllm.model.multi_modal_projector.classifier.")
"""The model keys stage (a) trains and writes."""


@dataclass
class VisionRecipe:
    """Stage (a) recipe (YAML; unknown keys are errors). ``model``: a named config with ``projector_type: word``."""

    model: str = "gsva-smol"
    data_root: str = "data/synth"
    train_split: str = "train"
    val_split: str = "val"
    output_dir: str = "runs/gsva-smol-vision"
    seed: int = 0
    max_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    log_every: int = 50
    save_every: int = 500
    val_images: int = 200
    object_weight: float = 4.0
    num_workers: int = 1
    torch_threads: int = 0
    tensorboard: bool = True

    def validate(self) -> "VisionRecipe":
        for name in ("max_steps", "batch_size", "log_every", "save_every", "val_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if get_named_config(self.model).vision.projector_type != "word":
            raise ConfigError(f"{self.model} has no word projector; stage (a) trains gsva-smol-like configs")
        return self


def load_vision_recipe(path: str | Path, overrides: list[str] | None = None) -> VisionRecipe:
    """Read a YAML stage-(a) recipe with ``key=value`` overrides. Raises ConfigError."""
    from .engine import load_recipe_as

    return load_recipe_as(VisionRecipe, path, overrides)


def patch_labels(gref: GRefCOCO, image_id: int, config: GSVAConfig) -> torch.Tensor:
    """(P, G) int64 word labels of image ``image_id`` (see the module docstring for the rule).

    Raises :class:`gsva.data.grefcoco.AnnotationError`-like ValueError naming the annotation if an instance's
    attribute or category is not one of the group's words.
    """
    groups = config.vision.word_groups
    side = config.vision.image_size // config.vision.patch_size
    info = gref.images[image_id]
    h, w = info["height"], info["width"]
    best = np.zeros((side, side), np.float32)
    labels = np.tile(np.array([len(g) - 1 for g in groups], np.int64), (side, side, 1))
    for ann_id in gref.instance_ids(image_id):
        ann = gref.anns[ann_id]
        words = _instance_words(ann, gref)
        try:
            idx = [g.index(word) for g, word in zip(groups, words)]
        except ValueError:
            raise ValueError(f"annotation {ann_id} of image {image_id}: words {words} are not all in "
                             f"{groups}") from None
        mask = torch.from_numpy(gref.mask((ann_id,), h, w).astype(np.float32))[None, None]
        cover = F.adaptive_avg_pool2d(F.interpolate(mask, size=(side * 8, side * 8), mode="area"), side)[0, 0].numpy()
        take = (cover >= MIN_COVER) & (cover > best)
        best[take] = cover[take]
        labels[take] = idx
    return torch.from_numpy(labels.reshape(side * side, len(groups)))


def _instance_words(ann: dict, gref: GRefCOCO) -> list[str]:
    """(size, colour, shape) of a synthetic instance; "background" for an attribute it lacks (real COCO)."""
    attrs = ann.get("attributes") or {}
    shape = gref.categories.get(ann.get("category_id"), "background")
    return [attrs.get("size", "background"), attrs.get("color", "background"), shape]


class PatchWordDataset(torch.utils.data.Dataset):
    """(CLIP pixels (3, s, s) float32, labels (P, G) int64) per image of ``split``; flips left-right at random
    with ``augment`` (the labels' patch columns flip with it)."""

    def __init__(self, gref: GRefCOCO, split: str, config: GSVAConfig, augment: bool = False, seed: int = 0):
        self.gref, self.config, self.augment, self.seed = gref, config, augment, seed
        self.records = gref.records(split)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        image = load_image(self.gref.image_path(rec))
        pixels = clip_preprocess(image, self.config.vision.image_size, self.config.vision.preprocess)
        labels = patch_labels(self.gref, rec.image_id, self.config)
        if self.augment and random.Random(f"{self.seed}-{index}-{self.epoch}").random() < 0.5:
            side = self.config.vision.image_size // self.config.vision.patch_size
            pixels = pixels.flip(-1)
            labels = labels.reshape(side, side, -1).flip(1).reshape(side * side, -1)
        return pixels, labels


def patch_word_loss(logits: list[torch.Tensor], labels: torch.Tensor, object_weight: float = 1.0) -> torch.Tensor:
    """Mean over groups g of the weighted mean CE(logits[g] (B, P, K_g), labels[..., g] (B, P)): a patch whose
    label in the last group is not that group's last word (an object patch) weighs ``object_weight``, others 1.
    Returns a 0-dim fp32 tensor."""
    background = len(logits) and logits[-1].shape[-1] - 1
    weight = 1.0 + (object_weight - 1.0) * (labels[..., -1] != background).float().flatten()
    losses = [(F.cross_entropy(lg.float().flatten(0, 1), labels[..., g].flatten(), reduction="none") * weight).sum()
              / weight.sum() for g, lg in enumerate(logits)]
    return torch.stack(losses).mean()


class VisionTower(nn.Module):
    """The stage-(a) network: the same modules, under the same key names, as in :class:`GSVAModel` (so the
    weights drop into it): ``mllm.model.vision_tower`` (transformers' CLIP vision model) and the word projector."""

    def __init__(self, config: GSVAConfig) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from .modeling.word_projector import WordProjector

        v = config.vision
        tower = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
            hidden_act="quick_gelu"))
        self.feature_layer = v.feature_layer
        self.mllm = nn.Module()
        self.mllm.model = nn.Module()
        self.mllm.model.vision_tower = tower
        self.mllm.model.multi_modal_projector = WordProjector(v.hidden_size, config.text.hidden_size, v.num_patches,
                                                              [len(g) for g in v.word_groups])

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        out = self.mllm.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer][:, 1:]  # drop CLS (LLaVA's "default" strategy)
        return self.mllm.model.multi_modal_projector.word_logits(feats)

    def stage_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(VISION_PREFIXES)}


def load_vision_weights(model: nn.Module, path: str | Path) -> None:
    """Copy a stage-(a) ``vision.safetensors`` into a GSVAModel (exactly the :data:`VISION_PREFIXES` keys, same
    shapes). Raises :class:`gsva.checkpoint.CheckpointError`."""
    from .checkpoint import CheckpointError, _check_keys

    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise CheckpointError(f"{path}: cannot read the vision weights ({exc})") from None
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(VISION_PREFIXES)}
    _check_keys(expected, state, path)
    with torch.no_grad():
        for k, v in state.items():
            expected[k].copy_(v)


def _collate(items):
    return torch.stack([p for p, _ in items]), torch.stack([lab for _, lab in items])


class VisionTrainer:
    """Runs a :class:`VisionRecipe`; :meth:`run` trains (resuming from ``state.pt``) and writes the outputs."""

    def __init__(self, recipe: VisionRecipe) -> None:
        self.recipe = recipe
        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        torch.manual_seed(recipe.seed)
        self.config = get_named_config(recipe.model)
        root = Path(recipe.data_root)
        self.gref = GRefCOCO(root / "grefcoco", default_image_dir(root, "grefcoco"))
        self.net = VisionTower(self.config)
        self.out = Path(recipe.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        params = [p for k, p in self.net.named_parameters() if k.startswith(VISION_PREFIXES)]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        warm, total = recipe.warmup_steps, recipe.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, 1 - (s - warm) / max(1, total - warm)))
        self.step = 0
        state_path = self.out / "state.pt"
        if state_path.is_file():
            state = torch.load(state_path, weights_only=True)
            self.net.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = state["step"]
            logger.info("resuming stage (a) from step %d", self.step)

    def _save_state(self) -> None:
        tmp = self.out / "state.pt.tmp"
        torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "step": self.step}, tmp)
        os.replace(tmp, self.out / "state.pt")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Patch accuracy per group on the first ``val_images`` images of ``val_split``: on all patches and on
        object patches only (labels other than "background")."""
        self.net.eval()
        data = PatchWordDataset(self.gref, self.recipe.val_split, self.config)
        idx = list(range(min(len(data), self.recipe.val_images)))
        hits = np.zeros((len(self.config.vision.word_groups), 2))
        counts = np.zeros_like(hits)
        for start in range(0, len(idx), 32):
            pixels, labels = _collate([data[i] for i in idx[start:start + 32]])
            for g, logits in enumerate(self.net(pixels)):
                pred, lab = logits.argmax(-1), labels[..., g]
                obj = lab != len(self.config.vision.word_groups[g]) - 1
                hits[g] += [(pred == lab).sum().item(), ((pred == lab) & obj).sum().item()]
                counts[g] += [lab.numel(), obj.sum().item()]
        self.net.train()
        names = ("size", "colour", "shape") if len(hits) == 3 else tuple(f"group{g}" for g in range(len(hits)))
        out = {}
        for g, name in enumerate(names):
            out[f"{name}_acc"] = float(hits[g, 0] / max(counts[g, 0], 1))
            out[f"{name}_object_acc"] = float(hits[g, 1] / max(counts[g, 1], 1))
        return out

    def run(self) -> Path:
        """Train to ``max_steps``; write ``vision.safetensors`` + ``vision.json``; return the safetensors path."""
        r = self.recipe
        writer = None
        if r.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        data = PatchWordDataset(self.gref, r.train_split, self.config, augment=True, seed=r.seed)
        self.net.train()
        epoch = self.step * r.batch_size // max(len(data), 1)
        while self.step < r.max_steps:
            data.epoch = epoch
            loader = torch.utils.data.DataLoader(data, batch_size=r.batch_size, shuffle=True, drop_last=True,
                                                 num_workers=r.num_workers, collate_fn=_collate,
                                                 generator=torch.Generator().manual_seed(r.seed + epoch))
            for pixels, labels in loader:
                if self.step >= r.max_steps:
                    break
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = self.net(pixels)
                loss = patch_word_loss(logits, labels, r.object_weight)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if self.step % r.log_every == 0:
                    logger.info("step %d/%d loss %.4f lr %.2e", self.step, r.max_steps, loss.item(),
                                self.scheduler.get_last_lr()[0])
                    if writer:
                        writer.add_scalar("train/loss", loss.item(), self.step)
                if self.step % r.save_every == 0 or self.step == r.max_steps:
                    self._save_state()
                    metrics = self.evaluate()
                    logger.info("step %d val %s", self.step, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
                    if writer:
                        for k, v in metrics.items():
                            writer.add_scalar(f"val/{k}", v, self.step)
            epoch += 1
        metrics = self.evaluate()
        path = self.out / "vision.safetensors"
        save_file({k: v.contiguous() for k, v in self.net.stage_state_dict().items()}, str(path),
                  metadata={"gsva_config": r.model, "stage": "vision"})
        (self.out / "vision.json").write_text(json.dumps({"model": r.model, "steps": self.step, "val": metrics},
                                                         indent=2) + "\n")
        if writer:
            writer.close()
        return path
