"""Evaluate a GSVA model on a referring-segmentation benchmark: the script form of ``gsva eval``
(:mod:`gsva.evaluation.command`), for launchers that take a script path.

    python eval/evaluate.py --dataset grefcoco --data-root data/synth --split val --out runs/eval
    torchrun --nproc_per_node N eval/evaluate.py ...      # shards images over N processes, same output
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported (it reads the variable once)

from gsva.evaluation.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
