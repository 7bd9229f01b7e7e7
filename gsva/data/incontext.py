"""Synthetic segment-by-example tasks (issue #16): example scenes with the mask of one object, and a target scene
holding objects "like it" among distractors.

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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .synth import COLORS, SHAPES, SIZES, _background, _polygon, _rasterize

__all__ = ["ExampleTask", "make_task", "draw_scene"]

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
