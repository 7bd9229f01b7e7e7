"""An answer as files: one PNG per found mask, an overlay, and ``result.json`` with COCO RLE masks.

``gsva predict``, ``gsva chat`` and the app's downloads write the same files with the same schema
(:data:`RESULT_SCHEMA_VERSION`)::

    {
      "schema": 1,
      "answer": "Sure, the red circle: [SEG], the blue star: [REJ].",
      "image": {"height": H, "width": W},
      "targets": [
        {"phrase": "the red circle", "status": "seg", "score": 0.97, "color": [230, 25, 75],
         "mask": "mask_0.png", "segmentation": {"size": [H, W], "counts": "<COCO compressed RLE>"}},
        {"phrase": "the blue star", "status": "rej", "score": 0.08, "color": null, "mask": null,
         "segmentation": null}
      ]
    }

``status`` is "seg" (found) or "rej" (not in the image); ``score`` is P([SEG]) / (P([SEG]) + P([REJ])) at the slot,
a probability in [0, 1]; ``segmentation`` decodes with ``pycocotools.mask.decode`` to the (H, W) uint8 mask of
``mask`` (0/255 PNG at the original image size); ``color`` is the target's RGB colour in ``overlay.png`` and the
app's legend (:func:`gsva.visualize.found_colors`). A target refined with clicks or a box
(:meth:`gsva.inference.GSVAPredictor.refine`) also carries ``"refinement": {"points": [[x, y], ...], "labels": [1, 0,
...], "box": [x0, y0, x1, y1] or null}``, pixels of the original image (label 1 positive, 0 negative).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data.masks import encode_rle
from .inference import Answer
from .visualize import found_colors, overlay_masks

__all__ = ["RESULT_SCHEMA_VERSION", "answer_record", "write_answer", "segment_like_record", "write_segment_like"]

RESULT_SCHEMA_VERSION = 1


def answer_record(answer: Answer, height: int, width: int) -> dict:
    """``result.json``'s content for ``answer`` on an image of ``height`` x ``width`` pixels (schema above); found
    target k (counting found targets from 0) names ``mask_<k>.png``. Raises ValueError when a mask's shape is not
    (height, width)."""
    targets, k = [], 0
    for target, color in zip(answer.targets, found_colors(answer)):
        record = {"phrase": target.phrase, "status": target.status, "score": round(float(target.score), 6),
                  "color": list(color) if color else None, "mask": None, "segmentation": None}
        if color is not None:
            if target.mask.shape != (height, width):
                raise ValueError(f"mask of shape {target.mask.shape} for an image of {height}x{width}")
            record["mask"] = f"mask_{k}.png"
            record["segmentation"] = encode_rle(target.mask.astype(bool))
            k += 1
        state = target.refine_state
        if state is not None and (state.points or state.box is not None):
            record["refinement"] = {"points": [[round(float(x), 3), round(float(y), 3)] for x, y in state.points],
                                    "labels": [int(v) for v in state.labels],
                                    "box": [round(float(v), 3) for v in state.box] if state.box is not None else None}
        targets.append(record)
    return {"schema": RESULT_SCHEMA_VERSION, "answer": answer.text, "image": {"height": height, "width": width},
            "targets": targets}


def write_answer(image: np.ndarray, answer: Answer, out: str | Path) -> dict:
    """Write ``out``/mask_<k>.png (0/255 uint8, the image's size) per found target, ``out``/overlay.png and
    ``out``/result.json for ``answer`` on ``image`` ((H, W, 3) uint8 RGB); creates ``out``. Returns the record
    written to result.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = answer_record(answer, image.shape[0], image.shape[1])
    masks = [t.mask for t, c in zip(answer.targets, found_colors(answer)) if c is not None]
    for k, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"mask_{k}.png")
    Image.fromarray(overlay_masks(image, answer)).save(out / "overlay.png")
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def segment_like_record(result, height: int, width: int, examples: list[dict] | None = None) -> dict:
    """``result.json``'s content for a segment-by-example ``result`` (:class:`gsva.incontext.SegmentLikeResult`)
    on a target of ``height`` x ``width`` pixels::

        {"schema": 1, "kind": "segment_like", "method": "trained", "score": 0.93,
         "image": {"height": H, "width": W}, "examples": [...], "mask": "mask.png" or null,
         "segmentation": <COCO compressed RLE> or null,
         "parts": [{"score": 0.93, "point": [x, y], "box": [x0, y0, x1, y1]}, ...]}

    ``score`` in [0, 1]; ``point`` and ``box`` are the SAM prompts of each part, pixels of the target; ``examples``
    what the caller says of its examples (the CLI: their file names). Raises ValueError when the mask's shape is
    not (height, width)."""
    if result.mask.shape != (height, width):
        raise ValueError(f"mask of shape {result.mask.shape} for an image of {height}x{width}")
    found = bool(result.mask.any())
    return {"schema": RESULT_SCHEMA_VERSION, "kind": "segment_like", "method": result.method,
            "score": round(float(result.score), 6), "image": {"height": height, "width": width},
            "examples": examples or [], "mask": "mask.png" if found else None,
            "segmentation": encode_rle(result.mask.astype(bool)) if found else None,
            "parts": [{"score": round(float(p.score), 6), "point": [round(float(v), 3) for v in p.point],
                       "box": [round(float(v), 3) for v in p.box]} for p in result.prompts]}


def write_segment_like(image: np.ndarray, result, out: str | Path, examples: list[dict] | None = None) -> dict:
    """Write ``out``/mask.png (0/255, the target's size; only when the mask is not empty), ``out``/overlay.png
    and ``out``/result.json (:func:`segment_like_record`) for a segment-by-example ``result`` on ``image`` ((H, W,
    3) uint8 RGB); creates ``out``. Returns the record."""
    from .inference import Target

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = segment_like_record(result, image.shape[0], image.shape[1], examples)
    if record["mask"]:
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(out / "mask.png")
    shown = Answer(text="", targets=[Target(phrase="like the example", status="seg" if record["mask"] else "rej",
                                            score=result.score, mask=result.mask)])
    Image.fromarray(overlay_masks(image, shown)).save(out / "overlay.png")
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
