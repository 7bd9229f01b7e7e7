"""Evaluation throughput of a model on a gRefCOCO-format split: expressions per second per protocol and batch size.

    python benchmarks/eval_throughput.py [--data-root data/synth] [--split val] [--images 40] [--model DIR]
                                         [--batch-sizes 1,2,4,8,16] [--threads 2]

Runs :func:`gsva.evaluation.run_benchmark` on the first ``--images`` images (after one warm-up image) and prints
expressions/s for ``generate`` (one question at a time) and for ``teacher-forced`` at each batch size. Figures
measured here are in the README ("Evaluation").
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gsva.evaluation import open_benchmark, run_benchmark  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = open_benchmark("grefcoco", args.data_root, args.split)
    bench.images = bench.images[:args.images + 1]
    predictor = GSVAPredictor.from_pretrained(args.model)
    n = sum(len(i.expressions) for i in bench.images[1:])
    print(f"{args.images} images, {n} expressions, {args.threads} threads")
    runs = [("generate", 1)] + [("teacher-forced", int(b)) for b in args.batch_sizes.split(",")]
    for protocol, bs in runs:
        warm = type(bench)(bench.name, bench.split, bench.images[:1], bench._source)
        run_benchmark(warm, predictor, protocol, batch_size=bs)
        timed = type(bench)(bench.name, bench.split, bench.images[1:], bench._source)
        start = time.perf_counter()
        rows = run_benchmark(timed, predictor, protocol, batch_size=bs)
        seconds = time.perf_counter() - start
        print(f"{protocol:>15}  batch {bs:>3}: {len(rows) / seconds:7.2f} expressions/s  ({seconds:.1f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
