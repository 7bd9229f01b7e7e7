"""Stage (d6) of gsva-smol: train the object pointer's slot relations on the frozen stage-(d5) model. Usage:

    python train/pretrain_pointer.py --config train/configs/gsva_smol_pointer.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` (and the captured inputs) when they exist. User errors exit 2 with one
``error:`` line.
"""

from __future__ import annotations

import sys

from gsva.cli import run_stage_cli
from gsva.pointer_relations import PointerTrainer, load_pointer_recipe


def main(argv: list[str] | None = None) -> int:
    return run_stage_cli(__doc__.split("\n")[0],
                         lambda path, overrides: PointerTrainer(load_pointer_recipe(path, overrides)), argv)


if __name__ == "__main__":
    sys.exit(main())
