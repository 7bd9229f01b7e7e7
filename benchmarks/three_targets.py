"""Questions naming three targets (two present, one absent) on held-out synthetic scenes: quality and latency.

    python benchmarks/three_targets.py [--model DIR] [--scenes 100] [--seed 2025] [--threads 2] [--out FILE.json]

For each scene (``make_scene(seed, i)``; the shipped models were trained on seed 0) two present expressions and one
absent expression are drawn from the generator's own expressions for that scene (:func:`scene_expressions`: every
family has present and absent forms, so the words never tell which is which), put in a random order and asked
through :class:`GSVAPredictor` as "What are A, B, C in this image?" (GSVA's multi-target question, paper Sec. 3.2)
with the image already set. Per asked target:

* ``phrase_equal``: the answer has its own target (one per asked phrase) whose phrase equals the asked phrase
  character for character;
* the answer's targets are then assigned to the asked ones as the evaluation does (:func:`match_slots`: normalised
  phrase matches first, then reading order), so masks are scored apart from exact copying. Present targets: IoU
  of the assigned target's mask with the union of the referred objects' visible pixels (0 when no target is
  assigned or it is rejected); ``present_mean_iou`` averages over present targets. ``absent_rejected``: the
  target assigned to the absent phrase is ``[REJ]``. ``extra_targets``: answer targets left unassigned (all
  scenes).

Latency: language-model passes per question (``passes_median``: prefill of the question + one per step, the
image's shared prompt prefix being computed in ``set_image``; with prompt-lookup drafts
a step may add several tokens), median and 90th percentile of the question time (image set; prefill + generation
+ mask decoding) and of ``set_image``, after one warm-up scene. Targets (issue #12): phrase_equal >= 0.98,
present_mean_iou >= 0.70, absent_rejected >= 0.90, question median <= 1.0 s and set_image median <= 0.3 s on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gsva.data.synth import make_scene, scene_expressions  # noqa: E402
from gsva.evaluation.protocols import match_slots  # noqa: E402
from gsva.inference import GSVAPredictor, default_model_dir  # noqa: E402


def three_target_case(seed: int, index: int):
    """(scene, [(phrase, object indices)] x 3 in asking order) or None when the scene lacks 2 present + 1 absent."""
    scene = make_scene(seed, index)
    exprs = scene_expressions(scene, seed, index)
    present = [e for e in exprs if e[1]]
    absent = [e for e in exprs if not e[1]]
    if len(present) < 2 or not absent:
        return None
    rng = random.Random(f"three-{seed}-{index}")
    asked = rng.sample(present, 2) + [rng.choice(absent)]
    rng.shuffle(asked)
    return scene, asked


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-tokens", type=int, default=16, help="prompt-lookup drafts per pass (0: off)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    predictor = GSVAPredictor.from_pretrained(model_dir, dtype=dtype, draft_tokens=args.draft_tokens)
    passes: list[int] = []
    asking = False
    forward = predictor.model.language_forward

    def counted(*a, **k):  # language-model passes per question (prefill + one per verified draft)
        if asking:
            passes[-1] += 1
        return forward(*a, **k)

    predictor.model.language_forward = counted
    cases, index = [], 0
    while len(cases) < args.scenes + 1:  # + 1 warm-up scene, not counted
        case = three_target_case(args.seed, index)
        index += 1
        if case is not None:
            cases.append(case)
    equal, present_ious, absent_ok, extra_targets, tokens = [], [], [], [], []
    set_times, ask_times, examples = [], [], []
    for n, (scene, asked) in enumerate(cases):
        question = "What are " + ", ".join(p for p, _ in asked) + " in this image?"
        t0 = time.perf_counter()
        predictor.set_image(scene.image)
        t1 = time.perf_counter()
        passes.append(0)
        asking = True  # the per-image prompt prefix (set_image) is not a question's pass
        answer = predictor.ask(question)
        asking = False
        t2 = time.perf_counter()
        if n == 0:
            continue
        set_times.append(t1 - t0)
        tokens.append(len(predictor.tokenizer(answer.text, add_special_tokens=False).input_ids))
        ask_times.append(t2 - t1)
        unclaimed = list(answer.targets)
        for phrase, _ in asked:  # exact equality, one answer target per asked phrase
            hit = next((t for t in unclaimed if t.phrase == phrase), None)
            equal.append(hit is not None)
            if hit is not None:
                unclaimed.remove(hit)
        chosen, extra = match_slots(answer, [p for p, _ in asked])
        extra_targets.append(extra)
        for (phrase, objects), k in zip(asked, chosen):
            target = None if k is None else answer.targets[k]
            if objects:
                truth = np.any([scene.objects[i].visible.astype(bool) for i in objects], axis=0)
                ok = target is not None and target.status == "seg" and target.mask is not None
                present_ious.append(iou(target.mask, truth) if ok else 0.0)
            else:
                absent_ok.append(target is not None and target.status == "rej")
        if len(examples) < 5:
            examples.append({"question": question, "answer": answer.text})
    result = {
        "model": str(args.model) if args.model else "default (gsva.inference.default_model_dir)",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "seed": args.seed,
        "scenes": len(ask_times),
        "draft_tokens": args.draft_tokens,
        "dtype": args.dtype,
        "phrase_equal": float(np.mean(equal)),
        "present_mean_iou": float(np.mean(present_ious)),
        "absent_rejected": float(np.mean(absent_ok)),
        "extra_targets": int(sum(extra_targets)),
        "passes_median": statistics.median(passes[1:]),
        "answer_tokens_median": statistics.median(tokens),
        "question_median_s": statistics.median(ask_times),
        "question_p90_s": float(np.percentile(ask_times, 90)),
        "set_image_median_s": statistics.median(set_times),
        "set_image_p90_s": float(np.percentile(set_times, 90)),
        "examples": examples,
    }
    for key, value in result.items():
        if key != "examples":
            print(f"{key:>20}: {value:.3f}" if isinstance(value, float) else f"{key:>20}: {value}")
    for ex in examples:
        print(f"  Q: {ex['question']}\n  A: {ex['answer']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
