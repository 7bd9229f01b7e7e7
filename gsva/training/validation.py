"""Validation during training, and keeping the best checkpoint.

Every ``val_every`` optimizer steps the first ``val_limit`` images of ``val_split`` of ``val_dataset`` are evaluated
with ``val_protocol`` (:func:`gsva.evaluation.run_benchmark`) and scored by the scorer of ``best_metric``
("<scorer>.<metric>", e.g. "rela.gIoU": :mod:`gsva.scoring`); the checkpoint where that metric is highest is kept
in ``checkpoints/best`` (:meth:`gsva.training.checkpointer.Checkpointer.keep_if_best`).
"""

from __future__ import annotations

import logging

import torch

from ..config import ConfigError
from .recipe import TrainRecipe

__all__ = ["Validator"]

logger = logging.getLogger(__name__)


class Validator:
    """Evaluates a model on the recipe's validation split. Built at trainer setup, so that a recipe naming an
    unknown dataset or scorer fails before any training: raises ConfigError. The benchmark is opened at the first
    validation (rank 0 only)."""

    def __init__(self, recipe: TrainRecipe) -> None:
        from ..evaluation.benchmarks import DATASETS
        from ..scoring import SCORERS

        if recipe.val_dataset not in DATASETS:
            raise ConfigError(f"val_dataset must be one of {', '.join(DATASETS)}, got {recipe.val_dataset!r}")
        self.scorer, self.metric = recipe.best_metric.split(".")
        if self.scorer not in SCORERS:
            raise ConfigError(f"best_metric {recipe.best_metric!r}: unknown scorer; known: {', '.join(SCORERS)}")
        self.recipe = recipe
        self._benchmark = None

    def due(self, step: int) -> bool:
        """Whether validation runs after optimizer step ``step`` (1-based): every ``val_every`` and the last."""
        r = self.recipe
        return bool(r.val_every) and (step % r.val_every == 0 or step == r.max_steps)

    def run(self, model, tokenizer) -> dict:
        """``{scorer: {metric: value}}`` of the current weights (:func:`gsva.evaluation.summarize`); the model's
        training mode is restored after."""
        from ..evaluation import open_benchmark, run_benchmark, summarize
        from ..inference import GSVAPredictor

        r = self.recipe
        if self._benchmark is None:
            self._benchmark = open_benchmark(r.val_dataset, r.data_root, r.val_split, r.image_root)
        was_training = model.training
        try:
            predictor = GSVAPredictor(model, tokenizer)
            with torch.no_grad():
                rows = run_benchmark(self._benchmark, predictor, r.val_protocol, limit=r.val_limit,
                                     batch_size=8 if r.val_protocol == "teacher-forced" else 1)
            return summarize(rows, r.val_dataset, (self.scorer,))["scorers"]
        finally:
            model.train(was_training)

    def value(self, results: dict) -> float | None:
        """The ``best_metric`` value in ``results`` (None when the scorer could not compute it, e.g. no target).
        Raises ConfigError when the scorer does not report that metric."""
        metrics = results.get(self.scorer, {})
        if self.metric not in metrics:
            raise ConfigError(f"best_metric {self.recipe.best_metric!r}: {self.scorer} reports {', '.join(metrics)}")
        return metrics[self.metric]

    def log(self, step: int, results: dict) -> None:
        r = self.recipe
        logger.info("step %d validation (%s %s, %s, %s images), %s: %s", step, r.val_dataset, r.val_split,
                    r.val_protocol, r.val_limit or "all", self.scorer,
                    ", ".join(f"{k} {v:.4f}" for k, v in results[self.scorer].items() if isinstance(v, float)))
