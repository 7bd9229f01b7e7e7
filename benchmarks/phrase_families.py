"""Where an evaluation's masks go wrong, per phrase family of the synthetic generator.

Reads the ``predictions.jsonl`` that ``gsva eval`` writes and prints, per family
(:func:`gsva.pointer_relations.phrase_family`: attribute, position, ordinal, relation, plural), the target
expressions' count, how many masks are good (IoU > 0.7), partial (0 < IoU <= 0.7), on a wrong object (IoU 0 with a
non-empty mask) or rejected/empty, and the family's cIoU (its summed intersection over its summed union, ReLA's
definition restricted to the family's target expressions); no-target expressions are counted as rejected or not.

    gsva eval --dataset grefcoco --data-root data/synth_fresh --split val --protocol generate --out runs/eval
    python benchmarks/phrase_families.py runs/eval/predictions.jsonl --json benchmarks/results_families.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from gsva.pointer_relations import FAMILIES, phrase_family


def family_figures(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per family (and ``all``): counts of good / partial / wrong_object / rejected target expressions,
    no_target_rejected / no_target_accepted, and ``cIoU`` over the family's target expressions (None if none)."""
    out = {f: defaultdict(float) for f in ("all",) + FAMILIES}
    for r in rows:
        for f in ("all", phrase_family(r["sentence"])):
            fig = out[f]
            if r["gt_empty"]:
                fig["no_target_rejected" if r["pred_reject"] else "no_target_accepted"] += 1
                continue
            gt = mask_utils.decode(r["gt_mask"]).astype(bool)
            pred = np.zeros_like(gt) if r["pred_reject"] or not r.get("pred_mask") else \
                mask_utils.decode(r["pred_mask"]).astype(bool)
            inter, union = int((gt & pred).sum()), int((gt | pred).sum())
            fig["intersection"] += inter
            fig["union"] += union
            iou = inter / union if union else 1.0
            kind = "rejected" if not pred.any() else "good" if iou > 0.7 else "partial" if inter else "wrong_object"
            fig[kind] += 1
            fig["targets"] += 1
    result = {}
    for f, fig in out.items():
        fig = dict(fig)
        fig["cIoU"] = fig["intersection"] / fig["union"] if fig.get("union") else None
        result[f] = fig
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", help="predictions.jsonl of gsva eval")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    path = Path(args.predictions)
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        print(f"error: {path} is not JSON lines ({exc})", file=sys.stderr)
        return 2
    figures = family_figures(rows)
    for f, fig in figures.items():
        c = "-" if fig["cIoU"] is None else f"{fig['cIoU']:.3f}"
        print(f"{f:10s} targets {int(fig.get('targets', 0)):4d}  good {int(fig.get('good', 0)):4d}  partial "
              f"{int(fig.get('partial', 0)):3d}  wrong object {int(fig.get('wrong_object', 0)):3d}  rejected "
              f"{int(fig.get('rejected', 0)):3d}  cIoU {c}  no-target rejected {int(fig.get('no_target_rejected', 0))}"
              f"/{int(fig.get('no_target_rejected', 0) + fig.get('no_target_accepted', 0))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"predictions": str(path), "families": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
