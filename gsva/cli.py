"""The ``gsva`` command: ``gsva synth`` (synthetic gRefCOCO-format data) and ``gsva predict`` (one image, one query).

Bad input exits with status 2 and one ``error: ...`` line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _synth(args: argparse.Namespace) -> int:
    from .data.synth import write_synthetic_grefcoco

    counts = write_synthetic_grefcoco(args.out, seed=args.seed, num_images=args.images,
                                      per_image=args.expressions_per_image)
    sys.stdout.write(f"wrote {sum(counts.values())} images to {args.out} "
                     f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .images import load_image
    from .inference import GSVAPredictor
    from .visualize import overlay_masks

    image = load_image(args.image)
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=_dtype(args.dtype))
    predictor.set_image(image)
    answer = predictor.ask(args.query)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = []
    k = 0
    for t in answer.targets:
        name = None
        if t.status == "seg" and t.mask is not None:
            name = f"mask_{k}.png"
            Image.fromarray((t.mask.astype(np.uint8) * 255)).save(out / name)
            k += 1
        targets.append({"phrase": t.phrase, "status": t.status, "score": round(t.score, 6), "mask": name})
    Image.fromarray(overlay_masks(image, answer)).save(out / "overlay.png")
    result = {"answer": answer.text, "targets": targets}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(answer.text + "\n")
    for t in targets:
        sys.stdout.write(f"  {t['status']}  {t['score']:.3f}  {t['phrase']}  {t['mask'] or ''}\n")
    return 0


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsva", description="GSVA: generalized segmentation via multimodal LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write a synthetic GRES dataset in gRefCOCO format")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--expressions-per-image", type=int, default=8)
    p.set_defaults(func=_synth)
    p = sub.add_parser("predict", help="segment the targets a query names in one image")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--query", required=True)
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the shipped gsva-tiny)")
    p.add_argument("--out", type=Path, default=Path("gsva_out"))
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.grefcoco import AnnotationError
    from .images import ImageError
    from .inference import QuestionError

    try:
        return args.func(args)
    except (ImageError, QuestionError, CheckpointError, ConfigError, AnnotationError, FileExistsError,
            OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
