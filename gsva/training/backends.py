"""How an optimizer step is taken: plain PyTorch on one device, or a DeepSpeed ZeRO engine.

Both backends get the same AdamW and the same ``LambdaLR`` (:mod:`gsva.training.schedule`); DeepSpeed receives them
as its client optimizer and scheduler, so both paths train the same way. Per micro-batch the trainer calls
:meth:`forward` and :meth:`micro_step`; per optimizer step :meth:`end_step`. A micro-batch whose loss is not finite
on some process (``finite`` False, agreed by all ranks) must not change the weights:

* plain PyTorch skips its backward and, when any micro-batch of the step was bad, the whole update;
* DeepSpeed cannot drop a step, so the bad micro-batch contributes a zero gradient instead (on every rank, so they
  all run the same backward graph); under ZeRO-3 that is impossible too, and the run stops with an error.

Saved optimizer state: ``optimizer.pt`` in the step checkpoint (plain: optimizer and scheduler, tensors and numbers
only, read back with ``torch.load(weights_only=True)``) or ``deepspeed/`` (DeepSpeed's own ZeRO checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from ..config import ConfigError
from ..devices import autocast_for
from ..distributed import barrier
from .recipe import TrainRecipe

__all__ = ["PlainBackend", "DeepSpeedBackend"]

logger = logging.getLogger(__name__)


class PlainBackend:
    """Plain PyTorch: gradient accumulation over ``grad_accum`` micro-batches, clipping at ``grad_clip``, one
    optimizer and scheduler step per optimizer step. ``precision: bf16`` autocasts for the model's device type."""

    state_name = "optimizer.pt"
    skip_note = "update skipped"

    def __init__(self, model, optimizer: torch.optim.Optimizer, scheduler, recipe: TrainRecipe) -> None:
        self.model, self.optimizer, self.scheduler, self.recipe = model, optimizer, scheduler, recipe
        self.zero_stage = 0

    def autocast(self):
        return autocast_for(self.model.device, self.recipe.precision)

    def forward(self, batch):
        return self.model(batch)

    def micro_step(self, loss: torch.Tensor, finite: bool, step: int) -> None:
        if finite:
            (loss / self.recipe.grad_accum).backward()

    def end_step(self, bad: bool) -> None:
        if not bad:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.recipe.grad_clip)
            self.optimizer.step()
        self.scheduler.step()  # the schedule follows the step count, skipped steps included
        self.optimizer.zero_grad(set_to_none=True)

    def gathered_state_dict(self) -> dict | None:
        """None: the module holds its full weights."""
        return None

    def save_state(self, ckpt: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       ckpt / self.state_name)

    def restore(self, ckpt: Path) -> bool:
        """Load the optimizer and scheduler state of ``ckpt``; False (with a warning) when it has none."""
        path = ckpt / self.state_name
        if not path.exists():
            logger.warning("%s has no optimizer state: AdamW moments restart from zero", ckpt)
            return False
        state = torch.load(path, weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return True


class DeepSpeedBackend:
    """A DeepSpeed engine built from ``recipe.deepspeed_config``, with the recipe's micro-batch size, accumulation,
    clipping and bf16 setting written over the file's. DeepSpeed places the model on its accelerator and runs bf16
    itself. Raises ConfigError for ZeRO-3 with validation during training (validation needs the whole model in one
    process)."""

    state_name = "deepspeed"
    skip_note = "its micro-batch contributed a zero gradient"

    def __init__(self, model, optimizer: torch.optim.Optimizer, scheduler, recipe: TrainRecipe, world: int) -> None:
        import deepspeed

        ds_config = json.loads(Path(recipe.deepspeed_config).read_text())
        ds_config.update({
            "train_micro_batch_size_per_gpu": recipe.batch_size,
            "gradient_accumulation_steps": recipe.grad_accum,
            "gradient_clipping": recipe.grad_clip,
            "bf16": {"enabled": recipe.precision == "bf16"},
            "zero_force_ds_cpu_optimizer": False,
        })
        ds_config.pop("train_batch_size", None)
        if ds_config.get("zero_optimization", {}).get("stage") == 3 and recipe.val_every:
            raise ConfigError("validation during training needs the whole model on one process, which ZeRO-3 "
                              "partitions: set val_every: 0 and evaluate the saved checkpoints with "
                              "`gsva eval`, or use ds_configs/zero2_offload.json")
        self.model, self.recipe, self.world = model, recipe, world
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.zero_stage = self.engine.zero_optimization_stage()

    def autocast(self):
        return contextlib.nullcontext()

    def forward(self, batch):
        return self.engine(batch)

    def micro_step(self, loss: torch.Tensor, finite: bool, step: int) -> None:
        if not finite and self.zero_stage == 3:
            raise RuntimeError(f"non-finite loss at step {step}: with ZeRO-3 a bad step cannot be skipped "
                               "(parameters are partitioned); the run stops and resumes from its last checkpoint. "
                               "Lower the learning rate, use fp32, or check the data")
        self.engine.backward(loss if finite else self._zero_loss())
        self.engine.step()  # DeepSpeed steps the optimizer and scheduler at the accumulation boundary

    def end_step(self, bad: bool) -> None:
        pass

    def _zero_loss(self) -> torch.Tensor:
        """A finite zero loss touching every trainable parameter (its gradient is zero everywhere)."""
        return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0

    def gathered_state_dict(self) -> dict | None:
        """ZeRO-3: the whole model's weights gathered from every rank's partition (collective; complete on rank 0
        only). Otherwise None: each process holds the full weights."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None

    def save_state(self, ckpt: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(ckpt / self.state_name), tag="state")  # collective
        barrier(self.world)

    def restore(self, ckpt: Path) -> bool:
        """Load DeepSpeed's checkpoint of ``ckpt`` (model, optimizer, scheduler); False when it has none. Raises
        RuntimeError when DeepSpeed cannot read it."""
        path = ckpt / self.state_name
        if not path.exists():
            logger.warning("%s has no DeepSpeed state: AdamW moments restart from zero", ckpt)
            return False
        loaded, _ = self.engine.load_checkpoint(str(path), load_module_strict=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load its checkpoint from {path}")
        return True
