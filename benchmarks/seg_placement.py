"""Where the [SEG] masks land: one-target questions on held-out synthetic scenes.

    python benchmarks/seg_placement.py --model DIR [--scenes 40] [--seed 2025] [--out FILE.json]

Per scene (``make_scene(seed, i)``), the first unoccluded object whose colour + shape is unique in the scene is asked
about as "What are the <colour> <shape> in this image?". For each ``[SEG]`` answer the mask is compared with every
object's visible pixels: ``on_target`` / ``on_other`` count masks whose largest share lies on the asked object (and
covers > 30 % of the mask) or elsewhere; ``iou_target`` and ``iou_best_other`` are mean IoUs with the asked object and
with the best other object; ``area_ratio_median`` is mask area over the object's area. A model whose ``[SEG]`` prompt
tells SAM where the matched object is has on_target >> on_other and iou_target >> iou_best_other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gsva.data.synth import make_scene  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = GSVAPredictor.from_pretrained(args.model)
    asked = rejected = on_target = on_other = 0
    iou_target, iou_other, area_ratio = [], [], []
    for i in range(args.scenes):
        scene = make_scene(args.seed, i)
        objs = scene.objects
        pick = next((k for k, o in enumerate(objs) if not o.occluded
                     and sum(q.color == o.color and q.shape == o.shape for q in objs) == 1), None)
        if pick is None:
            continue
        predictor.set_image(scene.image)
        target = objs[pick]
        answer = predictor.ask(f"What are the {target.color} {target.shape} in this image?")
        asked += 1
        t = answer.targets[0] if answer.targets else None
        if t is None or t.status != "seg" or not t.mask.any():
            rejected += 1
            continue
        visible = [q.visible.astype(bool) for q in objs]
        ious = [np.logical_and(t.mask, v).sum() / max(np.logical_or(t.mask, v).sum(), 1) for v in visible]
        share = [np.logical_and(t.mask, v).sum() / t.mask.sum() for v in visible]
        best = int(np.argmax(share))
        if best == pick and share[best] > 0.3:
            on_target += 1
        else:
            on_other += 1
        iou_target.append(float(ious[pick]))
        iou_other.append(float(max([x for j, x in enumerate(ious) if j != pick], default=0.0)))
        area_ratio.append(float(t.mask.sum() / visible[pick].sum()))
    result = {"model": str(args.model), "seed": args.seed, "asked": asked, "rejected_or_empty": rejected,
              "on_target": on_target, "on_other": on_other,
              "iou_target": float(np.mean(iou_target)) if iou_target else None,
              "iou_best_other": float(np.mean(iou_other)) if iou_other else None,
              "area_ratio_median": float(np.median(area_ratio)) if area_ratio else None}
    for k, v in result.items():
        print(f"{k:>18}: {v:.3f}" if isinstance(v, float) else f"{k:>18}: {v}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
