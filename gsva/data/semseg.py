"""Readers for the semantic- and part-segmentation sources of the paper's pre-training mixture.

Each reader indexes one dataset in its official on-disk layout under the GSVA ``--dataset_dir`` (LeapLabTHU/GSVA at
618dc79, ``data/sem_seg_dataset.py``, the ``init_*`` functions) and turns image ``i`` into a :class:`SemSegRecord`: the
image path and the distinct targets present, each a name and a binary mask. Paths are relative to ``dataset_dir``:

===========  ====================================================================  ===============================
dataset      files                                                                 classes
===========  ====================================================================  ===============================
ade20k       ``ade20k/images/training/*.jpg``, ``ade20k/annotations/training/*.png``  150 (pixel v -> class v-1; 0
                                                                                   ignored)
cocostuff    ``cocostuff/train2017/*.png``, images ``coco/train2017/*.jpg``          182 (pixel v -> class v; 255 and
                                                                                   names with "-" ignored)
mapillary    ``mapillary/config_v2.0.json``, ``mapillary/training/v2.0/labels/*.png``  ``labels[v]["readable"]``
             and ``mapillary/training/images/*.jpg``                                 lower-cased
paco_lvis    ``vlpart/paco/annotations/paco_lvis_v1_train.json`` (COCO), images      "obj:part" or "obj" categories
             ``coco/<file_name>``
pascal_part  ``vlpart/pascal_part/train.json`` (COCO), images                        "obj:part" categories
             ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>``
===========  ====================================================================  ===============================

Label maps are single-channel PNGs whose pixel value is the class index (Mapillary's palette PNGs included).
Class names: ADE20K and COCO-Stuff from ``gsva/data/literals`` (the same names as the official literals),
Mapillary from its config file. Part categories "obj_(sense):part_(sense)" lose the "_(...)" suffix (official
``init_paco_lvis``); a part is named "obj part" or "the part of the obj" at random when a question is built.

Documented differences from the official sampler: Mapillary's "unlabeled" class is ignored (the official code can
ask for "unlabeled"); underscores in LVIS names become spaces ("trash_can" -> "trash can"); a part category with
several instances in an image is one target (the union), where the official code samples annotations and can ask
for the same name twice with different masks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .masks import decode_segmentation
from .refer import AnnotationError, coco_images, read_json

__all__ = ["PartName", "SemSegRecord", "LabelMapDataset", "PartDataset", "SEMSEG_DATASETS", "open_semseg",
           "literal_classes"]

IGNORE_LABEL = 255


@dataclass(frozen=True)
class PartName:
    """An object part, phrased "obj part" or "the part of the obj" when a question is built (official 50/50)."""

    obj: str
    part: str

    def phrase(self, use_of_form: bool) -> str:
        return f"the {self.part} of the {self.obj}" if use_of_form else f"{self.obj} {self.part}"


@dataclass
class SemSegRecord:
    """One image's distinct targets. ``names[k]`` is a class name (str) or a :class:`PartName`; ``mask(k)`` returns
    target k's mask, (H, W) uint8 {0, 1} at the image's size."""

    image_path: Path
    names: list
    mask: Callable[[int], np.ndarray]


def literal_classes(name: str) -> list[str]:
    """The class list shipped in ``gsva/data/literals/<name>.json`` (``ade20k_classes``, ``cocostuff_classes``)."""
    text = resources.files("gsva.data").joinpath("literals", f"{name}.json").read_text()
    return list(json.loads(text)["classes"])


def _read_label(path: Path) -> np.ndarray:
    """A label PNG as (H, W) integer array of class indices. Raises AnnotationError for an unreadable or RGB file."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise AnnotationError(f"{path}: label maps must be single-channel class indices, got mode {im.mode}")
            return np.array(im)
    except AnnotationError:
        raise
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: cannot read the label map ({exc})") from None


