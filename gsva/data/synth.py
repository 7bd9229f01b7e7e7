"""Procedural GRES scenes written in the exact gRefCOCO layout (``grefs(unc).json``, ``instances.json``, images).

Scenes: 6 shape kinds x 6 colours x 2 sizes, 1-6 objects per image, occlusions (every object keeps >= 55 % of its
area visible), textured and noisy backgrounds, images of varying size (half PNG, half JPEG of
varying quality: :func:`image_format`). Expressions name targets by attribute
("the red triangle", "the small blue star"), position ("the leftmost circle"), order ("the second square from the
left"), relation ("the heart left of the green hexagon") and several targets ("all green objects", "the circles").
Every family of expressions comes in a present and an absent form built from the same template ("the purple star"
when there is exactly one purple star, and when there is none; "the large red circle" when the red circle is small;
relations that hold for nothing), drawn so that about a third of each family is absent: the words of an expression
never tell whether its target is there, only the image does. Everything is a pure function of ``(seed, image index)``.

Output layout (``<out>/grefcoco`` is the ``ann_dir`` and ``<out>/images`` the ``image_dir`` of
:class:`gsva.data.grefcoco.GRefCOCO`)::

    <out>/grefcoco/grefs(unc).json
    <out>/grefcoco/instances.json
    <out>/images/synth_000000000001.png, synth_000000000002.jpg ...

Annotations: polygons for fully visible objects, uncompressed RLE for occluded ones (both are valid COCO).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import InputError

__all__ = ["COLORS", "SHAPES", "SIZES", "FAMILY_WEIGHTS", "ABSENT_RATE", "SceneObject", "Scene", "make_scene",
           "ExpressionFamily", "expression_candidates", "scene_expressions",
           "write_synthetic_grefcoco", "split_of", "image_format", "PNG_SHARE", "JPEG_QUALITY"]

COLORS = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220),
    "yellow": (240, 210, 30), "purple": (140, 60, 180), "orange": (250, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart")
PLURAL = {s: s + "s" for s in SHAPES}
SIZES = {"small": 0.085, "large": 0.15}
"""Circumradius as a fraction of the image's shorter side."""
SPLIT_CYCLE = ("train",) * 16 + ("val", "val", "testA", "testB")


def split_of(index: int) -> str:
    """Split of image ``index``: 80 % train, 10 % val, 5 % testA, 5 % testB, interleaved."""
    return SPLIT_CYCLE[index % len(SPLIT_CYCLE)]


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    polygon: list[float]
    visible: np.ndarray | None = None  # (H, W) uint8, after occlusion
    occluded: bool = False


