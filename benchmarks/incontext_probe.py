"""Probe for segment by example (issue #16, before a library method exists): which training-free correspondence
between an example's masked object and a target image finds the objects "like it", measured as mIoU on generated
tasks (:func:`gsva.data.incontext.make_task`).

    python benchmarks/incontext_probe.py [--seed 100] [--tasks 100] [--shots 1] [--model DIR] [--json OUT]

Correspondences, all on the shipped model's frozen parts, none trained for this:

- ``sam``: cosine similarity of SAM ``image_embeddings`` (C x 20 x 20 at gsva-smol) to the example's mask-pooled
  embedding; one positive click at the best cell.
- ``patch_words``: the vision tower's per-patch word distributions (its object-words projector's classifier, 8 x 8
  patches at gsva-smol): P(same colour) x P(same shape) of each patch against the example's mask-pooled
  distribution; a positive click at each local maximum >= 0.85 x the best (at most 3), one mask each, union.
- ``objects``: the projector's objects (patch components, words from its crop reader): each target object's
  P(same colour) x P(same shape) against the example object (the one whose patch box covers most of the example
  mask); objects scoring >= 0.25 x the best (and > 0.05) get their patch box and centre as SAM prompts; union.

K shots average the examples' pooled features (``sam``, ``patch_words``) or scores (``objects``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gsva.data.incontext import make_task  # noqa: E402
from gsva.data.transforms import clip_preprocess, sam_postprocess, sam_preprocess  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402
from gsva.refinement import RefineState, refine_low_res  # noqa: E402

METHODS = ("sam", "patch_words", "objects")


class Probe:
    def __init__(self, predictor: GSVAPredictor):
        self.model = predictor.model
        self.cfg = self.model.config
        self.size = self.cfg.sam.img_size
        self.projector = self.model.mllm.model.multi_modal_projector
        self.colours = len(self.cfg.vision.word_groups[1]) - 1  # word group 1 colours, 2 shapes (background dropped)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> dict:
        x, hw = sam_preprocess(image, self.size)
        clip = clip_preprocess(image, self.cfg.vision.image_size, self.cfg.vision.preprocess)[None]
        out = self.model.mllm.model.vision_tower(pixel_values=clip.to(self.model.dtype), output_hidden_states=True)
        patches = out.hidden_states[self.cfg.vision.feature_layer][:, 1:]
        words = torch.cat([lg.float().softmax(-1)[..., :-1] for lg in self.projector.word_logits(patches)[1:]], -1)
        side = int(words.shape[1] ** 0.5)
        return {"image": image, "hw": hw, "sam": self.model.sam_image_embeddings(x[None].to(self.model.dtype)),
                "words": words[0].T.reshape(-1, side, side), "objects": self.projector.read_objects(patches, clip)[0]}

    def _match(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """P(same colour) x P(same shape) of word distributions a (K, ...) and b (K,), normalised by b's self-match."""
        c = self.colours
        shape = (-1,) + (1,) * (a.dim() - 1)
        same = (a[:c] * b[:c].view(shape)).sum(0) * (a[c:] * b[c:].view(shape)).sum(0)
        return same / (b[:c].pow(2).sum() * b[c:].pow(2).sum()).clamp_min(1e-6)

    @torch.inference_mode()
    def _decode(self, enc: dict, points=(), box=None) -> torch.Tensor:
        state = RefineState(prompt=None, low_res=None, points=tuple(points), labels=(1,) * len(points), box=box)
        return refine_low_res(self.model.sam, enc["sam"], state, enc["image"].shape[:2], enc["hw"])

    def _grid_point(self, enc: dict, k: int, side: int, frame: str) -> tuple[float, float]:
        """Centre of cell k of a side x side grid -> (x, y) pixels of the image; ``frame`` "sam" (padded square of
        the longest-side resize) or "clip" (the image stretched to a square)."""
        h, w = enc["image"].shape[:2]
        y, x = divmod(k, side)
        if frame == "clip":
            return (x + 0.5) * w / side, (y + 0.5) * h / side
        cell = self.size / side
        return (x + 0.5) * cell * w / enc["hw"][1], (y + 0.5) * cell * h / enc["hw"][0]

    def predict(self, method: str, examples: list[tuple[dict, np.ndarray]], target: dict) -> np.ndarray:
        h, w = target["image"].shape[:2]
        lows = []
        if method == "sam":
            side = target["sam"].shape[-1]
            protos = []
            for enc, mask in examples:
                weight = _pool(mask, side, enc["hw"], self.size)
                protos.append((enc["sam"][0].float() * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6))
            sim = F.cosine_similarity(target["sam"][0].float(), torch.stack(protos).mean(0)[:, None, None], dim=0)
            valid = _pool(np.ones((h, w), bool), side, target["hw"], self.size) > 0.5
            k = int(torch.where(valid, sim, torch.tensor(-2.0)).argmax())
            lows.append(self._decode(target, [self._grid_point(target, k, side, "sam")]))
        elif method == "patch_words":
            side = target["words"].shape[-1]
            protos = []
            for enc, mask in examples:
                weight = _pool(mask, side)
                protos.append((enc["words"] * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6))
            sim = self._match(target["words"], torch.stack(protos).mean(0))
            peaks = (sim == F.max_pool2d(sim[None, None], 3, 1, 1)[0, 0]) & (sim >= 0.85 * sim.max())
            order = sorted(torch.nonzero(peaks.flatten()).flatten().tolist(), key=lambda k: -float(sim.flatten()[k]))
            for k in order[:3]:
                lows.append(self._decode(target, [self._grid_point(target, k, side, "clip")]))
        elif method == "objects":
            chosen = [max(enc["objects"], key=lambda o: _box_cover(o["box"], mask)) for enc, mask in examples
                      if enc["objects"]]
            scores = [float(np.mean([self._match(torch.cat(o["probs"][1:]), torch.cat(e["probs"][1:]))
                                     for e in chosen])) if chosen else 0.0 for o in target["objects"]]
            best = max(scores, default=0.0)
            for o, score in zip(target["objects"], scores):
                if score > 0.05 and score >= 0.25 * best:
                    x0, y0, x1, y1 = o["box"]
                    lows.append(self._decode(target, [(o["center"][0] * w, o["center"][1] * h)],
                                             (x0 * w, y0 * h, x1 * w, y1 * h)))
        else:
            raise ValueError(method)
        if not lows:
            return np.zeros((h, w), bool)
        logits = sam_postprocess(torch.stack(lows).max(0).values[None], self.size, target["hw"], (h, w))[0]
        return logits.numpy() > 0


