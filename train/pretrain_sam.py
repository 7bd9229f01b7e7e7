"""Stage (c) of gsva-smol: train SAM with point and box prompts. Usage:

    python train/pretrain_sam.py --config train/configs/gsva_smol_sam.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` when it exists. User errors exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import sys

from gsva.cli import run_stage_cli
from gsva.sam_pretrain import SamTrainer, load_sam_recipe


def main(argv: list[str] | None = None) -> int:
    return run_stage_cli(__doc__.split("\n")[0],
                         lambda path, overrides: SamTrainer(load_sam_recipe(path, overrides)), argv)


if __name__ == "__main__":
    sys.exit(main())
