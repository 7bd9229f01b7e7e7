"""Learning-rate schedule: linear warm-up, then linear decay to 0.

This is DeepSpeed's ``WarmupDecayLR`` with ``warmup_type: linear`` and ``warmup_min_lr: 0``, the scheduler of the
official GSVA training (github.com/LeapLabTHU/GSVA at 618dc79, ``main.py``), except that step 0 already trains at
``1 / warmup_steps`` of the peak rate instead of 0. The same function drives the plain-PyTorch and the DeepSpeed paths
(DeepSpeed receives the ``LambdaLR`` as its client scheduler) and the single-module pretraining stages.
"""

from __future__ import annotations

import torch

__all__ = ["lr_multiplier", "warmup_linear_decay"]


def lr_multiplier(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during the warm-up, then ``1 - (step - warmup_steps) / (max_steps - warmup_steps)``,
    floored at 0 (so 0 from ``max_steps`` on). Range [0, 1].
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / span)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                        offset: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_multiplier`; ``offset`` starts the schedule at that step (a run resumed without
    its scheduler state continues at the learning rate of the step it resumes at)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s + offset, warmup_steps, max_steps))
