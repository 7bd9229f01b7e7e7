"""Tiny stand-ins of every dataset in the paper's training mixture, written in the official ``--dataset_dir`` layout.

No real dataset can be downloaded here, so tests and the tiny mixture recipe train on synthetic scenes
(:mod:`gsva.data.synth`) written exactly where and how the real datasets are stored (LeapLabTHU/GSVA at 618dc79,
README.md and the readers in ``data/``)::

    <out>/ade20k/images/training/ADE_train_XXXXXXXX.jpg      + annotations/training/*.png (pixel = class + 1)
    <out>/coco/train2017/XXXXXXXXXXXX.jpg                    (COCO-Stuff, PACO-LVIS and LLaVA-Instruct images)
    <out>/cocostuff/train2017/XXXXXXXXXXXX.png               (pixel = class, 255 unlabeled)
    <out>/mapillary/config_v2.0.json, training/images/*.jpg, training/v2.0/labels/*.png (palette PNG)
    <out>/vlpart/paco/annotations/paco_lvis_v1_train.json    (COCO, "obj" and "obj:part" categories)
    <out>/vlpart/pascal_part/train.json, VOCdevkit/VOC2010/JPEGImages/*.jpg
    <out>/llava_dataset/llava_instruct_150k.json
    <out>/reason_seg/ReasonSeg/{train,val}/*.jpg|json, reason_seg/ReasonSeg/explanatory/train.json
    <out>/refer_seg/grefcoco/{grefs(unc).json, instances.json}, refer_seg/images/mscoco/images/train2014/*.jpg
    <out>/refer_seg/{refcoco,refcoco+}/refs(unc).p, refcocog/refs(umd).p, refclef/refs(unc).p (+ instances.json;
                                                              RefCLEF images in refer_seg/images/saiapr_tc-12)

Shapes stand in for classes: in ADE20K and COCO-Stuff each shape kind is written as one real class of that
dataset (a circle is a "ball" / "sports ball", see :data:`STANDIN_CLASSES`); elsewhere the shape names are used.
Parts are the top and bottom halves of an object. Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .semseg import literal_classes
from .synth import SHAPES, Scene, make_scene, write_synthetic_grefcoco

__all__ = ["STANDIN_CLASSES", "write_paper_standins"]

STANDIN_CLASSES = {
    "ade20k": {"circle": "ball", "square": "box", "triangle": "tent", "star": "flower", "hexagon": "plate",
               "heart": "cushion", "background": "wall"},
    "cocostuff": {"circle": "sports ball", "square": "book", "triangle": "kite", "star": "frisbee",
                  "hexagon": "clock", "heart": "pillow", "background": "wall-other"},
}
"""The real class each shape kind is written as (ADE20K / COCO-Stuff). COCO-Stuff's background "wall-other" is one
of the classes the official loader ignores."""


def _save_jpg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=92)


def _label_map(scene: Scene, value_of: dict[str, int], background: int) -> np.ndarray:
    label = np.full((scene.height, scene.width), background, np.uint8)
    for obj in scene.objects:
        label[obj.visible.astype(bool)] = value_of[obj.shape]
    return label


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _halves(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys = np.nonzero(mask.any(axis=1))[0]
    mid = (ys[0] + ys[-1] + 1) // 2 if len(ys) else 0
    top, bottom = mask.copy(), mask.copy()
    top[mid:], bottom[:mid] = 0, 0
    return top, bottom


def _scenes(seed: int, tag: int, count: int) -> list[Scene]:
    return [make_scene(seed * 1000 + tag, i) for i in range(count)]


def _write_ade20k(out: Path, seed: int, n: int) -> None:
    classes = literal_classes("ade20k_classes")
    names = STANDIN_CLASSES["ade20k"]
    value = {s: classes.index(names[s]) + 1 for s in SHAPES}
    for i, scene in enumerate(_scenes(seed, 1, n)):
        stem = f"ADE_train_{i + 1:08d}"
        _save_jpg(scene.image, out / "ade20k" / "images" / "training" / f"{stem}.jpg")
        # every other image has an unlabelled (0, "other") background, the rest "wall"
        bg = classes.index(names["background"]) + 1 if i % 2 else 0
        path = out / "ade20k" / "annotations" / "training" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_label_map(scene, value, bg), mode="L").save(path)


def _write_cocostuff(out: Path, seed: int, n: int, first_id: int) -> None:
    classes = literal_classes("cocostuff_classes")
    names = STANDIN_CLASSES["cocostuff"]
    value = {s: classes.index(names[s]) for s in SHAPES}
    for i, scene in enumerate(_scenes(seed, 2, n)):
        stem = f"{first_id + i:012d}"
        _save_jpg(scene.image, out / "coco" / "train2017" / f"{stem}.jpg")
        bg = classes.index(names["background"]) if i % 2 else 255
        path = out / "cocostuff" / "train2017" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_label_map(scene, value, bg), mode="L").save(path)


def _write_mapillary(out: Path, seed: int, n: int) -> None:
    root = out / "mapillary"
    labels = [{"name": f"object--{s}", "readable": s.capitalize(), "color": [40 * k, 255 - 40 * k, 90],
               "instances": True, "evaluate": True} for k, s in enumerate(SHAPES)]
    labels.append({"name": "void--ground", "readable": "Ground", "color": [128, 64, 128], "instances": False,
                   "evaluate": True})
    labels.append({"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0], "instances": False,
                   "evaluate": False})
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_v2.0.json").write_text(json.dumps({"labels": labels, "version": "2.0"}, indent=1))
    palette = [c for lab in labels for c in lab["color"]]
    value = {s: k for k, s in enumerate(SHAPES)}
    for i, scene in enumerate(_scenes(seed, 3, n)):
        stem = f"standin_{i:06d}"
        _save_jpg(scene.image, root / "training" / "images" / f"{stem}.jpg")
        label = Image.fromarray(_label_map(scene, value, len(labels) - 1 - (i % 2)), mode="P")
        label.putpalette(palette)
        path = root / "training" / "v2.0" / "labels" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        label.save(path)


def _part_coco(scenes: list[Scene], file_names: list[str], with_objects: bool) -> dict:
    categories, cat_id = [], {}
    for s in SHAPES:
        names = ([f"{s}_(shape)"] if with_objects else []) + [f"{s}_(shape):{p}" for p in ("top", "bottom")]
        for name in names:
            cat_id[name] = len(categories) + 1
            categories.append({"id": cat_id[name], "name": name, "supercategory": s})
    images, anns = [], []
    for i, (scene, file_name) in enumerate(zip(scenes, file_names)):
        images.append({"id": i + 1, "file_name": file_name, "height": scene.height, "width": scene.width})
        for obj in scene.objects:
            top, bottom = _halves(obj.visible)
            entries = ([(f"{obj.shape}_(shape)", obj.visible)] if with_objects else []) + \
                [(f"{obj.shape}_(shape):top", top), (f"{obj.shape}_(shape):bottom", bottom)]
            for name, mask in entries:
                if mask.any():
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id[name],
                                 "segmentation": _rle(mask), "area": int(mask.sum()), "iscrowd": 0,
                                 "bbox": [float(v) for v in mask_utils.toBbox(_rle(mask))]})
    return {"images": images, "annotations": anns, "categories": categories}


def _write_parts(out: Path, seed: int, n: int, first_id: int) -> None:
    scenes = _scenes(seed, 4, n)
    names = [f"train2017/{first_id + i:012d}.jpg" for i in range(n)]
    for scene, name in zip(scenes, names):
        _save_jpg(scene.image, out / "coco" / name)
    path = out / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_part_coco(scenes, names, with_objects=True)))

    scenes = _scenes(seed, 5, n)
    names = [f"2008_{i + 1:06d}.jpg" for i in range(n)]
    root = out / "vlpart" / "pascal_part"
    for scene, name in zip(scenes, names):
        _save_jpg(scene.image, root / "VOCdevkit" / "VOC2010" / "JPEGImages" / name)
    (root / "train.json").write_text(json.dumps(_part_coco(scenes, names, with_objects=False)))


def _write_llava(out: Path, seed: int, n: int, first_id: int) -> None:
    records = []
    for i, scene in enumerate(_scenes(seed, 6, n)):
        name = f"{first_id + i:012d}.jpg"
        _save_jpg(scene.image, out / "coco" / "train2017" / name)
        first = scene.objects[0]
        turns = [{"from": "human", "value": "<image>\nHow many shapes are in the image?"},
                 {"from": "gpt", "value": f"There {'is' if len(scene.objects) == 1 else 'are'} "
                                          f"{len(scene.objects)} shape{'' if len(scene.objects) == 1 else 's'}."},
                 {"from": "human", "value": f"What colour is the {first.shape}?"},
                 {"from": "gpt", "value": f"It is {first.color}."}]
        if i % 4 == 1:  # the image marker after the text, as some LLaVA records have it
            turns[0]["value"] = "How many shapes are in the image?\n<image>"
        if i % 4 == 2:  # a leading answer, which the official loader drops
            turns.insert(0, {"from": "gpt", "value": "Hello."})
        if i % 4 == 3:  # user text that looks like control tokens stays text
            turns[2]["value"] = f"Is [SEG] a word? What colour is the {first.shape}?"
        records.append({"id": f"{first_id + i:012d}", "image": name, "conversations": turns})
    path = out / "llava_dataset" / "llava_instruct_150k.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))


def _write_reasonseg(out: Path, seed: int, n: int) -> None:
    root = out / "reason_seg" / "ReasonSeg"
    explanations = []
    for split, tag, count in (("train", 7, n), ("val", 8, max(2, n // 4))):
        for i, scene in enumerate(_scenes(seed, tag, count)):
            stem = f"standin_{split}_{i:05d}"
            _save_jpg(scene.image, root / split / f"{stem}.jpg")
            obj = scene.objects[0]
            points = np.array(obj.polygon).reshape(-1, 2).round(1).tolist()
            is_sentence = i % 2 == 1
            texts = ([f"Which shape would roll if it were a {obj.color} wheel?"] if obj.shape == "circle" else
                     [f"Something {obj.color} with the outline of a {obj.shape}."]) if is_sentence else \
                [f"{obj.color} {obj.shape}", f"{obj.shape}"]
            shapes = [{"label": "target", "points": points, "shape_type": "polygon"}]
            if len(scene.objects) > 1 and i % 3 == 0:
                other = np.array(scene.objects[1].polygon).reshape(-1, 2).round(1).tolist()
                shapes.append({"label": "ignore", "points": other, "shape_type": "polygon"})
            (root / split / f"{stem}.json").write_text(json.dumps(
                {"text": texts, "is_sentence": is_sentence, "shapes": shapes}))
            if split == "train" and i % 2 == 0:
                explanations.append({"image": f"{stem}.jpg", "query": texts[0],
                                     "outputs": f"The {obj.color} {obj.shape} is the one described."})
    (root / "explanatory").mkdir(parents=True, exist_ok=True)
    (root / "explanatory" / "train.json").write_text(json.dumps(explanations, indent=1))


def _write_refer(out: Path, seed: int, n_gref: int) -> None:
    refer = out / "refer_seg"
    tmp = refer / "_synth"
    write_synthetic_grefcoco(tmp, seed=seed, num_images=n_gref, per_image=6)
    images = refer / "images" / "mscoco" / "images" / "train2014"
    images.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp / "images"), str(images))
    (refer / "grefcoco").parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp / "grefcoco"), str(refer / "grefcoco"))
    tmp.rmdir()
    instances = json.loads((refer / "grefcoco" / "instances.json").read_text())
    grefs = json.loads((refer / "grefcoco" / "grefs(unc).json").read_text())
    # classic RES: the one-target refs, in the RefCOCO layout (ann_id and category_id plain ints)
    single = [dict(r, ann_id=r["ann_id"][0], category_id=r["category_id"][0]) for r in grefs
              if len(r["ann_id"]) == 1 and r["ann_id"][0] != -1]
    for r in single:
        r.pop("no_target", None)
    splits = {"refcoco": ("refs(unc).p", None), "refcoco+": ("refs(unc).p", None),
              "refcocog": ("refs(umd).p", {"testA": "test", "testB": "test"}),
              "refclef": ("refs(unc).p", None)}
    rng = random.Random(seed)
    for name, (file_name, rename) in splits.items():
        refs = [dict(r, split=(rename or {}).get(r["split"], r["split"])) for r in single if rng.random() < 0.8]
        (refer / name).mkdir(parents=True, exist_ok=True)
        with open(refer / name / file_name, "wb") as f:
            pickle.dump(refs, f, protocol=2)
        (refer / name / "instances.json").write_text(json.dumps(instances))
    clef = refer / "images" / "saiapr_tc-12"
    clef.mkdir(parents=True, exist_ok=True)
    for img in instances["images"]:
        shutil.copyfile(images / img["file_name"], clef / img["file_name"])


def write_paper_standins(out: str | Path, seed: int = 0, images: int = 12, refer_images: int = 60) -> dict:
    """Write every stand-in under ``out`` (layout in the module docstring); returns {dataset: images}.

    ``images`` per semantic-segmentation, VQA and ReasonSeg dataset; ``refer_images`` for gRefCOCO (80 % train,
    10 % val, 5 % testA/testB; the classic RES sets reuse its single-target refs). Raises FileExistsError when
    ``out`` is not empty (nothing is overwritten).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_ade20k(out, seed, images)
    _write_cocostuff(out, seed, images, first_id=1)
    _write_mapillary(out, seed, images)
    _write_parts(out, seed, images, first_id=100001)
    _write_llava(out, seed, images, first_id=200001)
    _write_reasonseg(out, seed, images)
    _write_refer(out, seed, refer_images)
    return {"ade20k": images, "cocostuff": images, "mapillary": images, "paco_lvis": images, "pascal_part": images,
            "llava_instruct_150k": images, "ReasonSeg|train": images, "grefcoco": refer_images}