def _pool(mask: np.ndarray, side: int, hw: tuple[int, int] | None = None, size: int = 0) -> torch.Tensor:
    """(H, W) bool -> (side, side) area fractions: of the padded SAM frame when ``hw`` (resized size) is given,
    else of the image stretched to a square (the vision tower's frame)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if hw is not None:
        t = F.pad(F.interpolate(t, hw, mode="area"), (0, size - hw[1], 0, size - hw[0]))
    return F.adaptive_avg_pool2d(t, side)[0, 0]


def _box_cover(box, mask: np.ndarray) -> float:
    """Share of ``mask`` (H, W) inside ``box`` (x0, y0, x1, y1) in image fractions."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    inside = mask[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))].sum()
    return float(inside / max(mask.sum(), 1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.tasks < 1 or args.shots < 1:
        parser.error("--tasks and --shots must be >= 1")
    torch.set_num_threads(args.threads)
    probe = Probe(GSVAPredictor.from_pretrained(args.model))
    ious = {m: [] for m in METHODS}
    start = time.perf_counter()
    for index in range(args.tasks):
        task = make_task(args.seed, index, args.shots)
        examples = [(probe.encode(image), mask) for image, mask in task.examples]
        target = probe.encode(task.image)
        for method in METHODS:
            ious[method].append(iou(probe.predict(method, examples, target), task.mask))
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "model": str(args.model or "shipped default"), "seed": args.seed, "tasks": args.tasks,
              "shots": args.shots, "seconds": time.perf_counter() - start,
              "miou": {m: float(np.mean(v)) for m, v in ious.items()}}
    for method in METHODS:
        print(f"{method:>12}: {args.shots}-shot mIoU {result['miou'][method]:.3f} over {args.tasks} tasks "
              f"(seed {args.seed})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
