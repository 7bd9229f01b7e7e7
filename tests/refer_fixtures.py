"""Tiny datasets written in the real on-disk formats of gRefCOCO, RefCOCO (pickles), Ref-ZOM and ReasonSeg.

Two images (image 1: 20x16, image 2: 12x10). Instances: 1 polygon (rectangle x 2..8, y 3..7 on image 1),
2 uncompressed RLE (image 1), 3 compressed RLE (image 2), 4 crowd (image 2; never part of a target mask).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

H1, W1, H2, W2 = 16, 20, 10, 12


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


POLY_MASK = rect(H1, W1, 2, 3, 9, 8)  # the polygon below, as pycocotools rasterises it
RLE_MASK = rect(H1, W1, 12, 0, 16, 4)
CRLE_MASK = rect(H2, W2, 0, 0, 5, 5)
CROWD_MASK = rect(H2, W2, 6, 6, 12, 10)


def _uncompressed(m):
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def _compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": list(m.shape), "counts": rle["counts"].decode()}


def write_instances(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    poly = [[2, 3, 9, 3, 9, 8, 2, 8]]
    inst = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H1, "width": W1},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H2, "width": W2}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly, "iscrowd": 0, "bbox": [2, 3, 7, 5]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _uncompressed(RLE_MASK), "iscrowd": 0,
             "bbox": [12, 0, 4, 4]},
            {"id": 3, "image_id": 2, "category_id": 1, "segmentation": _compressed(CRLE_MASK), "iscrowd": 0,
             "bbox": [0, 0, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 2, "segmentation": _uncompressed(CROWD_MASK), "iscrowd": 1,
             "bbox": [6, 6, 6, 4]},
        ],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cup"}],
    }
    (folder / "instances.json").write_text(json.dumps(inst))


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H1, W1, 3), dtype=np.uint8)).save(folder / "COCO_train2014_000000000001.jpg")
    Image.fromarray(rng.integers(0, 255, (H2, W2, 3), dtype=np.uint8)).save(folder / "COCO_train2014_000000000002.jpg")


def _sent(i, text):
    return {"sent": text, "raw": text.capitalize() + ".", "sent_id": i, "tokens": text.split()}


def write_grefcoco(root: Path) -> None:
    """``<root>/grefcoco/{grefs(unc).json, instances.json}`` + ``<root>/images/mscoco/images/train2014``."""
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": [1], "category_id": [1], "split": "val", "sentences": [_sent(10, "left dog")]},
        {"ref_id": 1, "image_id": 1, "ann_id": [1, 2], "category_id": [1, 2], "split": "val",
         "sentences": [_sent(11, "dog and cup"), _sent(12, "both things")]},
        {"ref_id": 2, "image_id": 1, "ann_id": [-1], "category_id": [-1], "split": "val", "sentences": [_sent(13, "the zebra")]},
        {"ref_id": 3, "image_id": 2, "ann_id": [3, 4], "category_id": [1, 2], "split": "val", "sentences": [_sent(14, "all dogs")]},
        {"ref_id": 4, "image_id": 2, "ann_id": [3], "category_id": [1], "split": "train", "sentences": [_sent(15, "a dog")]},
    ]
    write_instances(root / "grefcoco")
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    write_images(root / "images" / "mscoco" / "images" / "train2014")


def write_refcoco(root: Path, dataset: str = "refcoco") -> None:
    """``<root>/<dataset>/{refs(unc|umd).p, instances.json}``, pickled with protocol 2 like the originals."""
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": 1, "category_id": 1, "split": "testA",
         "file_name": "COCO_train2014_000000000001_1.jpg", "sent_ids": [20], "sentences": [_sent(20, "dog on the left")]},
        {"ref_id": 1, "image_id": 2, "ann_id": 3, "category_id": 1, "split": "testA",
         "file_name": "COCO_train2014_000000000002_3.jpg", "sent_ids": [21, 22],
         "sentences": [_sent(21, "small dog"), _sent(22, "caf\u00e9 dog")]},
        {"ref_id": 2, "image_id": 1, "ann_id": 2, "category_id": 2, "split": "val", "sent_ids": [23],
         "sentences": [_sent(23, "the cup")]},
    ]
    write_instances(root / dataset)
    name = "refs(umd).p" if dataset == "refcocog" else "refs(unc).p"
    (root / dataset / name).write_bytes(pickle.dumps(refs, protocol=2))
    write_images(root / "images" / "mscoco" / "images" / "train2014")


def write_refzom(root: Path) -> None:
    """``<root>/refzom/{Ref_ZOM.p, instances.json}``; ``ann_id == []`` and ``source == 'zero'`` for no target."""
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": [1, 2], "split": "test", "source": "many",
         "sentences": [_sent(30, "dog and cup")]},
        {"ref_id": 1, "image_id": 1, "ann_id": [], "split": "test", "source": "zero", "sentences": [_sent(31, "a cat")]},
        {"ref_id": 2, "image_id": 2, "ann_id": [3], "split": "train", "source": "one", "sentences": [_sent(32, "dog")]},
    ]
    write_instances(root / "refzom")
    (root / "refzom" / "Ref_ZOM.p").write_bytes(pickle.dumps(refs, protocol=2))
    write_images(root / "images" / "mscoco" / "images" / "trainval2014")


REASON_H, REASON_W = 20, 24


def write_reasonseg(root: Path) -> Path:
    """``<root>/reason_seg/ReasonSeg/val/{a.jpg, a.json, b.jpg, b.json}``; b.json is cp1252-encoded.

    a: a big target rectangle x 2..12 / y 2..12 with an "ignore" square x 4..6 / y 4..6 inside and a "flag" shape;
    a small target drawn *before* a larger one in the file still ends on top (largest filled first).
    """
    folder = root / "reason_seg" / "ReasonSeg" / "val"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (REASON_H, REASON_W, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    a = {"text": ["the thing you sit on", "rephrased"], "is_sentence": True, "shapes": [
        {"label": "ignore", "points": [[4, 4], [6, 4], [6, 6], [4, 6]]},
        {"label": "target", "points": [[2, 2], [12, 2], [12, 12], [2, 12]]},
        {"label": "flag", "points": [[0, 0], [23, 0], [23, 19], [0, 19]]},
    ]}
    (folder / "a.json").write_text(json.dumps(a))
    b = {"text": ["caf\u00e9 table"], "is_sentence": False,
         "shapes": [{"label": "target", "points": [[15, 10], [20, 10], [20, 15], [15, 15]]}]}
    (folder / "b.json").write_bytes(json.dumps(b, ensure_ascii=False).encode("cp1252"))
    return folder
