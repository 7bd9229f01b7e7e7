"""Training metrics to TensorBoard (and optionally Weights & Biases), rank 0 only.

Scalars: ``train/loss``, ``train/ce``, ``train/mask_bce``, ``train/mask_dice``, ``train/point_mask``,
``train/pointer``, ``train/lr``, ``train/num_masks``, ``train/skipped`` per optimizer step, and
``val/<scorer>/<metric>`` per validation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError

__all__ = ["MetricsLogger"]


class MetricsLogger:
    """Write step logs and validation results. ``log_dir`` None disables TensorBoard; ``wandb_project`` None
    disables W&B. Raises :class:`gsva.config.ConfigError` naming the missing package when a requested backend is not
    installed."""

    def __init__(self, log_dir: str | Path | None, wandb_project: str | None = None, config: dict | None = None):
        self.writer = None
        self.wandb = None
        if log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("TensorBoard logging needs the tensorboard package (pip install '.[train]'), "
                                   "or set tensorboard: false in the recipe") from None
            self.writer = SummaryWriter(str(log_dir))
        if wandb_project is not None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("wandb_project is set but wandb is not installed (pip install wandb)") from None
            self.wandb = wandb.init(project=wandb_project, config=config or {})

    def step(self, log) -> None:
        """Log one :class:`gsva.training.trainer.StepLog`, and its validation results when it has them."""
        values = {f"train/{k}": float(v) for k, v in dataclasses.asdict(log).items()
                  if k not in ("step", "validation")}
        self._write(values, log.step)
        if log.validation is not None:
            self.validation(log.step, log.validation)

    def validation(self, step: int, results: dict) -> None:
        """Log ``{scorer: {metric: value}}``; None and count entries are skipped."""
        values = {f"val/{scorer}/{k}": float(v) for scorer, metrics in results.items() for k, v in metrics.items()
                  if isinstance(v, float)}
        self._write(values, step)

    def _write(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
