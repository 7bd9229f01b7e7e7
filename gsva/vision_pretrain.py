"""Stage (a) of ``gsva-smol``: train the vision tower to read words in image patches (our stand-in for CLIP).

Dense supervision from the generator's annotations: for each of the tower's P patches (row-major over the resized
``image_size`` x ``image_size`` input), the instance covering the largest share of the patch, if that share is at
least :data:`MIN_COVER`, gives one word per group of ``vision.word_groups`` (its size, colour and shape:
``attributes.size``, ``attributes.color`` and the category name in ``instances.json``); otherwise every group's
label is its last word ("background"). The loss is the mean over groups of the cross-entropy of
:meth:`gsva.modeling.word_projector.WordProjector.word_logits` against those labels, object patches weighted
``object_weight`` times a background patch (most patches are background; unweighted, the tower learned colour but
read shapes on object patches at 0.27, chance 0.17, after 750 steps). With the ``object_words`` projector the
crop reader (:class:`gsva.modeling.object_projector.CropWordReader`) trains beside it on the objects of the true patch
labels (:class:`PatchWordDataset`): its loss, the mean over groups of the objects' cross-entropy, is added.

``crop_objects: predicted`` (stage (a2)) then fine-tunes the crop reader alone, the tower frozen (``vision_init``),
on the objects the tower itself finds (:func:`predicted_objects`): exactly what the reader sees at inference. Why
(measured on 150 held-out scenes, seed 2025, with the stage-(a) output): objects from the predicted patch words
are wider than those of the true labels, and the reader, trained on the latter, called 46 % of the small objects
"large" (size right on 0.76 of objects, shape 0.80, all three words 0.64, against 0.93 / 0.85 / 0.80 on objects
of the true labels).

Output: ``<output_dir>/vision.safetensors`` holding the keys of :data:`VISION_PREFIXES` (as in
:class:`gsva.modeling.gsva_model.GSVAModel`) and ``vision.json`` (config name, steps, held-out accuracy per group on
all patches, on object patches, and of the crop reader on objects); stage (a2) also writes the crop reader alone
(``crop_reader.safetensors``). Checkpoints every ``save_every`` steps
in ``<output_dir>/state.pt`` (tensors and numbers only) let a killed run resume from its last saved step
(the interrupted pass over the data starts again from its beginning, in a new order).

Shape legend: B images, P patches, G word groups, K_g words in group g.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, GSVAConfig, get_named_config
from .data.grefcoco import AnnotationError, GRefCOCO
from .data.transforms import clip_preprocess
from .images import load_image
from .modeling.object_projector import CROP_SIZE, object_crops, patch_components
from .training.stage_loop import StageRecipe, StageTrainer, load_stage_weights

__all__ = ["VisionRecipe", "PatchWordDataset", "patch_labels", "patch_word_loss", "VisionTrainer", "MIN_COVER",
           "load_vision_weights", "VISION_PREFIXES", "predicted_objects", "CROP_READER_PREFIX"]

logger = logging.getLogger(__name__)

MIN_COVER = 0.15
"""Least share of a patch an instance must cover for the patch to be labelled with its words."""

VISION_PREFIXES = ("mllm.model.vision_tower.", "mllm.model.multi_modal_projector.norm.",
                   "mllm.model.multi_modal_projector.classifier.", "mllm.model.multi_modal_projector.crop_reader.")
"""The model keys stage (a) trains and writes."""

CROP_READER_PREFIX = "mllm.model.multi_modal_projector.crop_reader."
"""The keys ``crop_objects: predicted`` trains (the rest of :data:`VISION_PREFIXES` stays as ``vision_init`` has it)."""


@dataclass
class VisionRecipe(StageRecipe):
    """Stage (a) recipe (:class:`gsva.training.stage_loop.StageRecipe` fields, ``object_weight``, ``crop_objects``,
    ``vision_init``). ``model``: a named config whose projector reads words (``projector_type`` ``word`` or
    ``object_words``). ``crop_objects``: "labels" trains the tower and the crop reader on the objects of the true
    patch labels; "predicted" trains only the crop reader, from ``vision_init`` (a stage-(a) ``vision.safetensors``,
    required), on the objects of the frozen tower's own patch words (:func:`predicted_objects`)."""

    output_dir: str = "runs/gsva-smol-vision"
    object_weight: float = 4.0
    crop_objects: str = "labels"
    vision_init: str | None = None

    def validate(self) -> "VisionRecipe":
        super().validate()
        config = get_named_config(self.model)
        if not config.vision.reads_words:
            raise ConfigError(f"{self.model} has no word projector; stage (a) trains gsva-smol-like configs")
        if self.crop_objects not in ("labels", "predicted"):
            raise ConfigError(f"crop_objects must be 'labels' or 'predicted', got {self.crop_objects!r}")
        if self.crop_objects == "predicted":
            if config.vision.projector_type != "object_words":
                raise ConfigError(f"crop_objects: predicted needs an object_words projector; {self.model} has none")
            if not self.vision_init:
                raise ConfigError("crop_objects: predicted fine-tunes a trained tower's crop reader: set vision_init "
                                  "to a stage-(a) vision.safetensors")
            if not Path(self.vision_init).is_file():
                raise ConfigError(f"vision_init {self.vision_init} does not exist")
        return self