class LabelMapDataset:
    """A folder of (image, label PNG) pairs with a class list (ADE20K, COCO-Stuff, Mapillary).

    Args:
        name: dataset name (for messages). pairs: [(image path, label path)], sorted. classes: class names by index.
        to_class: maps the raw label array to class indices with :data:`IGNORE_LABEL` (255) for "no class".
    Raises AnnotationError when ``pairs`` is empty.
    """

    def __init__(self, name: str, pairs: list[tuple[Path, Path]], classes: list[str],
                 to_class: Callable[[np.ndarray], np.ndarray]) -> None:
        if not pairs:
            raise AnnotationError(f"{name}: no image/label pairs found")
        self.name, self.pairs, self.classes, self.to_class = name, pairs, classes, to_class

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SemSegRecord:
        image_path, label_path = self.pairs[index]
        try:
            label = self.to_class(_read_label(label_path))
        except AnnotationError as exc:
            raise AnnotationError(exc.args[0] if str(label_path) in exc.args[0] else f"{label_path}: {exc}") from None
        present = [int(v) for v in np.unique(label) if v != IGNORE_LABEL]
        for v in present:
            if v >= len(self.classes):
                raise AnnotationError(f"{label_path}: class index {v} is outside the {len(self.classes)} "
                                      f"{self.name} classes")
        return SemSegRecord(image_path, [self.classes[v] for v in present],
                            lambda k: (label == present[k]).astype(np.uint8))

    def texts(self) -> list[str]:
        return list(self.classes)


def _ade20k_to_class(label: np.ndarray) -> np.ndarray:
    out = label.astype(np.int64) - 1  # official: 0 -> 255, then -1, then 254 -> 255
    out[label == 0] = IGNORE_LABEL
    out[out == IGNORE_LABEL - 1] = IGNORE_LABEL
    return out


def open_ade20k(dataset_dir: Path) -> LabelMapDataset:
    images = dataset_dir / "ade20k" / "images" / "training"
    labels = dataset_dir / "ade20k" / "annotations" / "training"
    if not images.is_dir():
        raise AnnotationError(f"{images}: ADE20K training images not found")
    pairs = [(p, labels / (p.stem + ".png")) for p in sorted(images.glob("*.jpg"))]
    missing = [str(lab) for _, lab in pairs if not lab.exists()]
    if missing:
        raise AnnotationError(f"ADE20K: {len(missing)} images have no label, e.g. {missing[0]}")
    return LabelMapDataset("ade20k", pairs, literal_classes("ade20k_classes"), _ade20k_to_class)


def open_cocostuff(dataset_dir: Path) -> LabelMapDataset:
    labels = dataset_dir / "cocostuff" / "train2017"
    if not labels.is_dir():
        raise AnnotationError(f"{labels}: COCO-Stuff label maps not found")
    images = dataset_dir / "coco" / "train2017"
    pairs = [(images / (p.stem + ".jpg"), p) for p in sorted(labels.glob("*.png"))]
    missing = [str(img) for img, _ in pairs if not img.exists()]
    if missing:
        raise AnnotationError(f"COCO-Stuff: {len(missing)} label maps have no image, e.g. {missing[0]}")
    classes = literal_classes("cocostuff_classes")
    lut = np.full(256, IGNORE_LABEL, np.int64)
    for i, c in enumerate(classes):
        if "-" not in c:  # official: "-" classes (wall-other, floor-wood, ...) are ignored
            lut[i] = i

    def to_class(label: np.ndarray) -> np.ndarray:
        if label.max(initial=0) > 255:
            raise AnnotationError("COCO-Stuff labels must be 8-bit")
        return lut[label.astype(np.int64)]

    return LabelMapDataset("cocostuff", pairs, classes, to_class)


def open_mapillary(dataset_dir: Path) -> LabelMapDataset:
    root = dataset_dir / "mapillary"
    config = read_json(root / "config_v2.0.json")
    try:
        classes = [str(x["readable"]).lower() for x in config["labels"]]
    except (KeyError, TypeError) as exc:
        raise AnnotationError(f"{root / 'config_v2.0.json'}: expected labels [{{readable, ...}}] ({exc!r})") from None
    labels = root / "training" / "v2.0" / "labels"
    pairs = [(root / "training" / "images" / (p.stem + ".jpg"), p) for p in sorted(labels.glob("*.png"))]
    missing = [str(img) for img, _ in pairs if not img.exists()]
    if missing:
        raise AnnotationError(f"Mapillary: {len(missing)} label maps have no image, e.g. {missing[0]}")
    lut = np.array([IGNORE_LABEL if c == "unlabeled" else i for i, c in enumerate(classes)], np.int64)

    def to_class(label: np.ndarray) -> np.ndarray:
        if label.max(initial=0) >= len(lut):
            raise AnnotationError(f"Mapillary label value {int(label.max())} >= {len(lut)} classes")
        return lut[label.astype(np.int64)]

    return LabelMapDataset("mapillary", pairs, classes, to_class)


