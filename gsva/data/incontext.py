"""Synthetic segment-by-example data (issue #16): tasks (example scenes with the mask of one object, and a target
scene holding objects "like it" among distractors) and frame sequences (one object followed while objects move,
scale and occlude one another).

A task of ``(seed, index)`` asks for the objects of one (shape, colour) pair, its *kind*:

- **examples** (as many as asked, each drawn from its own random stream, so the first of a 3-shot task is the
  1-shot task's example): a scene with one object of the kind (small or large) and 1-4 distractors of other kinds;
  the example mask is that object's visible area.
- **target**: 1 or 2 objects of the kind (sizes drawn independently of the examples') among distractors: one of the
  same colour and another shape, one of the same shape and another colour, and 0-2 of other kinds. The ground truth
  is the union of the visible areas of the kind's objects.

Scenes use :mod:`gsva.data.synth`'s shapes, colours, sizes, backgrounds and occlusion rule (every object keeps
>= 55 % of its area visible; an object that cannot be placed in 30 tries is left out, so a target always keeps at
least one object of the kind, which is placed first). Everything is a pure function of ``(seed, index)`` and, for
the examples, their position k.

A sequence of ``(seed, index)`` (:func:`make_sequence`) follows one object (its *kind* as above) over ``frames``
frames on a fixed background: the object, a distractor of the same colour and another shape, one of the same shape
and another colour, and 0-2 of other kinds each move along a straight line (total travel up to 0.45 x the shorter
side), scale linearly (x 0.7 to 1.35 over the sequence) and turn; their drawing order is fixed per sequence, so the
later ones occlude the earlier ones. Trajectories are redrawn (up to 30 times) until the followed object keeps >= 30 %
of its own area visible and stays inside the image in every frame.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .synth import COLORS, SHAPES, SIZES, _background, _polygon, _rasterize

__all__ = ["ExampleTask", "ExampleSequence", "make_task", "make_sequence", "draw_scene"]

KINDS = [(s, c) for s in SHAPES for c in COLORS]
"""Every (shape, colour) pair, the kinds a task can ask for."""


@dataclass
class ExampleTask:
    """One segment-by-example task.

    ``kind`` (shape, colour); ``examples`` K pairs of (image (H_k, W_k, 3) uint8, mask (H_k, W_k) bool);
    ``image`` (H, W, 3) uint8 the target; ``mask`` (H, W) bool its ground truth (never empty).
    """

    kind: tuple[str, str]
    examples: list[tuple[np.ndarray, np.ndarray]]
    image: np.ndarray
    mask: np.ndarray


def draw_scene(rng: random.Random, nrng: np.random.Generator, specs: list[tuple[str, str, str]]
               ) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Draw objects ``specs`` ((shape, colour, size) each, placed in this order) on a textured background of a random
    size (200-320 x 180-300 pixels). Returns the image (H, W, 3) uint8 and, per spec, its visible mask (H, W) bool
    (None for an object that found no place)."""
    w, h = rng.randint(200, 320), rng.randint(180, 300)
    short = min(w, h)
    img = _background(rng, nrng, h, w)
    visible: list[np.ndarray | None] = []
    rasters: list[np.ndarray] = []
    for shape, color, size in specs:
        placed = None
        for _attempt in range(30):
            r = SIZES[size] * short * rng.uniform(0.9, 1.1)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            raster = _rasterize(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi) if shape != "heart" else 0.0),
                                h, w).astype(bool)
            others = [(v, ro) for v, ro in zip(visible, rasters) if v is not None]
            if all((v & ~raster).sum() >= 0.55 * ro.sum() for v, ro in others):
                placed = raster
                break
        if placed is None:
            visible.append(None)
            rasters.append(np.zeros((h, w), bool))
            continue
        visible = [v & ~placed if v is not None else None for v in visible] + [placed.copy()]
        rasters.append(placed)
    for (shape, color, size), raster, vis in zip(specs, rasters, visible):
        if vis is None:
            continue
        tint = np.array(COLORS[color], np.float32) + np.array([rng.uniform(-12, 12) for _ in range(3)], np.float32)
        shade = nrng.normal(0, 5, size=(h, w, 1)).astype(np.float32)
        img[raster] = tint[None, :] + shade[raster]
    return np.clip(img, 0, 255).astype(np.uint8), visible


def _other_kind(rng: random.Random, kind: tuple[str, str]) -> tuple[str, str]:
    return rng.choice([k for k in KINDS if k != kind])


def _size(rng: random.Random) -> str:
    return rng.choice(list(SIZES))


