"""Procedural GRES scenes written in the exact gRefCOCO layout (``grefs(unc).json``, ``instances.json``, images).

Scenes: 6 shape kinds x 6 colours x 2 sizes, 1-6 objects per image, occlusions (every object keeps >= 55 % of its
area visible), textured and noisy backgrounds, JPEG images of varying size. Expressions name targets by attribute
("the red triangle", "the small blue star"), position ("the leftmost circle"), order ("the second square from the
left"), relation ("the heart left of the green hexagon"), several targets ("all green objects", "the circles") and
absent targets (about a third; "the purple star" when there is none, "the large red circle" when the red circle is
small, relations that hold for nothing). Everything is a pure function of ``(seed, image index)``.

Output layout (``<out>/grefcoco`` is the ``ann_dir`` and ``<out>/images`` the ``image_dir`` of
:class:`gsva.data.grefcoco.GRefCOCO`)::

    <out>/grefcoco/grefs(unc).json
    <out>/grefcoco/instances.json
    <out>/images/synth_000000000001.jpg ...

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

__all__ = ["COLORS", "SHAPES", "SIZES", "SceneObject", "Scene", "make_scene", "scene_expressions",
           "write_synthetic_grefcoco", "split_of"]

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


def _present_candidates(objs: list[SceneObject], w: int, h: int) -> dict[str, list[tuple[str, list[int]]]]:
    cands: dict[str, list[tuple[str, list[int]]]] = {k: [] for k in
                                                      ("attribute", "position", "ordinal", "relation", "multi")}
    idx = range(len(objs))
    for i in idx:
        o = objs[i]
        d = _unique_desc(o, objs)
        if d is not None:
            cands["attribute"].append((d, [i]))
            if d == f"the {o.shape}" and sum(p.color == o.color for p in objs) == 1:
                cands["attribute"].append((f"the {o.color} {o.shape}", [i]))
        if sum(p.color == o.color for p in objs) == 1:
            cands["attribute"].append((f"the {o.color} object", [i]))
    gap_x, gap_y = 0.12 * w, 0.12 * h
    groups = {s: [i for i in idx if objs[i].shape == s] for s in SHAPES}
    groups["object"] = list(idx)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        for axis, lo_word, hi_word, gap in (("cx", "leftmost", "rightmost", gap_x), ("cy", "topmost", "bottom", gap_y)):
            order = sorted(members, key=lambda i: getattr(objs[i], axis))
            vals = [getattr(objs[i], axis) for i in order]
            if vals[1] - vals[0] >= gap:
                cands["position"].append((f"the {lo_word} {name}", [order[0]]))
            if vals[-1] - vals[-2] >= gap:
                cands["position"].append((f"the {hi_word} {name}", [order[-1]]))
        if len(members) >= 3 and name != "object":
            order = sorted(members, key=lambda i: objs[i].cx)
            xs = [objs[i].cx for i in order]
            if xs[1] - xs[0] >= gap_x and xs[2] - xs[1] >= gap_x:
                cands["ordinal"].append((f"the second {name} from the left", [order[1]]))
            if xs[-1] - xs[-2] >= gap_x and xs[-2] - xs[-3] >= gap_x:
                cands["ordinal"].append((f"the second {name} from the right", [order[-2]]))
    for a in idx:
        anchor = _unique_desc(objs[a], objs)
        if anchor is None:
            continue
        for s in SHAPES:
            for word, test in _RELATIONS:
                hits = [i for i in idx if i != a and objs[i].shape == s and test(objs[i], objs[a], gap_x, gap_y)]
                if len(hits) == 1:
                    cands["relation"].append((f"the {s} {word} {anchor}", hits))
    for c in COLORS:
        members = [i for i in idx if objs[i].color == c]
        if len(members) >= 2:
            cands["multi"].append((f"all {c} objects", members))
    for s in SHAPES:
        if len(groups[s]) >= 2:
            cands["multi"].append((f"the {PLURAL[s]}", groups[s]))
            for c in COLORS:
                both = [i for i in groups[s] if objs[i].color == c]
                if len(both) >= 2:
                    cands["multi"].append((f"the {c} {PLURAL[s]}", both))
    return cands


_RELATIONS = (
    ("left of", lambda o, a, gx, gy: o.cx < a.cx - gx),
    ("right of", lambda o, a, gx, gy: o.cx > a.cx + gx),
    ("above", lambda o, a, gx, gy: o.cy < a.cy - gy),
    ("below", lambda o, a, gx, gy: o.cy > a.cy + gy),
)


def _absent_candidates(rng: random.Random, objs: list[SceneObject], w: int, h: int) -> list[str]:
    out = []
    present_pairs = {(o.color, o.shape) for o in objs}
    for _ in range(12):
        c, s = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if (c, s) not in present_pairs:
            out.append(f"the {c} {s}")
    colors = {o.color for o in objs}
    shapes = {o.shape for o in objs}
    out += [f"all {c} objects" for c in COLORS if c not in colors][:2]
    out += [f"the {PLURAL[s]}" for s in SHAPES if s not in shapes][:2]
    for o in objs:  # hard negatives: right colour and shape, wrong size
        other = "small" if o.size == "large" else "large"
        if not any(p.color == o.color and p.shape == o.shape and p.size == other for p in objs):
            out.append(f"the {other} {o.color} {o.shape}")
    gap_x, gap_y = 0.12 * w, 0.12 * h
    for a in range(len(objs)):
        anchor = _unique_desc(objs[a], objs)
        if anchor is None:
            continue
        s = rng.choice(sorted(shapes))
        word, test = rng.choice(_RELATIONS)
        if not any(i != a and objs[i].shape == s and test(objs[i], objs[a], gap_x, gap_y) for i in range(len(objs))):
            out.append(f"the {s} {word} {anchor}")
    return out


PRESENT_WEIGHTS = {"attribute": 0.40, "position": 0.18, "ordinal": 0.06, "relation": 0.12, "multi": 0.24}


def scene_expressions(scene: Scene, seed: int, index: int, per_image: int = 8) -> list[tuple[str, list[int]]]:
    """Pick about ``per_image`` (sentence, object indices) pairs; an empty index list marks an absent target.

    About a third are absent targets; present ones are drawn by kind with :data:`PRESENT_WEIGHTS`.
    """
    rng = random.Random(f"expr-{seed}-{index}")
    objs, w, h = scene.objects, scene.width, scene.height
    cands = _present_candidates(objs, w, h)
    absent = list(dict.fromkeys(_absent_candidates(rng, objs, w, h)))
    n_absent = max(1, round(per_image / 3))
    chosen: dict[str, list[int]] = {}
    kinds = [k for k in PRESENT_WEIGHTS if cands[k]]
    for _ in range(per_image * 4):
        if len(chosen) >= per_image - n_absent or not kinds:
            break
        kind = rng.choices(kinds, weights=[PRESENT_WEIGHTS[k] for k in kinds])[0]
        sent, targets = rng.choice(cands[kind])
        chosen.setdefault(sent, targets)
    rng.shuffle(absent)
    for sent in absent[:n_absent]:
        chosen.setdefault(sent, [])
    items = [(_the(rng, s), t) for s, t in chosen.items()]
    rng.shuffle(items)
    return items


# -- writing -----------------------------------------------------------------------------------------------------
def write_synthetic_grefcoco(out: str | Path, seed: int = 0, num_images: int = 1000, per_image: int = 8,
                             jpeg_quality: int = 92) -> dict[str, int]:
    """Write ``num_images`` scenes in gRefCOCO layout under ``out``; return counts per split (images).

    Raises FileExistsError if ``out/grefcoco`` already holds annotations (nothing is overwritten).
    """
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
        file_name = f"synth_{image_id:012d}.jpg"
        Image.fromarray(scene.image).save(img_dir / file_name, quality=jpeg_quality)
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
