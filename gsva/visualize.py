"""Mask overlays for the CLI and the app: each target in its own colour, labelled with its phrase."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .inference import Answer

__all__ = ["PALETTE", "overlay_masks"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
"""Distinct RGB colours, cycled per [SEG] target."""


def overlay_masks(image: np.ndarray, answer: Answer, alpha: float = 0.5, labels: bool = True) -> np.ndarray:
    """Blend every "seg" target's mask over ``image`` (H, W, 3) uint8; returns a new (H, W, 3) uint8 array.

    With ``labels``, each mask gets its phrase written at the top-left corner of its bounding box.
    """
    out = image.astype(np.float32).copy()
    boxes = []
    k = 0
    for target in answer.targets:
        if target.status != "seg" or target.mask is None:
            continue
        color = np.array(PALETTE[k % len(PALETTE)], np.float32)
        m = target.mask.astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * color
        if m.any():
            ys, xs = np.nonzero(m)
            boxes.append((int(xs.min()), int(ys.min()), target.phrase, PALETTE[k % len(PALETTE)]))
        k += 1
    result = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if labels and boxes:
        draw = ImageDraw.Draw(result)
        font = ImageFont.load_default()
        for x, y, text, color in boxes:
            text = text[:40] or "[SEG]"
            left, top, right, bottom = draw.textbbox((x, y), text, font=font)
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
            draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(result)
