"""Stage (a) of gsva-smol: train the vision tower on dense patch words. Usage:

    python train/pretrain_vision.py --config train/configs/gsva_smol_vision.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` when it exists. User errors exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import sys

from gsva.cli import run_stage_cli
from gsva.vision_pretrain import VisionTrainer, load_vision_recipe


def main(argv: list[str] | None = None) -> int:
    return run_stage_cli(__doc__.split("\n")[0],
                         lambda path, overrides: VisionTrainer(load_vision_recipe(path, overrides)), argv)


if __name__ == "__main__":
    sys.exit(main())
