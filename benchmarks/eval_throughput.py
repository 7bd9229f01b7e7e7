"""Evaluation throughput of a model on a gRefCOCO-format split: expressions per second per protocol and batch size.

    python benchmarks/eval_throughput.py [--data-root data/synth] [--split val] [--images 40] [--model DIR]
                                         [--protocols generate,teacher-forced] [--batch-sizes 1,4,8,16]
                                         [--threads 2] [--dtype fp32|bf16] [--repeats 1] [--json OUT]

Runs :func:`gsva.evaluation.run_benchmark` on the first ``--images`` images (after one warm-up image) for each
protocol at each batch size (batch 1 of ``generate`` is one question at a time) and prints expressions/s, from the
fastest of ``--repeats`` timed rounds (each round runs every batch size once, so a ratio of one round compares runs
under the same machine load; the fastest run is the least disturbed by other work on a shared machine). Every
batch size must give the rows of batch 1 (``identical``: the same answers, decisions and masks, slot scores within
1e-4); where they differ, ``differences_from_batch_1`` counts how (bf16 rounds differently in batched kernels). Target (issue #18): generate at the best batch size >= 3x batch 1, on
2 CPU cores, the shipped default. Figures measured here are in docs/benchmarks.md.
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


def row_differences(a: list[dict], b: list[dict], tol: float = 1e-4) -> dict:
    """How the rows ``b`` differ from ``a`` (same expressions in the same order): rows whose answer text or
    [SEG]/[REJ] decision differs, rows whose predicted mask differs (and the lowest mask IoU among them), rows whose
    slot score differs by more than ``tol``, and the largest score difference."""
    from gsva.scoring import sample_from_row

    assert [x["id"] for x in a] == [y["id"] for y in b]
    answers = sum(x["answer"] != y["answer"] for x, y in zip(a, b))
    decisions = sum(x["pred_reject"] != y["pred_reject"] for x, y in zip(a, b))
    ious = []
    for x, y in zip(a, b):
        if x["pred_mask"] != y["pred_mask"]:
            m, n = sample_from_row(x).pred, sample_from_row(y).pred
            ious.append(float((m & n).sum() / max((m | n).sum(), 1)))
    gaps = [abs(x["score"] - y["score"]) for x, y in zip(a, b) if x["score"] is not None and y["score"] is not None]
    return {"answers": answers, "decisions": decisions, "masks": len(ious),
            "lowest_mask_iou": min(ious) if ious else None, "scores": sum(g > tol for g in gaps),
            "largest_score_gap": max(gaps) if gaps else 0.0,
            "missing_scores": sum((x["score"] is None) != (y["score"] is None) for x, y in zip(a, b))}


def identical(diff: dict) -> bool:
    return not (diff["answers"] or diff["decisions"] or diff["masks"] or diff["scores"] or diff["missing_scores"])


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
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per batch size; the fastest counts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
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
        for bs in sizes:
            run_benchmark(warm, predictor, protocol, batch_size=bs)
        reference, runs, diffs = None, {bs: [] for bs in sizes}, {}
        for round_ in range(args.repeats):  # rounds of every batch size: each round sees the same machine load
            for bs in sizes:
                predictor._first_turns.clear()  # every run tokenises its questions itself
                start = time.perf_counter()
                rows = run_benchmark(timed, predictor, protocol, batch_size=bs)
                runs[bs].append(time.perf_counter() - start)
                reference = reference or rows
                diff = row_differences(reference, rows)
                if bs not in diffs or not identical(diff):
                    diffs[bs] = diff
                print(f"{protocol:>15}  round {round_ + 1} batch {bs:>3}: {len(rows) / runs[bs][-1]:7.2f} "
                      f"expressions/s  ({runs[bs][-1]:.1f} s)"
                      f"{'' if identical(diff) else '  DIFFERENT FROM BATCH 1: ' + json.dumps(diff)}", flush=True)
        results[protocol] = {}
        for bs in sizes:
            seconds = min(runs[bs])
            results[protocol][bs] = {"expressions_per_s": len(rows) / seconds, "seconds": seconds,
                                     "all_runs_seconds": runs[bs], "identical_to_batch_1": identical(diffs[bs]),
                                     "differences_from_batch_1": diffs[bs]}
        best = max(sizes, key=lambda b: results[protocol][b]["expressions_per_s"])
        speedup = results[protocol][best]["expressions_per_s"] / results[protocol][1]["expressions_per_s"]
        per_round = [runs[1][k] / runs[best][k] for k in range(args.repeats)]
        print(f"{protocol:>15}  best batch {best}: {speedup:.2f}x batch 1 (fastest runs; per round: "
              f"{', '.join(f'{x:.2f}x' for x in per_round)})")
        results[protocol]["best"] = {"batch_size": best, "speedup_over_batch_1": speedup,
                                     "speedup_per_round": per_round}
    if args.json:
        args.json.write_text(json.dumps({
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "model": str(args.model or "shipped default"), "dtype": args.dtype, "images": args.images,
            "expressions": n, "data_root": str(args.data_root), "split": args.split, "repeats": args.repeats,
            "results": results,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
