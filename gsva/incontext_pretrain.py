"""Train the prompt generator of segment by example (:class:`gsva.modeling.example_prompts.ExamplePromptGenerator`)
on generated example/target pairs, the rest of the model frozen (as SEGIC keeps its backbones frozen).

Data: tasks ``0 .. tasks - 1`` of :func:`gsva.data.incontext.make_task` with the recipe's ``seed`` (``max_shots``
examples each); every task gives two training pairs, its first example alone and all ``max_shots`` examples, so
the generator sees one-shot and K-shot maps. The frozen model's features (:func:`gsva.incontext.encode_features`)
are captured once, and the inputs the generator reads (:func:`gsva.incontext.correspondence_maps`, the target's
``image_embeddings`` and :func:`gsva.incontext.prototype`) are stored with the target's mask coverage of SAM's
low-resolution frame in ``<output_dir>/pairs_<split>.safetensors``, so a resumed run does not capture again.

Loss: BCE + Dice (:mod:`gsva.losses`, the config's weights) of the generator's map, upsampled bilinearly to SAM's
low-resolution frame (4h x 4w), against that coverage (a soft target in [0, 1]).

Validation: mIoU of :func:`gsva.incontext.segment_like` (the whole method: prompts, SAM's decoder, masks at the
target's own size) with ``method="trained"`` on ``val_tasks`` one-shot tasks of ``val_seed``, and the low-resolution
IoU of the map itself on the captured val pairs. Output: the generator in ``<output_dir>/final``
(:data:`gsva.modeling.example_prompts.GENERATOR_WEIGHTS` and its JSON, to copy into a model directory) with the
validation figures of both methods.

Shape legend: N pairs, M map channels, m x m the maps' grid, C SAM's prompt width, h x w the embedding grid.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .config import ConfigError
from .training.stage_loop import IndexDataset, StageRecipe, StageTrainer

__all__ = ["IncontextRecipe", "load_incontext_recipe", "capture_pairs", "IncontextTrainer", "map_loss"]

logger = logging.getLogger(__name__)


@dataclass
class IncontextRecipe(StageRecipe):
    """The prompt generator's recipe (:class:`gsva.training.stage_loop.StageRecipe` fields and these).
    ``init_from``: the frozen model's directory; ``seed``: the task seed of the training pairs; ``tasks``: how many;
    ``max_shots``: examples of the K-shot pair; ``val_seed`` / ``val_tasks``: the validation tasks (a seed no
    benchmark uses); ``width`` / ``hidden``: the generator's sizes."""

    init_from: str = "gsva/assets/gsva-smol"
    output_dir: str = "runs/gsva-smol-incontext"
    tasks: int = 4000
    max_shots: int = 3
    val_seed: int = 1
    val_tasks: int = 100
    width: int = 32
    hidden: int = 32
    max_steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    save_every: int = 500
    log_every: int = 100
    precision: str = "fp32"

    def validate(self) -> "IncontextRecipe":
        super().validate()
        for name in ("tasks", "max_shots", "val_tasks", "width", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.val_seed == self.seed:
            raise ConfigError("val_seed must differ from seed (validation tasks are never trained on)")
        if not self.init_from:
            raise ConfigError("init_from must name the model directory to start from")
        return self


def load_incontext_recipe(path: str | Path, overrides: list[str] | None = None) -> IncontextRecipe:
    """Read a YAML prompt-generator recipe with ``key=value`` overrides. Raises ConfigError."""
    from .training.recipe import load_recipe_as

    return load_recipe_as(IncontextRecipe, path, overrides)


@torch.no_grad()
def capture_pairs(model, seed: int, tasks: range, max_shots: int) -> dict[str, torch.Tensor]:
    """The generator's inputs of two pairs per task (1 and ``max_shots`` examples): ``maps`` (N, M, m, m) fp16,
    ``embeddings`` (N, C, h, w) fp16, ``prototype`` (N, C) fp32 and ``target`` (N, 4h, 4w) fp16 (the mask's
    coverage of SAM's low-resolution frame)."""
    from .data.incontext import make_task
    from .incontext import _word_projector, correspondence_maps, encode_features, make_example, mask_coverage
    from .incontext import prototype as pool

    img_size = model.config.sam.img_size
    colours = _word_projector(model).group_sizes[1] - 1
    out = {"maps": [], "embeddings": [], "prototype": [], "target": []}
    for index in tasks:
        task = make_task(seed, index, max_shots)
        examples = [make_example(encode_features(model, image), mask, img_size) for image, mask in task.examples]
        target = encode_features(model, task.image)
        low = 4 * target.image_embeddings.shape[-1]
        coverage = mask_coverage(task.mask, target.resized_hw, img_size, low)
        for shots in sorted({1, max_shots}):
            out["maps"].append(correspondence_maps(examples[:shots], target, colours, img_size).half().cpu())
            out["embeddings"].append(target.image_embeddings[0].half().cpu())
            out["prototype"].append(pool(examples[:shots]).float().cpu())
            out["target"].append(coverage.half())
        if (index + 1) % 500 == 0:
            logger.info("captured %d tasks of seed %d", index + 1 - tasks.start, seed)
    return {k: torch.stack(v).contiguous() for k, v in out.items()}


def map_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
             ) -> torch.Tensor:
    """The generator's loss: ``logits`` (N, m, m) upsampled bilinearly to ``target``'s (N, 4h, 4w) grid, then
    ``bce_weight`` x mean BCE + ``dice_weight`` x mean Dice (:mod:`gsva.losses`; soft targets in [0, 1])."""
    from .losses import dice_loss, sigmoid_bce_loss

    up = F.interpolate(logits[:, None].float(), target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    target = target.float()
    return bce_weight * sigmoid_bce_loss(up, target).mean() + dice_weight * dice_loss(up, target).mean()


class IncontextTrainer(StageTrainer):
    """Runs an :class:`IncontextRecipe` (see the module docstring)."""

    stage = "segment-by-example prompt generator"

    def __init__(self, recipe: IncontextRecipe) -> None:
        from .checkpoint import load_model
        from .incontext import MAP_CHANNELS
        from .modeling.example_prompts import ExamplePromptGenerator, PromptGeneratorConfig

        recipe.validate()
        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        torch.manual_seed(recipe.seed)
        self.model, _ = load_model(recipe.init_from)
        self.model.requires_grad_(False).eval()
        self.config = self.model.config
        self.net = ExamplePromptGenerator(PromptGeneratorConfig(
            embed_dim=self.config.sam.prompt_embed_dim, maps=len(MAP_CHANNELS), width=recipe.width,
            hidden=recipe.hidden, map_names=tuple(MAP_CHANNELS)))
        self._setup(recipe, list(self.net.parameters()))
        self.pairs = {}
        for split, seed, count in ((recipe.train_split, recipe.seed, recipe.tasks),
                                   (recipe.val_split, recipe.val_seed, recipe.val_tasks)):
            path = self.out / f"pairs_{split}.safetensors"
            if path.is_file():
                self.pairs[split] = load_file(str(path))
                logger.info("pairs of %s read from %s (%d)", split, path, len(self.pairs[split]["maps"]))
                continue
            logger.info("capturing the features of %d %s tasks (seed %d)", count, split, seed)
            self.pairs[split] = capture_pairs(self.model, seed, range(count), recipe.max_shots)
            tmp = path.with_suffix(".tmp")
            save_file(self.pairs[split], str(tmp))
            tmp.replace(path)

    def dataset(self, split: str, augment: bool) -> torch.utils.data.Dataset:
        return IndexDataset(len(self.pairs[split]["maps"]))

    @staticmethod
    def collate(items):
        return torch.tensor(items, dtype=torch.long)

    def batch_to_device(self, batch):
        return batch

    def _forward(self, split: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self.pairs[split]
        inputs = [pairs[k][rows].to(self.device).float() for k in ("maps", "embeddings", "prototype")]
        return self.net(*inputs), pairs["target"][rows].to(self.device)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        cfg = self.config.loss
        with self.autocast():
            logits, target = self._forward(self.recipe.train_split, rows)
        return map_loss(logits, target, cfg.bce_weight, cfg.dice_weight)

    @torch.no_grad()
    def segment_miou(self, method: str, seed: int, count: int, shots: int = 1) -> float:
        """mIoU of :func:`gsva.incontext.segment_like` on tasks ``0 .. count - 1`` of ``seed``."""
        from .data.incontext import make_task
        from .incontext import encode_features, make_example, segment_like

        img_size = self.config.sam.img_size
        ious = []
        for index in range(count):
            task = make_task(seed, index, shots)
            examples = [make_example(encode_features(self.model, image), mask, img_size)
                        for image, mask in task.examples]
            result = segment_like(self.model, examples, encode_features(self.model, task.image), method, self.net)
            union = np.logical_or(result.mask, task.mask).sum()
            ious.append(float(np.logical_and(result.mask, task.mask).sum() / union) if union else 1.0)
        return float(np.mean(ious))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        r = self.recipe
        self.net.eval()
        rows = torch.arange(len(self.pairs[r.val_split]["maps"]))
        logits, target = self._forward(r.val_split, rows)
        up = F.interpolate(logits[:, None], target.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0
        truth = target.float() > 0.5
        low_iou = ((up & truth).sum((1, 2)).float() / (up | truth).sum((1, 2)).clamp_min(1)).mean()
        out = {"map_loss": float(map_loss(logits, target)), "map_iou": float(low_iou),
               "trained_miou_1shot": self.segment_miou("trained", r.val_seed, r.val_tasks)}
        self.net.train()
        return out

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        from .modeling.example_prompts import GENERATOR_WEIGHTS, save_prompt_generator

        r = self.recipe
        self.net.eval()
        metrics = dict(metrics, training_free_miou_1shot=self.segment_miou("training_free", r.val_seed, r.val_tasks))
        final = self.out / "final"
        save_prompt_generator(self.net, final, {"init_from": r.init_from, "seed": r.seed, "tasks": r.tasks,
                                                "max_shots": r.max_shots, "steps": self.step, "val_seed": r.val_seed,
                                                "val_tasks": r.val_tasks, "val": metrics})
        (self.out / "incontext.json").write_text(json.dumps({"steps": self.step, "val": metrics}, indent=2) + "\n")
        return final / GENERATOR_WEIGHTS
