"""Stage (c) of gsva-smol: train SAM with point and box prompts. Usage:

    python train/pretrain_sam.py --config train/configs/gsva_smol_sam.yaml [key=value ...]

Resumes from ``<output_dir>/state.pt`` when it exists. User errors exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gsva.config import ConfigError
from gsva.data.grefcoco import AnnotationError
from gsva.sam_pretrain import SamTrainer, load_sam_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        trainer = SamTrainer(load_sam_recipe(args.config, args.overrides))
    except (ConfigError, AnnotationError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = trainer.run()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
