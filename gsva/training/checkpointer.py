"""Training checkpoints: step checkpoints with rotation, the best one by a validation metric, the final model.

Layout under ``output_dir``::

    checkpoints/step_XXXXXXX/   model in our format (gsva.checkpoint), optimizer.pt (plain PyTorch: optimizer and
                                scheduler state, tensors and numbers only), deepspeed/ (DeepSpeed: its ZeRO
                                checkpoint), trainer_state.json (written last, atomically: marks it complete)
    checkpoints/best/           model + trainer_state.json {"step", "metric", "value", "validation"}
    final/                      model

A checkpoint without ``trainer_state.json`` is incomplete (a run killed while writing it) and is never resumed from.
Rank 0 writes files; collective parts (gathering ZeRO-3 weights, DeepSpeed's own save) are the caller's
(:mod:`gsva.training.backends`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..checkpoint import save_model

__all__ = ["Checkpointer", "latest_checkpoint", "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step_*`` directory (one with ``trainer_state.json``), or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if re.fullmatch(r"step_\d{7}", p.name) and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: p.name) if done else None


class Checkpointer:
    """Writes the checkpoints of one run. ``keep_last``: step checkpoints kept (older ones are deleted once a newer
    one is complete)."""

    def __init__(self, output_dir: str | Path, keep_last: int) -> None:
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last

    def step_dir(self, step: int) -> Path:
        return self.output_dir / "checkpoints" / f"step_{step:07d}"

    def latest(self) -> Path | None:
        return latest_checkpoint(self.output_dir)

    @staticmethod
    def resumed_step(ckpt: Path) -> int:
        """The optimizer step a complete checkpoint was written after."""
        return int(json.loads((ckpt / "trainer_state.json").read_text())["step"])

    def write_model(self, ckpt: Path, model, tokenizer, state_dict: dict | None = None) -> None:
        """The model in our format (``state_dict``: gathered ZeRO-3 weights instead of the module's own)."""
        save_model(model, tokenizer, ckpt, state_dict=state_dict)

    def complete(self, ckpt: Path, step: int, recipe: dict) -> None:
        """Mark ``ckpt`` complete (``trainer_state.json``: the step and the recipe) and drop old step checkpoints."""
        write_atomic(ckpt / "trainer_state.json", json.dumps({"step": step, "recipe": recipe}, indent=2))
        for old in sorted((self.output_dir / "checkpoints").glob("step_*"))[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def best_value(self) -> float | None:
        """The metric value of ``checkpoints/best``, or None when there is none yet."""
        state = self.output_dir / "checkpoints" / "best" / "trainer_state.json"
        return json.loads(state.read_text())["value"] if state.exists() else None

    def keep_if_best(self, model, tokenizer, step: int, metric: str, value: float | None, results: dict) -> bool:
        """Write ``checkpoints/best`` when ``value`` beats the stored best (higher is better; None never does).
        The state file goes in with the weights: a crash leaves the old best or the complete new one."""
        previous = self.best_value()
        if value is None or (previous is not None and not value > previous):  # NaN never becomes the best
            return False
        save_model(model, tokenizer, self.output_dir / "checkpoints" / "best", extra_files={
            "trainer_state.json": json.dumps({"step": step, "metric": metric, "value": value,
                                              "validation": results}, indent=2)})
        return True

    def final_dir(self) -> Path:
        return self.output_dir / "final"