@dataclass
class Scene:
    width: int
    height: int
    image: np.ndarray  # (H, W, 3) uint8
    objects: list[SceneObject]


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[float]:
    if shape == "circle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif shape == "square":
        pts = [(r * math.cos(rot + math.pi / 4 + k * math.pi / 2), r * math.sin(rot + math.pi / 4 + k * math.pi / 2))
               for k in range(4)]
    elif shape == "triangle":
        pts = [(r * math.cos(rot - math.pi / 2 + k * 2 * math.pi / 3), r * math.sin(rot - math.pi / 2 + k * 2 * math.pi / 3))
               for k in range(3)]
    elif shape == "hexagon":
        pts = [(r * math.cos(rot + k * math.pi / 3), r * math.sin(rot + k * math.pi / 3)) for k in range(6)]
    elif shape == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(rot - math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else 0.45 * r) * math.sin(rot - math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = [(r / 17 * 16 * math.sin(t) ** 3,
                -r / 17 * (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) + r * 0.1)
               for t in ts]
    else:
        raise ValueError(shape)
    return [float(v) for x, y in pts for v in (cx + x, cy + y)]


def _rasterize(polygon: list[float], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([polygon], h, w))[:, :, 0].astype(np.uint8)


def _background(rng: random.Random, nrng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([rng.randint(95, 200) for _ in range(3)], np.float32)
    base = base.mean() + (base - base.mean()) * 0.35  # muted, so object colours stand out
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    kind = rng.choice(["stripes", "checker", "gradient", "blobs", "plain"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":
        ang, period = rng.uniform(0, math.pi), rng.uniform(8, 30)
        img += (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) * 14)[..., None]
    elif kind == "checker":
        cell = rng.randint(10, 32)
        img += ((((xx // cell) + (yy // cell)) % 2) * 22 - 11)[..., None]
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        g = (xx * math.cos(ang) + yy * math.sin(ang)) / max(h, w)
        img += (g * 50 - 25)[..., None]
    elif kind == "blobs":
        for _ in range(rng.randint(3, 8)):
            bx, by, br = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 50)
            tint = np.array([rng.uniform(-25, 25) for _ in range(3)], np.float32)
            img += np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br ** 2))[..., None] * tint
    img += nrng.normal(0, rng.uniform(4, 14), size=img.shape).astype(np.float32)
    return img


def make_scene(seed: int, index: int) -> Scene:
    """Draw scene ``index`` of the dataset with ``seed`` (deterministic)."""
    rng = random.Random(f"{seed}-{index}")
    nrng = np.random.default_rng([seed, index])
    w, h = rng.randint(200, 320), rng.randint(180, 300)
    short = min(w, h)
    img = _background(rng, nrng, h, w)
    n = rng.randint(1, 6)
    objects: list[SceneObject] = []
    rasters: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(30):
            size = rng.choice(list(SIZES))
            r = SIZES[size] * short * rng.uniform(0.9, 1.1)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            obj = SceneObject(rng.choice(SHAPES), rng.choice(list(COLORS)), size, cx, cy, r, [])
            obj.polygon = _polygon(obj.shape, cx, cy, r, rng.uniform(0, 2 * math.pi) if obj.shape != "heart" else 0.0)
            raster = _rasterize(obj.polygon, h, w)
            # every earlier object must keep >= 55 % of its visible area; the new one is fully visible
            if all(((o.visible & (1 - raster)).sum() >= 0.55 * ro.sum()) for o, ro in zip(objects, rasters)):
                for o in objects:
                    newly_hidden = o.visible & raster
                    if newly_hidden.any():
                        o.occluded = True
                        o.visible = o.visible & (1 - raster)
                obj.visible = raster.copy()
                objects.append(obj)
                rasters.append(raster)
                break
    for obj, raster in zip(objects, rasters):
        color = np.array(COLORS[obj.color], np.float32) + np.array([rng.uniform(-12, 12) for _ in range(3)])
        shade = nrng.normal(0, 5, size=(h, w, 1)).astype(np.float32)
        m = raster.astype(bool)
        img[m] = (color[None, :] + shade[m])
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(w, h, image, objects)


# -- expressions -------------------------------------------------------------------------------------------------
def _the(rng: random.Random, phrase: str) -> str:
    return phrase if rng.random() < 0.8 else phrase[4:] if phrase.startswith("the ") else phrase


def _unique_desc(obj: SceneObject, objs: list[SceneObject]) -> str | None:
    """Shortest attribute description that picks out ``obj`` alone, or None."""
    if sum(o.shape == obj.shape for o in objs) == 1:
        return f"the {obj.shape}"
    if sum(o.shape == obj.shape and o.color == obj.color for o in objs) == 1:
        return f"the {obj.color} {obj.shape}"
    if sum(o.shape == obj.shape and o.color == obj.color and o.size == obj.size for o in objs) == 1:
        return f"the {obj.size} {obj.color} {obj.shape}"
    return None


_RELATIONS = (
    ("left of", lambda o, a, gx, gy: o.cx < a.cx - gx),
    ("right of", lambda o, a, gx, gy: o.cx > a.cx + gx),
    ("above", lambda o, a, gx, gy: o.cy < a.cy - gy),
    ("below", lambda o, a, gx, gy: o.cy > a.cy + gy),
)

FAMILY_WEIGHTS = {"shape": 0.10, "color_shape": 0.14, "size_color_shape": 0.10, "color_object": 0.08,
                  "position": 0.16, "ordinal": 0.06, "relation": 0.16, "all_color": 0.08, "plural": 0.06,
                  "color_plural": 0.06}
"""How often each expression family is drawn (each family has present and absent forms)."""
ABSENT_RATE = 0.32
"""Probability that a draw asks for an absent form of its family (about a third of all expressions)."""


@dataclass
class ExpressionFamily:
    """One family's expressions valid for a scene: present (sentence, object indices) and absent sentences."""

    present: list[tuple[str, list[int]]]
    absent: list[str]


def expression_candidates(objs: list[SceneObject], w: int, h: int) -> dict[str, ExpressionFamily]:
    """Every expression of every family that is valid for the scene, as present (sentence, indices) or absent.

    Each family has both forms built from the same template, so the words of an expression never tell whether its
    target is there (e.g. "the red star" is present when exactly one red star exists and absent when none does):
    only the image does. Ambiguous forms (two red stars for "the red star") are never produced.
    """
    idx = range(len(objs))
    fam = {k: ExpressionFamily([], []) for k in FAMILY_WEIGHTS}

    def count(**attrs) -> list[int]:
        return [i for i in idx if all(getattr(objs[i], k) == v for k, v in attrs.items())]

    groups = {s: count(shape=s) for s in SHAPES}
    for s in SHAPES:
        if len(groups[s]) == 1:
            fam["shape"].present.append((f"the {s}", groups[s]))
        elif not groups[s]:
            fam["shape"].absent.append(f"the {s}")
        for c in COLORS:
            hits = count(shape=s, color=c)
            if len(hits) == 1:
                fam["color_shape"].present.append((f"the {c} {s}", hits))
            elif not hits:
                fam["color_shape"].absent.append(f"the {c} {s}")
            for z in SIZES:
                exact = count(shape=s, color=c, size=z)
                if len(exact) == 1:
                    fam["size_color_shape"].present.append((f"the {z} {c} {s}", exact))
                elif not exact and groups[s]:
                    # the shape is in the image (often in this colour, at the other size): a hard negative
                    fam["size_color_shape"].absent.append(f"the {z} {c} {s}")
    for c in COLORS:
        hits = count(color=c)
        if len(hits) == 1:
            fam["color_object"].present.append((f"the {c} object", hits))
        elif not hits:
            fam["color_object"].absent.append(f"the {c} object")
        if len(hits) >= 2:
            fam["all_color"].present.append((f"all {c} objects", hits))
        elif not hits:
            fam["all_color"].absent.append(f"all {c} objects")
    gap_x, gap_y = 0.12 * w, 0.12 * h
    groups["object"] = list(idx)
    for name, members in groups.items():
        for axis, lo_word, hi_word, gap in (("cx", "leftmost", "rightmost", gap_x), ("cy", "topmost", "bottom", gap_y)):
            if not members and name != "object":
                fam["position"].absent += [f"the {lo_word} {name}", f"the {hi_word} {name}"]
            if len(members) < 2:
                continue
            order = sorted(members, key=lambda i: getattr(objs[i], axis))
            vals = [getattr(objs[i], axis) for i in order]
            if vals[1] - vals[0] >= gap:
                fam["position"].present.append((f"the {lo_word} {name}", [order[0]]))
            if vals[-1] - vals[-2] >= gap:
                fam["position"].present.append((f"the {hi_word} {name}", [order[-1]]))
        if name == "object":
            continue
        if not members:
            fam["ordinal"].absent += [f"the second {name} from the left", f"the second {name} from the right"]
        elif len(members) >= 3:
            order = sorted(members, key=lambda i: objs[i].cx)
            xs = [objs[i].cx for i in order]
            if xs[1] - xs[0] >= gap_x and xs[2] - xs[1] >= gap_x:
                fam["ordinal"].present.append((f"the second {name} from the left", [order[1]]))
            if xs[-1] - xs[-2] >= gap_x and xs[-2] - xs[-3] >= gap_x:
                fam["ordinal"].present.append((f"the second {name} from the right", [order[-2]]))
    for a in idx:
        anchor = _unique_desc(objs[a], objs)
        if anchor is None:
            continue
        for s in SHAPES:
            for word, test in _RELATIONS:
                hits = [i for i in idx if i != a and objs[i].shape == s and test(objs[i], objs[a], gap_x, gap_y)]
                if len(hits) == 1:
                    fam["relation"].present.append((f"the {s} {word} {anchor}", hits))
                elif not hits:
                    fam["relation"].absent.append(f"the {s} {word} {anchor}")
    for s in SHAPES:
        if len(groups[s]) >= 2:
            fam["plural"].present.append((f"the {PLURAL[s]}", groups[s]))
        elif not groups[s]:
            fam["plural"].absent.append(f"the {PLURAL[s]}")
        for c in COLORS:
            both = count(shape=s, color=c)
            if len(both) >= 2:
                fam["color_plural"].present.append((f"the {c} {PLURAL[s]}", both))
            elif not both and groups[s]:
                fam["color_plural"].absent.append(f"the {c} {PLURAL[s]}")
    return fam


def scene_expressions(scene: Scene, seed: int, index: int, per_image: int = 8) -> list[tuple[str, list[int]]]:
    """Pick up to ``per_image`` distinct (sentence, object indices) pairs; an empty index list marks an absent target.

    Only families with both a present and an absent form in this scene are drawn (weights :data:`FAMILY_WEIGHTS`);
    each draw takes the absent form with probability :data:`ABSENT_RATE`. So within every family about the same
    share of expressions is absent, and the words alone cannot predict ``[REJ]``: only the image can.
    """
    rng = random.Random(f"expr-{seed}-{index}")
    fam = expression_candidates(scene.objects, scene.width, scene.height)
    kinds = [k for k in FAMILY_WEIGHTS if fam[k].present and fam[k].absent]
    chosen: dict[str, list[int]] = {}
    for _ in range(per_image * 3):
        if len(chosen) >= per_image or not kinds:
            break
        kind = rng.choices(kinds, weights=[FAMILY_WEIGHTS[k] for k in kinds])[0]
        absent = rng.random() < ABSENT_RATE
        # an unused expression of the drawn family and form, if any is left (a repeat would skew the forms' shares)
        pool = [(a, []) for a in fam[kind].absent] if absent else fam[kind].present
        unused = [(sent, targets) for sent, targets in pool if sent not in chosen]
        if unused:
            sent, targets = rng.choice(unused)
            chosen[sent] = targets
    items = [(_the(rng, s), t) for s, t in chosen.items()]
    rng.shuffle(items)
    return items


# -- writing -----------------------------------------------------------------------------------------------------
PNG_SHARE = 0.5
"""Share of the images written losslessly (PNG); the others are JPEG at a quality drawn from ``JPEG_QUALITY``.

Why: a vision tower trained on JPEG files only leans on their artefacts. Measured with the stage-(a) tower trained
on an all-JPEG set (quality 92), on the same 150 scenes (seed 0): the crop reader named size, colour and shape
right on 0.86 of the objects read from the JPEG files but on 0.73 read from the lossless arrays (size 0.95 vs
0.81), and users give both (screenshots, generated scenes, photographs)."""

JPEG_QUALITY = (70, 95)
"""Range (inclusive) of the JPEG qualities drawn for the lossy images."""


def image_format(seed: int, index: int, png_share: float = PNG_SHARE) -> tuple[str, int | None]:
    """("png", None) or ("jpg", quality) for image ``index`` of the dataset with ``seed`` (deterministic)."""
    rng = random.Random(f"format-{seed}-{index}")
    if rng.random() < png_share:
        return "png", None
    return "jpg", rng.randint(*JPEG_QUALITY)


def write_synthetic_grefcoco(out: str | Path, seed: int = 0, num_images: int = 1000, per_image: int = 8,
                             png_share: float = PNG_SHARE) -> dict[str, int]:
    """Write ``num_images`` scenes in gRefCOCO layout under ``out``; return counts per split (images).

    A ``png_share`` of the images are PNG files, the others JPEG (:func:`image_format`). Raises FileExistsError if
    ``out/grefcoco`` already holds annotations (nothing is overwritten), ValueError for a share outside [0, 1].
    """
    if not 0.0 <= png_share <= 1.0:
        raise InputError(f"png_share must be in [0, 1], got {png_share}")
    out = Path(out)
    ann_dir, img_dir = out / "grefcoco", out / "images"
    if (ann_dir / "grefs(unc).json").exists():
        raise FileExistsError(f"{ann_dir} already holds a dataset; choose an empty --out")
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    counts: dict[str, int] = {}
    ann_id = ref_id = sent_id = 0
    for index in range(num_images):
        image_id = index + 1
        scene = make_scene(seed, index)
        split = split_of(index)
        counts[split] = counts.get(split, 0) + 1
        kind, quality = image_format(seed, index, png_share)
        file_name = f"synth_{image_id:012d}.{kind}"
        if quality is None:
            Image.fromarray(scene.image).save(img_dir / file_name)
        else:
            Image.fromarray(scene.image).save(img_dir / file_name, quality=quality)
        images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
        obj_ann = []
        for obj in scene.objects:
            ann_id += 1
            obj_ann.append(ann_id)
            if obj.occluded:
                seg = {"size": [scene.height, scene.width], "counts": _uncompressed_counts(obj.visible)}
                rle = mask_utils.frPyObjects(seg, scene.height, scene.width)
                area, bbox = float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
            else:
                seg = [[round(v, 2) for v in obj.polygon]]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, scene.height, scene.width))
                area, bbox = float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                                "segmentation": seg, "area": area, "bbox": bbox, "iscrowd": 0,
                                "attributes": {"color": obj.color, "size": obj.size}})
        for sent, targets in scene_expressions(scene, seed, index, per_image):
            ref_id += 1
            sent_id += 1
            ids = [obj_ann[t] for t in targets] or [-1]
            cats = [SHAPES.index(scene.objects[t].shape) + 1 for t in targets] or [-1]
            refs.append({"ref_id": ref_id, "image_id": image_id, "ann_id": ids, "category_id": cats,
                         "split": split, "file_name": file_name, "no_target": not targets,
                         "sentences": [{"sent": sent, "raw": sent, "sent_id": sent_id, "tokens": sent.split()}]})
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    (ann_dir / "instances.json").write_text(json.dumps(
        {"info": {"description": f"GSVA synthetic GRES scenes, seed {seed}"}, "images": images,
         "annotations": annotations, "categories": categories}))
    (ann_dir / "grefs(unc).json").write_text(json.dumps(refs))
    return counts


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros (COCO uncompressed RLE)."""
    flat = mask.reshape(-1, order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs
