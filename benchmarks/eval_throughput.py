"""Evaluation throughput of a model on a gRefCOCO-format split: expressions per second per protocol and batch size.

    python benchmarks/eval_throughput.py [--data-root data/synth] [--split val] [--images 40] [--model DIR]
                                         [--protocols generate,teacher-forced] [--batch-sizes 1,4,8,16]
                                         [--threads 2] [--dtype fp32|bf16] [--json OUT]

Runs :func:`gsva.evaluation.run_benchmark` on the first ``--images`` images (after one warm-up image) for each
protocol at each batch size (batch 1 of ``generate`` is one question at a time) and prints expressions/s. Every
batch size must give the rows of batch 1 (``identical``: the same answers, decisions and masks, slot scores within
1e-4; the figure is meaningless otherwise). Target (issue #18): generate at the best batch size >= 3x batch 1, on
2 CPU cores, the shipped default. Figures measured here are in the README ("Evaluation").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gsva.evaluation import open_benchmark, run_benchmark  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402


def same_rows(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    """The rows agree in everything; scores (slot probabilities) within ``tol``."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if {k: v for k, v in x.items() if k != "score"} != {k: v for k, v in y.items() if k != "score"}:
            return False
        if (x["score"] is None) != (y["score"] is None) or (x["score"] is not None
                                                            and abs(x["score"] - y["score"]) > tol):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--protocols", default="generate,teacher-forced")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = open_benchmark("grefcoco", args.data_root, args.split)
    bench.images = bench.images[:args.images + 1]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=dtype)
    n = sum(len(i.expressions) for i in bench.images[1:])
    print(f"{args.images} images, {n} expressions, {args.threads} threads, {args.dtype}")
    sizes = sorted({1, *(int(b) for b in args.batch_sizes.split(","))})
    warm = type(bench)(bench.name, bench.split, bench.images[:1], bench._source)
    timed = type(bench)(bench.name, bench.split, bench.images[1:], bench._source)
    results = {}
    for protocol in args.protocols.split(","):
        reference, results[protocol] = None, {}
        for bs in sizes:
            run_benchmark(warm, predictor, protocol, batch_size=bs)
            start = time.perf_counter()
            rows = run_benchmark(timed, predictor, protocol, batch_size=bs)
            seconds = time.perf_counter() - start
            reference = reference or rows
            identical = same_rows(reference, rows)
            results[protocol][bs] = {"expressions_per_s": len(rows) / seconds, "seconds": seconds,
                                     "identical_to_batch_1": identical}
            print(f"{protocol:>15}  batch {bs:>3}: {len(rows) / seconds:7.2f} expressions/s  ({seconds:.1f} s)"
                  f"{'' if identical else '  PREDICTIONS DIFFER FROM BATCH 1'}", flush=True)
        best = max(results[protocol], key=lambda b: results[protocol][b]["expressions_per_s"])
        speedup = results[protocol][best]["expressions_per_s"] / results[protocol][1]["expressions_per_s"]
        print(f"{protocol:>15}  best batch {best}: {speedup:.2f}x batch 1")
        results[protocol]["best"] = {"batch_size": best, "speedup_over_batch_1": speedup}
    if args.json:
        args.json.write_text(json.dumps({
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "model": str(args.model or "shipped default"), "dtype": args.dtype, "images": args.images,
            "expressions": n, "data_root": str(args.data_root), "split": args.split, "results": results,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