def _clean(name: str) -> str:
    return name.split("_(")[0].replace("_", " ").strip()


class PartDataset:
    """A COCO-format part-segmentation file (PACO-LVIS, PASCAL-Part): one record per image with annotations.

    Args:
        name: dataset name. json_path: the COCO file. image_dir: folder its ``file_name`` s are relative to.
    Raises AnnotationError naming the file and entry for anything malformed.
    """

    def __init__(self, name: str, json_path: Path, image_dir: Path) -> None:
        data = read_json(json_path)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                  for k in ("images", "annotations", "categories")):
            raise AnnotationError(f"{json_path}: expected a COCO object with images, annotations, categories")
        self.name, self.json_path, self.image_dir = name, json_path, image_dir
        self.categories: dict[int, str | PartName] = {}
        for i, cat in enumerate(data["categories"]):
            try:
                parts = str(cat["name"]).strip().split(":")
                cid = int(cat["id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise AnnotationError(f"{json_path}: categories[{i}] is malformed ({exc!r})") from None
            if len(parts) > 2 or not all(parts):
                raise AnnotationError(f"{json_path}: category {cat['name']!r} is not 'obj' or 'obj:part'")
            self.categories[cid] = _clean(parts[0]) if len(parts) == 1 else PartName(_clean(parts[0]),
                                                                                      _clean(parts[1]))
        self.images = coco_images(data["images"], json_path)
        self.anns: dict[int, list[dict]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "segmentation")):
                raise AnnotationError(f"{json_path}: annotations[{i}] lacks image_id/category_id/segmentation")
            if ann["category_id"] not in self.categories or ann["image_id"] not in self.images:
                raise AnnotationError(f"{json_path}: annotations[{i}] names an unknown image or category")
            self.anns.setdefault(int(ann["image_id"]), []).append(ann)
        self.image_ids = sorted(self.anns)  # images without annotations are never drawn (official: redraw)
        if not self.image_ids:
            raise AnnotationError(f"{json_path}: no annotated image")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> SemSegRecord:
        image_id = self.image_ids[index]
        img = self.images[image_id]
        by_cat: dict[int, list[dict]] = {}
        for ann in self.anns[image_id]:
            by_cat.setdefault(int(ann["category_id"]), []).append(ann)
        cats = sorted(by_cat)

        def mask(k: int) -> np.ndarray:
            out = np.zeros((img["height"], img["width"]), np.uint8)
            for ann in by_cat[cats[k]]:
                try:
                    out |= decode_segmentation(ann["segmentation"], img["height"], img["width"])
                except ValueError as exc:
                    raise AnnotationError(f"{self.json_path}: annotation {ann.get('id')}: {exc}") from None
            return out

        return SemSegRecord(self.image_dir / img["file_name"], [self.categories[c] for c in cats], mask)

    def texts(self) -> list[str]:
        out = []
        for name in self.categories.values():
            out += [name.phrase(False), name.phrase(True)] if isinstance(name, PartName) else [name]
        return out


def open_paco_lvis(dataset_dir: Path) -> PartDataset:
    return PartDataset("paco_lvis", dataset_dir / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json",
                       dataset_dir / "coco")


def open_pascal_part(dataset_dir: Path) -> PartDataset:
    root = dataset_dir / "vlpart" / "pascal_part"
    return PartDataset("pascal_part", root / "train.json", root / "VOCdevkit" / "VOC2010" / "JPEGImages")


SEMSEG_DATASETS = {"ade20k": open_ade20k, "cocostuff": open_cocostuff, "mapillary": open_mapillary,
                   "paco_lvis": open_paco_lvis, "pascal_part": open_pascal_part}
"""The official ``--sem_seg_data`` names (``partimagenet`` has no loader in the official code either)."""


def open_semseg(name: str, dataset_dir: str | Path) -> LabelMapDataset | PartDataset:
    """Open semantic-segmentation source ``name`` under ``dataset_dir``. Raises ValueError for an unknown name and
    AnnotationError for missing or malformed files."""
    if name not in SEMSEG_DATASETS:
        raise InputError(f"unknown semantic segmentation dataset {name!r}; known: {', '.join(SEMSEG_DATASETS)}")
    return SEMSEG_DATASETS[name](Path(dataset_dir))
