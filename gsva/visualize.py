"""Mask overlays for the CLI and the app: each found target in its own colour, labelled with its phrase.

Colours come from :data:`PALETTE` in the order of the answer's found (``"seg"``) targets, so the overlay, the app's
legend and the downloaded ``mask_<k>.png`` files agree: found target k (counting found targets only, from 0) has
colour ``PALETTE[k % len(PALETTE)]`` and file ``mask_<k>.png``.

Labels are placed where they cover no pixel of the mask they name (:func:`place_labels`), and, where room allows,
no other mask and no other label either; a label that has no such place anywhere in the image is left out (the
legend still names the target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .inference import Answer

__all__ = ["PALETTE", "LabelBox", "draw_clicks", "found_colors", "overlay_masks", "place_labels"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
"""Distinct RGB colours (0-255), cycled over the found targets (Sasha Trubetskoy's list of 20 distinct colours,
first ten)."""

MAX_LABEL_CHARS = 40


@dataclass(frozen=True)
class LabelBox:
    """A label's rectangle in pixels of the image, (x, y) frame with the origin at the top-left corner:
    columns ``x0 <= x < x1``, rows ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    def overlaps(self, other: LabelBox) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


def found_colors(answer: Answer) -> list[tuple[int, int, int] | None]:
    """Per target of ``answer`` (in order): its RGB colour when found with a mask, else None."""
    colors, k = [], 0
    for t in answer.targets:
        if t.status == "seg" and t.mask is not None:
            colors.append(PALETTE[k % len(PALETTE)])
            k += 1
        else:
            colors.append(None)
    return colors


