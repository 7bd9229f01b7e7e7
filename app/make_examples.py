"""Draw the app's example gallery: a few synthetic scenes, each with ready questions naming present and absent targets.

    python app/make_examples.py [--out gsva/assets/examples] [--seed 77] [--scenes 4] [--like-tasks 1,2]

Scenes come from the synthetic generator (:func:`gsva.data.synth.make_scene`) at a seed no training or benchmark set
uses; the questions from the generator's own expressions for each scene (:func:`gsva.data.synth.scene_expressions`),
chosen from the scene's structure alone, never from a model's answers: a three-target question (two present targets
and one absent, in a shuffled order, GSVA's multi-target question of paper Sec. 3.2) and a two-target follow-up
(one present, one absent). Scenes with fewer than four objects are passed over. Writes ``scene_<k>.png`` and ``examples.json`` (``[{"image": file, "questions": [...]}]``).

For the "Segment by example" tab it also writes ``like_<k>_example.png``, ``like_<k>_mask.png`` (0/255) and
``like_<k>_target.png`` from the segment-by-example tasks ``--like-tasks`` of the same seed
(:func:`gsva.data.incontext.make_task`), listed in ``like_examples.json`` (``[{"example": file, "mask": file,
"target": file, "kind": [shape, colour], "generator": {"seed": seed, "index": task}}]``). The default passes over
task 0 (a small red triangle touching a large red heart): the crop reader of stage (d7) reads it as a heart, so the
shipped default finds nothing like the example there (docs/gsva-smol.md, segment by example).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from PIL import Image

import numpy as np

from gsva.data.incontext import make_task
from gsva.data.synth import make_scene, scene_expressions

REPO = Path(__file__).resolve().parents[1]


def scene_questions(seed: int, index: int) -> list[str] | None:
    """Two questions for scene ``index`` of generator run ``seed``: three targets (two present, one absent), then
    two others (one present, one absent), each in a shuffled order; None when the scene has fewer than four
    objects, three present expressions or two absent ones."""
    scene = make_scene(seed, index)
    exprs = scene_expressions(scene, seed, index)
    present = [p for p, objs in exprs if objs]
    absent = [p for p, objs in exprs if not objs]
    if len(scene.objects) < 4 or len(present) < 3 or len(absent) < 2:
        return None
    rng = random.Random(f"examples-{seed}-{index}")
    rng.shuffle(present)
    rng.shuffle(absent)
    first = present[:2] + absent[:1]
    second = present[2:3] + absent[1:2]
    rng.shuffle(first)
    rng.shuffle(second)
    return ["What are " + ", ".join(first) + " in this image?", "What are " + ", ".join(second) + " in this image?"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "gsva" / "assets" / "examples")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--like-tasks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2],
                        help="comma-separated task indices of the seed for the segment-by-example rows")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gallery, index = [], 0
    while len(gallery) < args.scenes:
        questions = scene_questions(args.seed, index)
        if questions is not None:
            name = f"scene_{len(gallery)}.png"
            Image.fromarray(make_scene(args.seed, index).image).save(args.out / name, optimize=True)
            gallery.append({"image": name, "questions": questions, "generator": {"seed": args.seed, "index": index}})
        index += 1
    (args.out / "examples.json").write_text(json.dumps(gallery, indent=2) + "\n")
    for item in gallery:
        print(item["image"], *item["questions"], sep="\n  ")
    like = []
    for k, task_index in enumerate(args.like_tasks):
        task = make_task(args.seed, task_index)
        (image, mask) = task.examples[0]
        names = {part: f"like_{k}_{part}.png" for part in ("example", "mask", "target")}
        Image.fromarray(image).save(args.out / names["example"], optimize=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(args.out / names["mask"], optimize=True)
        Image.fromarray(task.image).save(args.out / names["target"], optimize=True)
        like.append(dict(names, kind=list(task.kind), 
                         generator={"seed": args.seed, "index": task_index}))
        print(names["example"], "->", names["target"], task.kind)
    (args.out / "like_examples.json").write_text(json.dumps(like, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
