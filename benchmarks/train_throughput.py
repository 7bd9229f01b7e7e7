"""Training throughput of ``gsva-tiny`` on this machine: samples per second of the training loop.

    python benchmarks/train_throughput.py [--data-root DIR] [--steps 20] [--batch-size 8] [--precision fp32|bf16]
                                          [--threads 2] [--mixture] [--gradient-checkpointing] [--json FILE]

Without ``--data-root`` a 200-image synthetic set is written to a temporary folder. The recipe is
``train/configs/gsva_tiny_synth.yaml`` (GRES only) or, with ``--mixture``, ``gsva_tiny_mixture.yaml`` (all four
families; ``--data-root`` is then the dataset_dir, by default stand-ins written by ``gsva standins``), with the given
batch size and precision; the first 3 steps are warm-up and not timed. Figures measured here are in docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gsva.training import Trainer, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mixture", action="store_true", help="the four-family mixture recipe")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="append the figure (with the device) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None and args.mixture:
            from gsva.data.standins import write_paper_standins

            root = Path(tmp) / "standins"
            write_paper_standins(root, seed=0)
        elif root is None:
            from gsva.data.synth import write_synthetic_grefcoco

            root = Path(tmp) / "synth"
            write_synthetic_grefcoco(root, seed=0, num_images=200)
        warmup = 3
        common = [f"output_dir={Path(tmp) / 'run'}", f"max_steps={args.steps + warmup}", "grad_accum=1",
                  f"batch_size={args.batch_size}", f"precision={args.precision}", "save_every=100000",
                  "num_workers=0", "tensorboard=false", f"torch_threads={args.threads}", "val_every=0",
                  f"gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
        if args.mixture:
            recipe = load_recipe(REPO / "train/configs/gsva_tiny_mixture.yaml",
                                 [f"dataset_dir={root}", f"data_root={root / 'refer_seg'}"] + common)
        else:
            recipe = load_recipe(REPO / "train/configs/gsva_tiny_synth.yaml", [f"data_root={root}"] + common)
        trainer = Trainer(recipe)
        steps = trainer.steps()
        for _ in range(warmup):
            next(steps)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(steps)
        seconds = time.perf_counter() - start
        steps.close()
    if args.json is not None:
        import json
        import platform

        rows = json.loads(args.json.read_text()) if args.json.exists() else []
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
            f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        rows.append({"device": device, "torch": torch.__version__, "model": "gsva-tiny",
                     "data": "mixture" if args.mixture else "gres", "batch_size": args.batch_size,
                     "precision": args.precision, "threads": args.threads,
                     "gradient_checkpointing": args.gradient_checkpointing, "steps_timed": args.steps,
                     "samples_per_s": round(args.steps * args.batch_size / seconds, 3),
                     "s_per_step": round(seconds / args.steps, 4)})
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    what = "four-family mixture" if args.mixture else "GRES"
    ckpt = ", gradient checkpointing" if args.gradient_checkpointing else ""
    print(f"gsva-tiny, {what}, batch {args.batch_size}, {args.precision}, {args.threads} threads{ckpt}: "
          f"{args.steps * args.batch_size / seconds:.2f} samples/s ({seconds / args.steps:.3f} s/step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
