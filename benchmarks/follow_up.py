"""Follow-up questions: is a question answered as well after an earlier turn as when it opens the conversation?

    python benchmarks/follow_up.py [--model DIR] [--scenes 40] [--seed 2025] [--out results.json]

On held-out synthetic scenes (generator seed 2025, as ``three_targets.py``; scenes with at least four objects), each
scene gets the two questions of the app's example gallery (``app/make_examples.py``, ``scene_questions``): "What are
A, B, C in this image?" (two present targets, one absent), then "What are D, E in this image?" (one present, one
absent), drawn from the generator's own expressions (so the words never tell which target is present). The second
question is asked twice: as a follow-up in the same conversation, and alone as the first turn of a new one.

Per question kind: ``present_found`` (share of present targets answered ``[SEG]``), ``present_mean_iou`` (mean IoU
of the mask with the target's visible pixels, 0 where rejected or missing), ``absent_rejected`` (share of absent
targets answered ``[REJ]``). A target whose phrase the answer does not repeat counts as neither found nor rejected.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gsva.data.synth import make_scene, scene_expressions  # noqa: E402
from gsva.inference import GSVAPredictor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _scene_questions():
    spec = importlib.util.spec_from_file_location("make_examples", REPO / "app" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scene_questions


def asked_phrases(question: str) -> list[str]:
    """The phrases of "What are A, B in this image?"."""
    return question[len("What are "):-len(" in this image?")].split(", ")


def score(scene, expressions: dict, answer, asked: list[str]) -> list[tuple[bool, float, bool]]:
    """Per asked phrase: (present?, IoU with the target or 0, decision right?)."""
    by_phrase = {t.phrase: t for t in answer.targets}
    rows = []
    for phrase in asked:
        objects = expressions[phrase]
        target = by_phrase.get(phrase)
        if not objects:
            rows.append((False, 0.0, target is not None and target.status == "rej"))
            continue
        truth = np.zeros(scene.image.shape[:2], bool)
        for i in objects:
            truth |= scene.objects[i].visible.astype(bool)
        mask = None if target is None else target.mask
        iou = 0.0 if mask is None else float((truth & mask).sum() / max(1, (truth | mask).sum()))
        rows.append((True, iou, target is not None and target.status == "seg"))
    return rows


def summary(rows: list[tuple[bool, float, bool]]) -> dict:
    present = [r for r in rows if r[0]]
    absent = [r for r in rows if not r[0]]
    return {"present": len(present), "present_found": float(np.mean([r[2] for r in present])),
            "present_mean_iou": float(np.mean([r[1] for r in present])), "absent": len(absent),
            "absent_rejected": float(np.mean([r[2] for r in absent]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")
    torch.set_num_threads(args.threads)
    scene_questions = _scene_questions()
    predictor = GSVAPredictor.from_pretrained(args.model)
    kinds = {"first_question": [], "second_as_follow_up": [], "second_alone": []}
    index = done = 0
    while done < args.scenes:
        questions = scene_questions(args.seed, index)
        if questions is not None:
            scene = make_scene(args.seed, index)
            expressions = dict(scene_expressions(scene, args.seed, index))
            predictor.set_image(scene.image)
            first, second = questions
            kinds["first_question"] += score(scene, expressions, predictor.ask(first), asked_phrases(first))
            kinds["second_as_follow_up"] += score(scene, expressions, predictor.ask(second), asked_phrases(second))
            predictor.reset()
            kinds["second_alone"] += score(scene, expressions, predictor.ask(second), asked_phrases(second))
            done += 1
        index += 1
    result = {"model": str(args.model or "shipped default"), "seed": args.seed, "scenes": args.scenes,
              **{kind: summary(rows) for kind, rows in kinds.items()}}
    for kind in kinds:
        s = result[kind]
        print(f"{kind:20s} present found {s['present_found']:.2f}, mean IoU {s['present_mean_iou']:.3f} "
              f"({s['present']}); absent rejected {s['absent_rejected']:.2f} ({s['absent']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