def load_vision_recipe(path: str | Path, overrides: list[str] | None = None) -> VisionRecipe:
    """Read a YAML stage-(a) recipe with ``key=value`` overrides. Raises ConfigError."""
    from .training.recipe import load_recipe_as

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
            raise AnnotationError(f"annotation {ann_id} of image {image_id}: words {words} are not all in "
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
    """Per image of ``split``: (CLIP pixels (3, s, s) float32, labels (P, G) int64, object crops (n, 3, c, c)
    float32, object labels (n, G) int64, object extents (n, 2) float32); flips left-right at random with ``augment``
    (the labels' patch columns flip with it).

    The objects (``object_words`` configs only; n = 0 otherwise) are those :class:`ObjectWordProjector` would find
    in the true patch labels: connected patches with the same word of ``object_group``
    (:func:`gsva.modeling.object_projector.patch_components`); an object's label in each group is its patches'
    most frequent one; crops and extents from :func:`gsva.modeling.object_projector.object_crops`.
    """

    def __init__(self, gref: GRefCOCO, split: str, config: GSVAConfig, augment: bool = False, seed: int = 0,
                 label_objects: bool = True):
        self.gref, self.config, self.augment, self.seed = gref, config, augment, seed
        self.label_objects = label_objects  # False: n = 0 (the trainer finds the objects itself)
        self.records = gref.records(split)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        image = load_image(self.gref.image_path(rec))
        v = self.config.vision
        pixels = clip_preprocess(image, v.image_size, v.preprocess)
        labels = patch_labels(self.gref, rec.image_id, self.config)
        side = v.image_size // v.patch_size
        if self.augment and random.Random(f"{self.seed}-{index}-{self.epoch}").random() < 0.5:
            pixels = pixels.flip(-1)
            labels = labels.reshape(side, side, -1).flip(1).reshape(side * side, -1)
        crops, object_labels, extents = torch.zeros((0, 3, CROP_SIZE, CROP_SIZE)), torch.zeros(
            (0, len(v.word_groups)), dtype=torch.long), torch.zeros((0, 2))
        if v.projector_type == "object_words" and self.label_objects:
            objects = patch_components(labels[:, v.object_group], len(v.word_groups[v.object_group]) - 1)
            if objects:
                crops, extents = object_crops(pixels, objects, side)
                object_labels = torch.stack([labels[m].mode(dim=0).values for m in objects])
        return pixels, labels, crops, object_labels, extents


def predicted_objects(pixels: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, config: GSVAConfig
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objects :meth:`gsva.modeling.object_projector.ObjectWordProjector.read_objects` would write, with the
    words of the true patch labels under them.

    Args:
        pixels: (B, 3, s, s) the tower's input. keys: (B, P) int64 the tower's predicted word of ``object_group`` per
            patch. labels: (B, P, G) int64 true patch labels (:func:`patch_labels`).

    Returns:
        (crops (N, 3, c, c), object labels (N, G) int64, extents (N, 2) float32) for the ``max_objects`` largest
        components of ``keys`` per image (as the projector takes them) that cover at least one true object patch;
        an object's label in each group is the most frequent one over its true object patches. Components on
        background only (nothing to name) are left out.
    """
    v = config.vision
    side = v.image_size // v.patch_size
    background = len(v.word_groups[v.object_group]) - 1
    crops, object_labels, extents = [], [], []
    for b in range(pixels.shape[0]):
        comps = sorted(patch_components(keys[b], background), key=len, reverse=True)[: v.max_objects]
        named = []
        for members in comps:
            under = labels[b, members]  # (m, G)
            on_object = under[:, v.object_group] != background
            if bool(on_object.any()):
                named.append((members, under[on_object].mode(dim=0).values))
        if named:
            c, e = object_crops(pixels[b], [m for m, _ in named], side)
            crops.append(c)
            extents.append(e)
            object_labels.append(torch.stack([lab for _, lab in named]))
    if not crops:
        return (pixels.new_zeros((0, 3, CROP_SIZE, CROP_SIZE)),
                torch.zeros((0, len(v.word_groups)), dtype=torch.long, device=pixels.device),
                torch.zeros((0, 2), device=pixels.device))
    return torch.cat(crops), torch.cat(object_labels), torch.cat(extents)


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

        from .modeling.object_projector import ObjectWordProjector
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
        sizes = [len(g) for g in v.word_groups]
        if v.projector_type == "object_words":
            projector = ObjectWordProjector(v.hidden_size, config.text.hidden_size, v.num_patches, sizes,
                                            v.max_objects, v.object_group, v.position_scale)
        else:
            projector = WordProjector(v.hidden_size, config.text.hidden_size, v.num_patches, sizes)
        self.mllm.model.multi_modal_projector = projector

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per group g, patch-word logits (B, P, K_g)."""
        out = self.mllm.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer][:, 1:]  # drop CLS (LLaVA's "default" strategy)
        return self.mllm.model.multi_modal_projector.word_logits(feats)

    def crop_logits(self, crops: torch.Tensor, extents: torch.Tensor) -> list[torch.Tensor]:
        """Per group g, object-word logits (N, K_g) of the crop reader (``object_words`` configs)."""
        return self.mllm.model.multi_modal_projector.crop_reader(crops, extents)

    @property
    def reads_crops(self) -> bool:
        return hasattr(self.mllm.model.multi_modal_projector, "crop_reader")

    def stage_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(VISION_PREFIXES)}


