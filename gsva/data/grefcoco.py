"""Reader for gRefCOCO (``grefs(unc).json`` + ``instances.json``), the real format, used for our synthetic data too.

Layout (ReLA ``datasets/DATASET.md``; GSVA ``refer_seg/grefcoco``)::

    <ann_dir>/grefs(unc).json    list of refs
    <ann_dir>/instances.json     COCO: images, annotations (polygon or RLE), categories
    <image_dir>/<file_name>      file_name from instances.json "images"

A ref has ``ref_id``, ``image_id``, ``ann_id`` (a list; ``[-1]`` = no target), ``category_id`` (list), ``split``
(train/val/testA/testB) and ``sentences`` [{``sent``, ``raw``, ``sent_id``, ``tokens``}]. Emptiness comes from
``ann_id == [-1]`` (the official loaders ignore the optional ``no_target`` key). A multi-target mask is the union of
its non-crowd instance masks (ReLA ``load_grefcoco_json`` skips crowd annotations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .masks import decode_segmentation

__all__ = ["AnnotationError", "Expression", "ImageRecord", "GRefCOCO", "GREF_SPLITS"]

GREF_SPLITS = ("train", "val", "testA", "testB")


class AnnotationError(ValueError):
    """An annotation file is missing, unreadable or malformed; the message names the file and the record."""


@dataclass(frozen=True)
class Expression:
    """One referring sentence. ``no_target`` is True iff the ref's ``ann_id`` is ``[-1]`` (ReLA: ``empty``);
    ``ann_ids`` are its non-crowd instances (empty for a no-target expression)."""

    ref_id: int
    sent_id: int
    sentence: str
    ann_ids: tuple[int, ...]
    no_target: bool = False

    @property
    def is_empty(self) -> bool:
        return self.no_target


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split with all its expressions of that split."""

    image_id: int
    file_name: str
    height: int
    width: int
    expressions: tuple[Expression, ...]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read JSON ({exc})") from None


class GRefCOCO:
    """In-memory index of a gRefCOCO annotation folder.

    Args:
        ann_dir: folder with ``grefs(unc).json`` and ``instances.json``.
        image_dir: folder the ``file_name`` s are relative to.
    Raises :class:`AnnotationError` naming the file and record for any structural problem.
    """

    def __init__(self, ann_dir: str | Path, image_dir: str | Path) -> None:
        self.ann_dir = Path(ann_dir)
        self.image_dir = Path(image_dir)
        refs_path = self.ann_dir / "grefs(unc).json"
        inst_path = self.ann_dir / "instances.json"
        refs = _read_json(refs_path)
        inst = _read_json(inst_path)
        if not isinstance(refs, list):
            raise AnnotationError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        if not isinstance(inst, dict) or not all(k in inst for k in ("images", "annotations")):
            raise AnnotationError(f"{inst_path}: expected a COCO object with 'images' and 'annotations'")
        self.images: dict[int, dict] = {}
        for i, img in enumerate(inst["images"]):
            try:
                self.images[int(img["id"])] = {"file_name": str(img["file_name"]), "height": int(img["height"]),
                                               "width": int(img["width"])}
            except (KeyError, TypeError, ValueError) as exc:
                raise AnnotationError(f"{inst_path}: images[{i}] is malformed ({exc!r})") from None
        self.anns: dict[int, dict] = {}
        for i, ann in enumerate(inst["annotations"]):
            if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann or "segmentation" not in ann:
                raise AnnotationError(f"{inst_path}: annotations[{i}] lacks id/image_id/segmentation")
            self.anns[int(ann["id"])] = ann
        self._instances: dict[int, list[int]] = {}
        for a, ann in self.anns.items():
            if not ann.get("iscrowd", 0):
                self._instances.setdefault(int(ann["image_id"]), []).append(a)
        self.categories = {int(c["id"]): c.get("name", str(c["id"])) for c in inst.get("categories", [])}
        self.refs: list[dict] = []
        for i, ref in enumerate(refs):
            self.refs.append(self._check_ref(ref, i, refs_path))

    def _check_ref(self, ref, i: int, path: Path) -> dict:
        where = f"{path}: ref #{i}"
        if not isinstance(ref, dict):
            raise AnnotationError(f"{where} is not an object")
        missing = [k for k in ("ref_id", "image_id", "ann_id", "split", "sentences") if k not in ref]
        if missing:
            raise AnnotationError(f"{where} (ref_id={ref.get('ref_id')}) lacks {', '.join(missing)}")
        where = f"{path}: ref_id={ref['ref_id']}"
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        if ref["image_id"] not in self.images:
            raise AnnotationError(f"{where}: image_id {ref['image_id']} is not in instances.json")
        for a in ann_ids:
            if a != -1 and a not in self.anns:
                raise AnnotationError(f"{where}: ann_id {a} is not in instances.json")
            if a != -1 and self.anns[a]["image_id"] != ref["image_id"]:
                raise AnnotationError(f"{where}: ann_id {a} belongs to another image")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and "sent" in s
                                                            for s in ref["sentences"]):
            raise AnnotationError(f"{where}: 'sentences' must be a list of objects with 'sent'")
        return ref

    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self.refs})

    def records(self, split: str) -> list[ImageRecord]:
        """Images of ``split`` (sorted by image id) with their expressions. Raises ValueError for an unknown split."""
        if split not in self.splits():
            raise ValueError(f"split {split!r} not in {self.ann_dir} (available: {', '.join(self.splits())})")
        by_image: dict[int, list[Expression]] = {}
        for ref in self.refs:
            if ref["split"] != split:
                continue
            raw = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
            no_target = all(a == -1 for a in raw)
            ann_ids = tuple(a for a in raw if a != -1 and not self.anns[a].get("iscrowd", 0))
            for j, s in enumerate(ref["sentences"]):
                text = str(s["sent"]).strip()
                if text:
                    by_image.setdefault(int(ref["image_id"]), []).append(
                        Expression(int(ref["ref_id"]), int(s.get("sent_id", j)), text, ann_ids, no_target))
        out = []
        for image_id in sorted(by_image):
            img = self.images[image_id]
            out.append(ImageRecord(image_id, img["file_name"], img["height"], img["width"], tuple(by_image[image_id])))
        return out

    def image_path(self, record: ImageRecord) -> Path:
        return self.image_dir / record.file_name

    def instance_ids(self, image_id: int) -> list[int]:
        """Ids of the image's non-crowd instance annotations (referred to or not), in file order."""
        return list(self._instances.get(image_id, []))

    def mask(self, ann_ids: tuple[int, ...] | list[int], height: int, width: int) -> np.ndarray:
        """Union of the instance masks ``ann_ids`` as (height, width) uint8 {0, 1}; all zeros for no target."""
        out = np.zeros((height, width), np.uint8)
        for a in ann_ids:
            try:
                out |= decode_segmentation(self.anns[a]["segmentation"], height, width)
            except ValueError as exc:
                raise AnnotationError(f"{self.ann_dir / 'instances.json'}: annotation {a}: {exc}") from None
        return out
