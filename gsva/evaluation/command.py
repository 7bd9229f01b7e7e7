"""``gsva eval``: evaluate a GSVA model on a referring-segmentation benchmark (also ``python eval/evaluate.py``).

    gsva eval --dataset grefcoco|refzom|reasonseg|refcoco|refcoco+|refcocog|refclef|custom \
        --data-root DIR --split SPLIT --out DIR [--model DIR] [--protocol generate|teacher-forced|both] \
        [--prompt-mode per-expression|per-image] [--prompt-style ours|official] [--batch-size B] [--limit N] \
        [--scorers rela,gsva,...] [--dmmi-resize 480] [--image-root DIR] [--refs-file NAME]

    torchrun --nproc_per_node N eval/evaluate.py ...      # shards images over N processes, same output

Bad data or model files end with one ``error: ...`` line (naming the file) and status 2.

Folder layouts: :mod:`gsva.evaluation.benchmarks`; protocols: :mod:`gsva.evaluation.protocols`; scorers:
:mod:`gsva.scoring`. Writes to ``--out``: ``metrics.json`` (dataset, split, protocol, prompt mode/style, model,
scorers and counts), ``predictions.jsonl`` (one line per expression, masks as COCO RLE) and ``calibration.json`` /
``calibration.png`` (metrics against the reject threshold); prints a table. ``gsva score --predictions
OUT/predictions.jsonl`` recomputes the same numbers from the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _gather(rows: list[dict], rank: int, world: int) -> list[dict] | None:
    """All shards' rows on rank 0, restored to benchmark order (shard r holds images r, r + world, ...)."""
    from ..distributed import gather_objects

    if world == 1:
        return rows
    shards = gather_objects(rows, world)
    if rank != 0:
        return None
    by_image: list[list[list[dict]]] = []
    for shard in shards:
        groups: list[list[dict]] = []
        for row in shard:
            if not groups or groups[-1][-1]["image_id"] != row["image_id"]:
                groups.append([])
            groups[-1].append(row)
        by_image.append(groups)
    ordered = []
    for i in range(max(len(g) for g in by_image)):
        for groups in by_image:
            if i < len(groups):
                ordered.extend(groups[i])
    return ordered


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and evaluate; 0 on success, 2 on a user error (one ``error:`` line)."""
    from ..errors import report_user_errors

    parser = _parser()
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _evaluate(parser, args))


def _parser() -> argparse.ArgumentParser:
    import torch

    from ..evaluation import DATASETS, PROMPT_MODES, PROMPT_STYLES, PROTOCOLS
    from ..scoring import SCORERS

    parser = argparse.ArgumentParser(prog="gsva eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: the shipped gsva-smol)")
    parser.add_argument("--protocol", choices=PROTOCOLS + ("both",), default="generate",
                        help="'both' runs generate then teacher-forced, writing OUT/generate and OUT/teacher-forced")
    parser.add_argument("--prompt-mode", choices=PROMPT_MODES, default="per-expression")
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default="ours",
                        help="'official' reproduces GSVA's validation strings exactly")
    parser.add_argument("--batch-size", type=int, default=1, help="questions decoded together (generate) or "
                        "conversations per forward (teacher-forced); the predictions do not depend on it")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (N >= 1)")
    parser.add_argument("--scorers", default=None, help=f"comma-separated from {', '.join(SCORERS)} "
                        "(default: the dataset's)")
    parser.add_argument("--dmmi-resize", type=int, default=None, help="DMMI scoring size (official Ref-ZOM: 480)")
    parser.add_argument("--image-root", type=Path, default=None)
    parser.add_argument("--refs-file", default=None, help="refs file name, e.g. 'refs(google).p'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    return parser


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from ..distributed import init_process_group
    from ..evaluation import PROTOCOLS, open_benchmark
    from ..inference import GSVAPredictor
    from ..scoring import DEFAULT_SCORERS, SCORERS

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a harmless notice about optional kernels
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    scorers = tuple(args.scorers.split(",")) if args.scorers else DEFAULT_SCORERS[args.dataset]
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:
        parser.error(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(SCORERS)}")
    rank, world = init_process_group()
    device = args.device if world == 1 or args.device == "cpu" else f"cuda:{torch.cuda.current_device()}"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    benchmark = open_benchmark(args.dataset, args.data_root, args.split, args.image_root, args.refs_file)
    predictor = GSVAPredictor.from_pretrained(args.model, device=device, dtype=dtype)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    for protocol in protocols:
        out = args.out / protocol if args.protocol == "both" else args.out
        _run_one(args, benchmark, predictor, protocol, scorers, out, rank, world)
    return 0


def _run_one(args, benchmark, predictor, protocol: str, scorers: tuple[str, ...], out: Path, rank: int,
             world: int) -> None:
    """Evaluate one protocol; rank 0 writes ``out`` and prints the table."""
    from tqdm import tqdm

    from ..evaluation import run_benchmark, summarize
    from ..evaluation.report import format_table, write_calibration, write_predictions
    from ..inference import default_model_dir
    from ..scoring import sample_from_row

    start = time.time()
    batch_size = args.batch_size
    rows = run_benchmark(benchmark, predictor, protocol, args.prompt_mode, args.prompt_style, batch_size,
                         args.limit, shard=(rank, world),
                         progress=lambda it: tqdm(it, desc=f"{args.dataset}/{args.split} {protocol}",
                                                  disable=rank != 0))
    seconds = time.time() - start
    rows = _gather(rows, rank, world)
    if rows is None:
        return
    metrics = summarize(rows, args.dataset, scorers, args.dmmi_resize)
    metrics.update({"dataset": args.dataset, "split": args.split, "protocol": protocol,
                    "prompt_mode": args.prompt_mode, "prompt_style": args.prompt_style,
                    "model": str(args.model or default_model_dir()), "dmmi_resize": args.dmmi_resize,
                    "batch_size": batch_size, "world_size": world, "limit": args.limit, "dtype": args.dtype,
                    "seconds": round(seconds, 1),
                    "expressions_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None})
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(rows, out / "predictions.jsonl")
    table = write_calibration((sample_from_row(r) for r in rows), out, f"{args.dataset} {args.split}, {protocol}")
    metrics["calibration"] = {"best_threshold": table["best"]["threshold"], "best_gIoU": table["best"]["gIoU"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    sys.stdout.write(f"{args.dataset}/{args.split}, protocol {protocol}, {args.prompt_mode} prompts "
                     f"({args.prompt_style}) -> {out}\n")
    sys.stdout.write(format_table(metrics["scorers"]) + "\n")
    s = metrics["slots"]
    sys.stdout.write(f"images {metrics['num_images']}, expressions {metrics['num_expressions']}; slots ok {s['ok']}, "
                     f"missing {s['missing']}, extra {s['extra']}; reject threshold maximising gIoU (rela): "
                     f"{table['best']['threshold']:.2f} (gIoU {100 * table['best']['gIoU']:.2f}); "
                     f"{metrics['seconds']} s\n")
