"""Printing and writing evaluation results (shared by ``gsva eval`` and ``gsva score``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ..scoring import ScoredSample
from ..scoring.calibration import calibrate, plot_calibration

__all__ = ["format_table", "write_predictions", "write_calibration"]

logger = logging.getLogger(__name__)

COUNT_KEYS = ("num_expressions", "num_no_target", "num_target")


def format_table(scorers: dict[str, dict]) -> str:
    """One line per scorer: its metrics ×100 with two decimals (``n/a`` when undefined), then its counts."""
    lines = []
    for name, result in scorers.items():
        cells = [f"{k} {'n/a' if v is None else f'{100 * v:.2f}'}" for k, v in result.items() if k not in COUNT_KEYS]
        counts = ", ".join(f"{k[4:]} {result[k]}" for k in COUNT_KEYS if k in result)
        lines.append(f"{name:>5}: " + "  ".join(cells) + f"   ({counts})")
    return "\n".join(lines)


def write_predictions(rows: list[dict], path: Path) -> None:
    """Write rows as ``predictions.jsonl`` (one JSON object per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_calibration(samples: Iterable[ScoredSample], out_dir: Path, title: str = "") -> dict:
    """Sweep the reject threshold (:func:`gsva.scoring.calibration.calibrate`) and write ``calibration.json`` and
    ``calibration.png`` (the plot is skipped, with a warning, when matplotlib is not installed). Returns the table."""
    table = calibrate(samples)
    (out_dir / "calibration.json").write_text(json.dumps(table, indent=1) + "\n")
    try:
        plot_calibration(table, out_dir / "calibration.png", title)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install '.[eval]'): calibration.png not written")
    return table