def make_task(seed: int, index: int, shots: int = 1) -> ExampleTask:
    """Task ``index`` of ``seed`` with ``shots`` >= 1 examples (deterministic; see the module docstring).
    Raises ValueError for ``shots`` < 1."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = random.Random(f"incontext-{seed}-{index}-target")
    nrng = np.random.default_rng([seed, index, 1 << 20])
    shape, color = kind = rng.choice(KINDS)
    matches = rng.randint(1, 2)
    specs = [(shape, color, _size(rng)) for _ in range(matches)]
    specs.append((rng.choice([s for s in SHAPES if s != shape]), color, _size(rng)))  # same colour only
    specs.append((shape, rng.choice([c for c in COLORS if c != color]), _size(rng)))  # same shape only
    specs += [(*_other_kind(rng, kind), _size(rng)) for _ in range(rng.randint(0, 2))]
    image, visible = draw_scene(rng, nrng, specs)
    mask = np.zeros(image.shape[:2], bool)
    for v in visible[:matches]:
        if v is not None:
            mask |= v
    examples = []
    for k in range(shots):
        erng = random.Random(f"incontext-{seed}-{index}-example-{k}")
        enrng = np.random.default_rng([seed, index, k])
        especs = [(shape, color, _size(erng))] + [(*_other_kind(erng, kind), _size(erng))
                                                  for _ in range(erng.randint(1, 4))]
        eimage, evisible = draw_scene(erng, enrng, especs)
        examples.append((eimage, evisible[0]))
    return ExampleTask(kind=kind, examples=examples, image=image, mask=mask)


@dataclass
class ExampleSequence:
    """Frames following one object. ``kind`` (shape, colour); ``frames`` F images (H, W, 3) uint8 of one size;
    ``masks`` F (H, W) bool, the followed object's visible area per frame (never empty)."""

    kind: tuple[str, str]
    frames: list[np.ndarray]
    masks: list[np.ndarray]


def _render(background: np.ndarray, nrng: np.random.Generator, objects: list[tuple[str, str, float, float, float, float,
            np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint ``objects`` ((shape, colour, cx, cy, r, rotation, tint (3,) float32) each, in drawing order: later ones
    occlude earlier ones) on a copy of ``background`` (H, W, 3) float32. Returns the image (H, W, 3) uint8 and each
    object's visible mask (H, W) bool."""
    h, w = background.shape[:2]
    img = background.copy()
    rasters = [_rasterize(_polygon(shape, cx, cy, r, rot if shape != "heart" else 0.0), h, w).astype(bool)
               for shape, _c, cx, cy, r, rot, _t in objects]
    visible = []
    for k, raster in enumerate(rasters):
        vis = raster.copy()
        for later in rasters[k + 1:]:
            vis &= ~later
        visible.append(vis)
    for (_s, _c, _x, _y, _r, _rot, tint), raster in zip(objects, rasters):
        shade = nrng.normal(0, 5, size=(h, w, 1)).astype(np.float32)
        img[raster] = tint[None, :] + shade[raster]
    return np.clip(img, 0, 255).astype(np.uint8), visible


def make_sequence(seed: int, index: int, frames: int = 8) -> ExampleSequence:
    """Sequence ``index`` of ``seed`` with ``frames`` >= 2 frames (deterministic; see the module docstring).
    Raises ValueError for ``frames`` < 2."""
    if frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
    rng = random.Random(f"incontext-sequence-{seed}-{index}")
    nrng = np.random.default_rng([seed, index, 1 << 21])
    shape, color = kind = rng.choice(KINDS)
    specs = [(shape, color), (rng.choice([s for s in SHAPES if s != shape]), color),
             (shape, rng.choice([c for c in COLORS if c != color]))]
    specs += [_other_kind(rng, kind) for _ in range(rng.randint(0, 2))]
    w, h = rng.randint(200, 320), rng.randint(180, 300)
    short = min(w, h)
    background = _background(rng, nrng, h, w)
    tints = [np.array(COLORS[c], np.float32) + np.array([rng.uniform(-12, 12) for _ in range(3)], np.float32)
             for _s, c in specs]
    order = list(range(len(specs)))
    rng.shuffle(order)  # drawing order: the followed object (spec 0) may lie under others
    for _attempt in range(30):
        paths = []
        for _spec in specs:
            r0 = SIZES[_size(rng)] * short * rng.uniform(0.9, 1.1)
            s0, s1 = 1.0, rng.uniform(0.7, 1.35)
            margin = r0 * max(s0, s1)
            x0, y0 = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
            travel, heading = rng.uniform(0.1, 0.45) * short, rng.uniform(0, 2 * math.pi)
            x1 = min(max(x0 + travel * math.cos(heading), margin), w - margin)
            y1 = min(max(y0 + travel * math.sin(heading), margin), h - margin)
            rot0, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.6, 0.6)
            paths.append((x0, y0, x1, y1, r0, s0, s1, rot0, spin))
        drawn = []
        for f in range(frames):
            t = f / (frames - 1)
            objs = []
            for k in order:
                x0, y0, x1, y1, r0, s0, s1, rot0, spin = paths[k]
                objs.append((*specs[k], x0 + t * (x1 - x0), y0 + t * (y1 - y0), r0 * (s0 + t * (s1 - s0)),
                             rot0 + t * spin, tints[k]))
            drawn.append(objs)
        first = order.index(0)
        full = [_rasterize(_polygon(shape, o[first][2], o[first][3], o[first][4], o[first][5] if shape != "heart"
                                    else 0.0), h, w).sum() for o in drawn]
        images, masks = [], []
        for objs, area in zip(drawn, full):
            image, visible = _render(background, nrng, objs)
            images.append(image)
            masks.append(visible[first])
        if all(m.sum() >= 0.3 * a and a > 0 for m, a in zip(masks, full)):
            break
    return ExampleSequence(kind=kind, frames=images, masks=masks)
