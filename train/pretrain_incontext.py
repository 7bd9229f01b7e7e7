"""Segment by example: train gsva-smol's prompt generator on generated example/target pairs. Usage:

    python train/pretrain_incontext.py --config train/configs/gsva_smol_incontext.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` when it exists. User errors exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import sys

from gsva.cli import run_stage_cli
from gsva.incontext_pretrain import IncontextTrainer, load_incontext_recipe


def main(argv: list[str] | None = None) -> int:
    return run_stage_cli(__doc__.split("\n")[0],
                         lambda path, overrides: IncontextTrainer(load_incontext_recipe(path, overrides)), argv)


if __name__ == "__main__":
    sys.exit(main())