def _covered(box: LabelBox, integral: np.ndarray) -> int:
    """Pixels of a mask inside ``box``, from the mask's (H + 1, W + 1) summed-area table."""
    return int(integral[box.y1, box.x1] - integral[box.y0, box.x1] - integral[box.y1, box.x0]
               + integral[box.y0, box.x0])


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    out[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return out


def place_labels(masks: list[np.ndarray], sizes: list[tuple[int, int]], step: int | None = None) -> list[LabelBox | None]:
    """Where to draw each mask's label.

    Args:
        masks: K masks, each (H, W) bool, all at the image's size.
        sizes: K label sizes (width, height) in pixels.
        step: the grid spacing in pixels of the fallback search (default: 1/64 of the shorter side, at least 2).

    Returns K boxes (or None): box k lies inside the image and covers no pixel of ``masks[k]``. Candidates are tried
    in order of preference: just above the mask's bounding box, just below it, to its left and right (each
    left-, right- or centre-aligned), then every ``step``-pixel grid position by distance from the mask. The first
    candidate that also avoids the other masks and the labels already placed wins; failing that, the first that
    avoids the labels placed; failing that, None (a mask that fills the image, or a label wider than it).
    """
    if len(masks) != len(sizes):
        raise ValueError(f"{len(masks)} masks but {len(sizes)} label sizes")
    if not masks:
        return []
    h, w = masks[0].shape
    step = step or max(2, min(h, w) // 64)
    union = _integral(np.any(np.stack(masks), axis=0))
    placed: list[LabelBox | None] = []
    for mask, (lw, lh) in zip(masks, sizes):
        if lw > w or lh > h or not mask.any():
            placed.append(None)
            continue
        own = _integral(mask)
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        cx, cy = (bx0 + bx1) // 2, (by0 + by1) // 2
        near = []
        for y in (by0 - lh - 2, by1 + 2):
            near += [(bx0, y), (bx1 - lw, y), (cx - lw // 2, y)]
        for x in (bx0 - lw - 2, bx1 + 2):
            near += [(x, by0), (x, by1 - lh), (x, cy - lh // 2)]

        def fits(points, lw=lw, lh=lh, own=own):
            boxes = [LabelBox(x, y, x + lw, y + lh) for x, y in points if 0 <= x <= w - lw and 0 <= y <= h - lh]
            free = [b for b in boxes if _covered(b, own) == 0 and not any(b.overlaps(p) for p in placed if p)]
            return [b for b in free if _covered(b, union) == 0], free

        clear, free = fits(near)
        if not clear:  # the grid, nearest first (built only when the places next to the box are taken)
            grid = [(x, y) for y in range(0, h - lh + 1, step) for x in range(0, w - lw + 1, step)]
            grid.sort(key=lambda p, cx=cx, cy=cy, lw=lw, lh=lh: (p[0] + lw / 2 - cx) ** 2 + (p[1] + lh / 2 - cy) ** 2)
            clear_grid, free_grid = fits(grid)
            clear, free = clear_grid, free + free_grid
        placed.append(clear[0] if clear else free[0] if free else None)
    return placed


def _font(image_height: int, image_width: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at a size readable on the image: 1/28 of its shorter side, 12 to 28 pixels."""
    return ImageFont.load_default(size=int(np.clip(min(image_height, image_width) / 28, 12, 28)))


def overlay_masks(image: np.ndarray, answer: Answer, alpha: float = 0.5, labels: bool = True) -> np.ndarray:
    """Blend every found target's mask over ``image`` with a one-pixel outline in its colour.

    Args:
        image: (H, W, 3) uint8 RGB, the image the answer's masks were decoded at.
        answer: its found targets' ``mask`` must be (H, W) bool.
        alpha: mask opacity in [0, 1].
        labels: write each found target's phrase (at most 40 characters) on a box of its colour, placed by
            :func:`place_labels` so that it covers no pixel of its own mask.

    Returns a new (H, W, 3) uint8 array. Raises ValueError when a mask's shape is not (H, W).
    """
    h, w = image.shape[:2]
    out = image.astype(np.float32).copy()
    found = [(t, c) for t, c in zip(answer.targets, found_colors(answer)) if c is not None]
    for target, color in found:
        m = target.mask.astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask of shape {m.shape} for an image of {h}x{w}")
        out[m] = (1 - alpha) * out[m] + alpha * np.array(color, np.float32)
        edge = m & ~(np.pad(m, 1)[:-2, 1:-1] & np.pad(m, 1)[2:, 1:-1] & np.pad(m, 1)[1:-1, :-2]
                     & np.pad(m, 1)[1:-1, 2:])
        out[edge] = color
    result = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if labels and found:
        draw = ImageDraw.Draw(result)
        font = _font(h, w)
        texts = [(t.phrase or "[SEG]")[:MAX_LABEL_CHARS] for t, _ in found]
        pad = 2
        sizes = []
        for text in texts:
            _, _, right, bottom = draw.textbbox((0, 0), text, font=font)
            sizes.append((right + 2 * pad, bottom + 2 * pad))
        boxes = place_labels([t.mask.astype(bool) for t, _ in found], sizes)
        for text, (_, color), box in zip(texts, found, boxes):
            if box is None:
                continue
            draw.rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), fill=color)
            ink = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
            draw.text((box.x0 + pad, box.y0 + pad), text, fill=ink, font=font)
    return np.asarray(result)


POSITIVE_CLICK, NEGATIVE_CLICK, BOX_COLOR = (0, 220, 0), (230, 0, 0), (255, 215, 0)
"""RGB of a positive click, a negative click and a box in :func:`draw_clicks`."""


def draw_clicks(image: np.ndarray, points=(), labels=(), box=None, corner=None) -> np.ndarray:
    """Mark refinement prompts on ``image`` (H, W, 3) uint8: each click as a filled disc with a white ring (green
    for label 1, positive; red for label 0, negative), the box (x0, y0, x1, y1) as a yellow rectangle, and a box's
    first ``corner`` (x, y) (while the second is awaited) as a yellow cross. Coordinates are pixels of ``image``,
    (x, y) with the origin at the top-left corner. The disc radius is 1.5 % of the longer side, at least 3 pixels.
    Returns a new (H, W, 3) uint8 array. Raises ValueError when points and labels differ in length."""
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} clicks but {len(labels)} labels")
    result = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(result)
    r = max(3, round(0.015 * max(image.shape[:2])))
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOR, width=max(1, r // 2))
    if corner is not None:
        x, y = (float(v) for v in corner)
        draw.line((x - r, y, x + r, y), fill=BOX_COLOR, width=2)
        draw.line((x, y - r, x, y + r), fill=BOX_COLOR, width=2)
    for (x, y), label in zip(points, labels):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=POSITIVE_CLICK if label else NEGATIVE_CLICK,
                     outline=(255, 255, 255), width=max(1, r // 3))
    return np.asarray(result)
