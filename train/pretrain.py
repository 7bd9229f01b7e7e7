"""Train GSVA from a YAML recipe: the script form of ``gsva train`` (:mod:`gsva.training.command`), for launchers
that take a script path (``deepspeed train/pretrain.py ...``, ``torchrun train/pretrain.py ...``).

    python train/pretrain.py --config train/configs/gsva_tiny_synth.yaml [key=value ...]
    deepspeed --num_gpus 1 train/pretrain.py --config train/configs/gsva_tiny_synth.yaml
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported (it reads the variable once)

from gsva.training.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
