"""Interactive refinement: how many simulated clicks a mask needs (NoC), from the [SEG] mask and from nothing.

    python benchmarks/interactive.py [--data-root data/synth] [--split val] [--limit 20] [--model DIR]
                                     [--max-clicks 20] [--no-previous-mask] [--threads 2] [--json OUT]

For every expression with a non-empty ground truth on the first ``--limit`` images of a gRefCOCO-format split:

(a) from [SEG]: the expression is asked as in evaluation (:func:`gsva.evaluation.prompts.refer_question`, generate
    protocol) and its slot's mask (``decode_rejected``: a rejected slot's mask too) is the start, IoU at 0 clicks;
(b) from nothing: no mask, the first click makes one.

Then up to ``--max-clicks`` clicks, each refining the last mask (:meth:`gsva.inference.GSVAPredictor.refine`: every
click so far plus, unless ``--no-previous-mask``, the last round's logits as SAM's dense prompt). The click is the
standard simulation of interactive segmentation (Xu et al., "Deep Interactive Object Selection", CVPR 2016; the
protocol of RITM, Sofiiuk et al., 2022): of the false-negative and false-positive regions of the current mask, take
the one whose interior point lies farthest from its boundary (Euclidean distance transform, the image border
counting as boundary) and click that point, positive for missed foreground, negative for false positive.

Figures per start: NoC@85 / NoC@90, the mean number of clicks to reach IoU >= 0.85 / 0.90 (``--max-clicks`` when
never reached; 0 when the [SEG] mask already reaches it), and mean IoU after 0 (from [SEG] only), 1, 3 and 5 clicks.
Targets (issue #15, synthetic val, shipped default): from nothing, mean IoU after 1 click >= 0.80 and NoC@90 <= 3;
from [SEG], NoC@90 <= 2 and mean IoU never lower after a click than before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gsva.evaluation import open_benchmark  # noqa: E402
from gsva.evaluation.prompts import clean_expression, refer_question  # noqa: E402
from gsva.evaluation.protocols import match_slots  # noqa: E402
from gsva.images import load_image  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402

REPORTED_CLICKS = (1, 3, 5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[float, float], int]:
    """((x, y) pixel, label) of the next simulated click on (H, W) bool masks (see the module docstring)."""
    best = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        padded = np.pad(region, 1).astype(np.uint8)  # the image border counts as boundary
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        if best is None or dist[y, x] > best[0]:
            best = (float(dist[y, x]), (float(x) + 0.5, float(y) + 0.5), label)
    if best is None:  # a perfect mask: any click on the object keeps it
        ys, xs = np.nonzero(gt)
        return (float(xs[0]) + 0.5, float(ys[0]) + 0.5), 1
    return best[1], best[2]


def click_curve(predictor: GSVAPredictor, encoded, gt: np.ndarray, start, max_clicks: int,
                use_previous_mask: bool) -> list[float]:
    """IoU after 0..max_clicks clicks from ``start`` (a Target, or None for no mask: IoU 0 at 0 clicks)."""
    target = start
    pred = start.slot_mask if start is not None else np.zeros_like(gt)
    curve = [iou(pred, gt)]
    for _ in range(max_clicks):
        point, label = next_click(pred, gt)
        target = predictor.refine(target, points=[point], point_labels=[label], encoded=encoded,
                                  use_previous_mask=use_previous_mask)
        pred = target.mask
        curve.append(iou(pred, gt))
    return curve


def noc(curves: list[list[float]], threshold: float, max_clicks: int) -> float:
    return float(np.mean([next((k for k, v in enumerate(c) if v >= threshold), max_clicks) for c in curves]))


def summary(curves: list[list[float]], max_clicks: int, with_zero: bool) -> dict:
    out = {"count": len(curves), "noc85": noc(curves, 0.85, max_clicks), "noc90": noc(curves, 0.90, max_clicks)}
    for k in ((0,) if with_zero else ()) + REPORTED_CLICKS:
        out[f"miou_{k}"] = float(np.mean([c[k] for c in curves]))
    means = np.mean(np.array(curves), axis=0)
    out["mean_iou_per_click"] = [float(v) for v in means]
    out["worse_after_a_click"] = int(sum(b < a - 1e-9 for a, b in zip(means, means[1:])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=20, help="images")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--no-previous-mask", action="store_true", help="no dense mask prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.limit < 1 or args.max_clicks < max(REPORTED_CLICKS):
        parser.error(f"--limit must be >= 1 and --max-clicks >= {max(REPORTED_CLICKS)}")
    torch.set_num_threads(args.threads)
    bench = open_benchmark("grefcoco", args.data_root, args.split)
    predictor = GSVAPredictor.from_pretrained(args.model)
    use_previous = not args.no_previous_mask
    curves = {"from_seg": [], "from_nothing": []}
    start_time = time.perf_counter()
    for image in bench.images[:args.limit]:
        array = load_image(image.path)
        h, w = array.shape[:2]
        encoded = predictor.encode_image(array)
        for expr in image.expressions:
            gt = bench.ground_truth(image, expr, h, w)[0].astype(bool)
            if not gt.any():
                continue
            phrase = clean_expression(expr.sentence)
            answer, _ = predictor.answer(encoded, [], refer_question([phrase]), decode_rejected=True)
            (slot,), _ = match_slots(answer, [phrase])
            start = answer.targets[slot] if slot is not None else None
            if start is not None and start.refine_state is not None:
                curves["from_seg"].append(click_curve(predictor, encoded, gt, start, args.max_clicks, use_previous))
            curves["from_nothing"].append(click_curve(predictor, encoded, gt, None, args.max_clicks, use_previous))
    seconds = time.perf_counter() - start_time
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "model": str(args.model or "shipped default"), "data_root": str(args.data_root), "split": args.split,
              "images": min(args.limit, len(bench.images)), "max_clicks": args.max_clicks,
              "previous_mask_prompt": use_previous, "seconds": seconds,
              "from_seg": summary(curves["from_seg"], args.max_clicks, with_zero=True),
              "from_nothing": summary(curves["from_nothing"], args.max_clicks, with_zero=False)}
    for name in ("from_seg", "from_nothing"):
        r = result[name]
        ious = ", ".join(f"{k} click{'s' if k != 1 else ''} {r[f'miou_{k}']:.3f}"
                         for k in ((0,) if name == "from_seg" else ()) + REPORTED_CLICKS)
        print(f"{name:>12} ({r['count']} targets): NoC@85 {r['noc85']:.2f}, NoC@90 {r['noc90']:.2f}; mean IoU after "
              f"{ious}; rounds that lowered the mean IoU: {r['worse_after_a_click']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
