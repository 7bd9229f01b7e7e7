"""Evaluate a GSVA model on a gRefCOCO-format split by free generation, with the ReLA (gRefCOCO) metrics.

    python eval/evaluate.py --dataset grefcoco --data-root data/synth --split val --protocol generate \
        --out runs/eval-val [--model DIR] [--limit N]

``--data-root`` holds ``grefcoco/`` (annotations) and ``images/``. Writes ``metrics.json`` and
``predictions.jsonl`` (one line per expression, masks as COCO RLE) to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tqdm import tqdm  # noqa: E402

from gsva.data.grefcoco import GRefCOCO  # noqa: E402
from gsva.evaluation import evaluate_generate  # noqa: E402
from gsva.inference import GSVAPredictor, default_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["grefcoco"], default="grefcoco")
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: shipped gsva-tiny)")
    parser.add_argument("--protocol", choices=["generate"], default="generate")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    gref = GRefCOCO(args.data_root / "grefcoco", args.data_root / "images")
    predictor = GSVAPredictor.from_pretrained(args.model)
    start = time.time()
    metrics, rows = evaluate_generate(predictor, gref, args.split, args.limit,
                                      progress=lambda it: tqdm(it, desc=f"{args.dataset}/{args.split}"))
    metrics.update({"dataset": args.dataset, "split": args.split, "protocol": args.protocol, "scorer": "rela",
                    "prompt_mode": "per-expression", "model": str(args.model or default_model_dir()),
                    "seconds": round(time.time() - start, 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(args.out / "predictions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row.to_json()) + "\n")
    for key in ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"):
        value = metrics[key]
        print(f"{key:>8}: " + ("   n/a" if value is None else f"{100 * value:6.2f}"))
    print(f"expressions {metrics['num_expressions']} (no-target {metrics['num_no_target']}), slots missing "
          f"{metrics['slots_missing']}, extra {metrics['slots_extra']}; {metrics['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
