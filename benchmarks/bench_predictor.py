"""Latency of the predictor on this machine: setting an image, and one question with the image already set.

    python benchmarks/bench_predictor.py [--model DIR] [--scenes 20] [--threads 2] [--out FILE.json]

Questions name 1-3 targets of held-out synthetic scenes (seed 2024). Prints medians and 90th percentiles in seconds.
Targets (issue #2): <= 0.5 s per question (median) and <= 0.5 s to set an image, for gsva-tiny on 2 CPU cores.
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
from gsva.inference import GSVAPredictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = GSVAPredictor.from_pretrained(args.model)
    rng = random.Random(0)
    set_times, ask_times, tokens = [], [], []
    for index in range(args.scenes + 1):
        scene = make_scene(2024, index)
        exprs = [s for s, _ in scene_expressions(scene, 2024, index)]
        t0 = time.perf_counter()
        predictor.set_image(scene.image)
        t1 = time.perf_counter()
        for _ in range(3):
            k = rng.randint(1, min(3, len(exprs)))
            question = "Can you segment " + ", ".join(rng.sample(exprs, k)) + " in this image?"
            predictor.reset()
            t2 = time.perf_counter()
            answer = predictor.ask(question)
            t3 = time.perf_counter()
            if index > 0:  # scene 0 warms up
                ask_times.append(t3 - t2)
                tokens.append(len(predictor.tokenizer(answer.text, add_special_tokens=False).input_ids))
        if index > 0:
            set_times.append(t1 - t0)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "set_image_median_s": statistics.median(set_times),
        "set_image_p90_s": float(np.percentile(set_times, 90)),
        "question_median_s": statistics.median(ask_times),
        "question_p90_s": float(np.percentile(ask_times, 90)),
        "answer_tokens_median": statistics.median(tokens),
        "questions": len(ask_times),
    }
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