def load_vision_weights(model: nn.Module, path: str | Path) -> None:
    """Copy a stage-(a) ``vision.safetensors`` into a GSVAModel (exactly the :data:`VISION_PREFIXES` keys, same
    shapes). Raises :class:`gsva.checkpoint.CheckpointError`."""
    load_stage_weights(model, path, VISION_PREFIXES)


def _collate(items):
    """-> (pixels (B, 3, s, s), labels (B, P, G), crops (N, 3, c, c), object labels (N, G), extents (N, 2))."""
    return (torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]),
            *(torch.cat([it[k] for it in items]) for k in (2, 3, 4)))


class VisionTrainer(StageTrainer):
    """Runs a :class:`VisionRecipe`; :meth:`run` trains (resuming from ``state.pt``) and writes the outputs."""

    stage = "stage (a)"

    def __init__(self, recipe: VisionRecipe) -> None:
        self._open(recipe)
        self.net = VisionTower(self.config)
        self.predicted = recipe.crop_objects == "predicted"
        prefixes = VISION_PREFIXES
        if self.predicted:
            load_vision_weights(self.net, recipe.vision_init)
            prefixes = (CROP_READER_PREFIX,)
            for k, p in self.net.named_parameters():
                p.requires_grad_(k.startswith(prefixes))
        self._setup(recipe, [p for k, p in self.net.named_parameters() if k.startswith(prefixes)])

    def dataset(self, split: str, augment: bool) -> PatchWordDataset:
        return PatchWordDataset(self.gref, split, self.config, augment=augment, seed=self.recipe.seed,
                                label_objects=not self.predicted)

    collate = staticmethod(_collate)

    def _predicted_batch(self, batch):
        """``crop_objects: predicted``: the batch with its objects found by the frozen tower."""
        pixels, labels = batch[0], batch[1]
        with torch.no_grad():
            keys = self.net(pixels)[self.config.vision.object_group].argmax(-1)
        return (pixels, labels, *predicted_objects(pixels, keys, labels, self.config))

    def loss(self, batch) -> torch.Tensor:
        """Patch-word loss, plus (``object_words``) the crop reader's mean CE over groups on the batch's objects;
        with ``crop_objects: predicted`` the crop reader's loss alone, on the tower's own objects."""
        if self.predicted:
            pixels, labels, crops, object_labels, extents = self._predicted_batch(batch)
            if not len(crops):
                return sum(p.sum() for p in self.optimizer.param_groups[0]["params"]) * 0.0
            with self.autocast():
                crop_logits = self.net.crop_logits(crops, extents)
            return torch.stack([F.cross_entropy(lg.float(), object_labels[:, g])
                                for g, lg in enumerate(crop_logits)]).mean()
        pixels, labels, crops, object_labels, extents = batch
        with self.autocast():
            logits = self.net(pixels)
            crop_logits = self.net.crop_logits(crops, extents) if self.net.reads_crops and len(crops) else None
        loss = patch_word_loss(logits, labels, self.recipe.object_weight)
        if crop_logits is not None:
            loss = loss + torch.stack([F.cross_entropy(lg.float(), object_labels[:, g])
                                       for g, lg in enumerate(crop_logits)]).mean()
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Patch accuracy per group on the first ``val_images`` images of ``val_split``: on all patches and on
        object patches only (labels other than "background"); the crop reader's accuracy per group and on all
        words of an object (``object_exact_acc``) on the objects it trains on (true-label or predicted ones)."""
        self.net.eval()
        data = self.dataset(self.recipe.val_split, augment=False)
        idx = list(range(min(len(data), self.recipe.val_images)))
        groups = len(self.config.vision.word_groups)
        hits, counts = np.zeros((groups, 3)), np.zeros((groups, 3))
        exact = objects = 0
        for start in range(0, len(idx), 32):
            batch = self.batch_to_device(_collate([data[i] for i in idx[start:start + 32]]))
            pixels, labels, crops, object_labels, extents = self._predicted_batch(batch) if self.predicted else batch
            for g, logits in enumerate(self.net(pixels)):
                pred, lab = logits.argmax(-1), labels[..., g]
                obj = lab != len(self.config.vision.word_groups[g]) - 1
                hits[g, :2] += [(pred == lab).sum().item(), ((pred == lab) & obj).sum().item()]
                counts[g, :2] += [lab.numel(), obj.sum().item()]
            if self.net.reads_crops and len(crops):
                right = torch.stack([lg[:, :-1].argmax(-1) == object_labels[:, g]
                                     for g, lg in enumerate(self.net.crop_logits(crops, extents))], dim=1)
                hits[:, 2] += right.sum(0).cpu().numpy()
                counts[:, 2] += len(crops)
                exact += int(right.all(1).sum())
                objects += len(crops)
        self.net.train()
        names = ("size", "colour", "shape") if groups == 3 else tuple(f"group{g}" for g in range(groups))
        out = {}
        for g, name in enumerate(names):
            out[f"{name}_acc"] = float(hits[g, 0] / max(counts[g, 0], 1))
            out[f"{name}_object_acc"] = float(hits[g, 1] / max(counts[g, 1], 1))
            if objects:
                out[f"{name}_crop_acc"] = float(hits[g, 2] / counts[g, 2])
        if objects:
            out["object_exact_acc"] = exact / objects
        return out

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        """``vision.safetensors`` + ``vision.json``; with ``crop_objects: predicted`` also ``crop_reader.safetensors``
        + ``crop_reader.json`` (only the :data:`CROP_READER_PREFIX` keys, the part this stage trains: about 1 MB,
        small enough to commit, and what ``gsva export --replace-weights`` puts into a trained model). Returns the
        ``vision.safetensors`` path."""
        if self.predicted:
            self._write_output("crop_reader", {k: v for k, v in self.net.state_dict().items()
                                               if k.startswith(CROP_READER_PREFIX)}, metrics)
        return self._write_output("vision", self.net.stage_state_dict(), metrics)
