"""Stage (e) of gsva-smol: teach SAM to refine masks from clicks by simulated interaction. Usage:

    python train/pretrain_refine.py --config train/configs/gsva_smol_refine.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` when it exists. User errors exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import sys

from gsva.cli import run_stage_cli
from gsva.refine_pretrain import RefineTrainer, load_refine_recipe


def main(argv: list[str] | None = None) -> int:
    return run_stage_cli(__doc__.split("\n")[0],
                         lambda path, overrides: RefineTrainer(load_refine_recipe(path, overrides)), argv)


if __name__ == "__main__":
    sys.exit(main())
