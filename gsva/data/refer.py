"""Readers for the COCO-based referring datasets: gRefCOCO, RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF and Ref-ZOM.

All share one structure: a list of refs plus a COCO ``instances.json`` (``images``, ``annotations`` with polygon or
RLE ``segmentation``, ``categories``). A ref has ``ref_id``, ``image_id``, ``ann_id`` (an int, or a list for
gRefCOCO/Ref-ZOM), ``split`` and ``sentences`` [{``sent``, ``raw``, ``sent_id``, ``tokens``}].

=============  ===========================================  ===========================  ==========================
dataset        refs file (in the dataset folder)            no target                    splits
=============  ===========================================  ===========================  ==========================
gRefCOCO       ``grefs(unc).p`` if present, else ``.json``  ``ann_id == [-1]``           train val testA testB
RefCOCO, +     ``refs(unc).p``                              never                        train val testA testB
RefCOCOg       ``refs(umd).p`` (``refs(google).p``)         never                        train val test (google: val)
RefCLEF        ``refs(unc).p`` (``refs(berkeley).p``)       never                        train val testA testB
Ref-ZOM        ``Ref_ZOM.p`` (GSVA) or ``refs(final).p``    ``ann_id == []``             train test (+ testA/B/C)
=============  ===========================================  ===========================  ==========================

(LeapLabTHU/GSVA at 618dc79, ``data/grefer.py``, ``data/refer.py``, ``data/refzom.py``; henghuiding/ReLA,
``gres_model/data/datasets/grefer.py``, ``G_REFER``; toggle1995/RIS-DMMI, ``refer/refer.py``.) Pickles are read with
:func:`gsva.data.safe_pickle.load_plain_pickle`, never plain ``pickle.load``. A multi-target mask is the union of the
ref's non-crowd instance masks. Ref-ZOM's ``test`` split holds every ref whose split contains "test",
``testA``/``testB``/``testC`` those whose split contains that letter (GSVA ``REFZOM_REFER.getRefIds``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UserError
from .masks import decode_segmentation
from .safe_pickle import UnsafePickleError, load_plain_pickle

__all__ = ["AnnotationError", "Expression", "ImageRecord", "ReferDataset", "read_json", "refzom_split_match",
           "default_image_dir", "coco_images", "REFS_FILES", "open_refer_dataset", "open_custom_dataset"]

REFS_FILES = {
    "grefcoco": ("grefs(unc).p", "grefs(unc).json"),
    "refcoco": ("refs(unc).p",),
    "refcoco+": ("refs(unc).p",),
    "refcocog": ("refs(umd).p", "refs(google).p"),
    "refclef": ("refs(unc).p", "refs(berkeley).p"),
    "refzom": ("Ref_ZOM.p", "refs(final).p"),
}
"""Refs files looked for in ``<refer_seg>/<dataset>/``, first match wins (official loaders force ``unc``/``umd``)."""


class AnnotationError(UserError, ValueError):
    """An annotation file is missing, unreadable or malformed; the message names the file and the record."""


@dataclass(frozen=True)
class Expression:
    """One referring sentence. ``sent_id`` as annotated (``"<ref_id>:<k>"`` for a sentence without one);
    ``no_target`` is True iff the ref refers to nothing (gRefCOCO ``ann_id == [-1]``, Ref-ZOM ``ann_id == []``);
    ``ann_ids`` are its non-crowd instances (empty for a no-target expression)."""

    ref_id: int
    sent_id: int | str
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


def read_json(path: Path, encodings: tuple[str, ...] = ("utf-8",)):
    """Parse a JSON file. Raises :class:`AnnotationError` naming the file when it is missing or unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc})") from None
    error: Exception | None = None
    for enc in encodings:
        try:
            return json.loads(raw.decode(enc))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = exc
    raise AnnotationError(f"{path}: cannot read JSON ({error})")


def coco_images(images, path: Path) -> dict[int, dict]:
    """A COCO ``images`` list as {id: {file_name, height, width}}. Raises AnnotationError naming ``path`` and the
    entry when one is malformed."""
    out: dict[int, dict] = {}
    for i, img in enumerate(images):
        try:
            out[int(img["id"])] = {"file_name": str(img["file_name"]), "height": int(img["height"]),
                                   "width": int(img["width"])}
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"{path}: images[{i}] is malformed ({exc!r})") from None
    return out


def _read_refs(path: Path):
    if path.suffix == ".p":
        try:
            return load_plain_pickle(path)
        except FileNotFoundError:
            raise AnnotationError(f"{path}: file not found") from None
        except UnsafePickleError as exc:
            raise AnnotationError(str(exc)) from None
    return read_json(path)


def default_image_dir(root: str | Path, dataset: str) -> Path:
    """Where a dataset's images are under a GSVA ``refer_seg`` folder: ``images/mscoco/images/train2014``
    (Ref-ZOM: ``trainval2014`` when present; RefCLEF: ``images/saiapr_tc-12``), else the flat ``images/``."""
    root = Path(root)
    mscoco = root / "images" / "mscoco" / "images"
    if dataset == "refclef":
        candidates = [root / "images" / "saiapr_tc-12"]
    elif dataset == "refzom":
        candidates = [mscoco / "trainval2014", mscoco / "train2014"]
    else:
        candidates = [mscoco / "train2014"]
    return next((p for p in candidates + [root / "images"] if p.exists()), candidates[0])


def refzom_split_match(wanted: str, split: str) -> bool:
    """Ref-ZOM's split rule (GSVA ``REFZOM_REFER.getRefIds``): "test" matches every split containing "test",
    "testA"/"testB"/"testC" every split containing that letter, anything else must be equal."""
    if wanted == "test":
        return "test" in split
    if wanted in ("testA", "testB", "testC"):
        return wanted[-1] in split
    return wanted == split


class ReferDataset:
    """In-memory index of one referring dataset (refs + COCO instances).

    Args:
        refs_path: the refs file (``.json`` or ``.p``). instances_path: its ``instances.json``.
        image_dir: folder the ``instances.json`` ``file_name`` s are relative to.
        split_match: ``(wanted, ref_split) -> bool``; default equality.
        refs: the refs already read (``refs_path`` then only names them in messages). name: dataset name (default:
        the refs file's folder name).
    Raises :class:`AnnotationError` naming the file and record for any structural problem.
    """

    def __init__(self, refs_path: str | Path, instances_path: str | Path, image_dir: str | Path,
                 split_match: Callable[[str, str], bool] | None = None, refs: list | None = None,
                 name: str | None = None) -> None:
        refs_path, inst_path = Path(refs_path), Path(instances_path)
        self.refs_path, self.instances_path = refs_path, inst_path
        self.ann_dir = refs_path.parent
        self.name = name or refs_path.parent.name
        self.image_dir = Path(image_dir)
        self._split_match = split_match or (lambda wanted, split: wanted == split)
        refs = _read_refs(refs_path) if refs is None else refs
        inst = read_json(inst_path)
        if not isinstance(refs, list):
            raise AnnotationError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
        if not isinstance(inst, dict) or not all(k in inst for k in ("images", "annotations")):
            raise AnnotationError(f"{inst_path}: expected a COCO object with 'images' and 'annotations'")
        self.images = coco_images(inst["images"], inst_path)
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
        self.refs: list[dict] = [self._check_ref(ref, i, refs_path) for i, ref in enumerate(refs)]

    @staticmethod
    def _ann_list(ref: dict) -> list:
        return ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]

    def _check_ref(self, ref, i: int, path: Path) -> dict:
        where = f"{path}: ref #{i}"
        if not isinstance(ref, dict):
            raise AnnotationError(f"{where} is not an object")
        missing = [k for k in ("ref_id", "image_id", "ann_id", "split", "sentences") if k not in ref]
        if missing:
            raise AnnotationError(f"{where} (ref_id={ref.get('ref_id')}) lacks {', '.join(missing)}")
        where = f"{path}: ref_id={ref['ref_id']}"
        if ref["image_id"] not in self.images:
            raise AnnotationError(f"{where}: image_id {ref['image_id']} is not in {self.instances_path.name}")
        for a in self._ann_list(ref):
            if a != -1 and a not in self.anns:
                raise AnnotationError(f"{where}: ann_id {a} is not in {self.instances_path.name}")
            if a != -1 and self.anns[a]["image_id"] != ref["image_id"]:
                raise AnnotationError(f"{where}: ann_id {a} belongs to another image")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and "sent" in s
                                                            for s in ref["sentences"]):
            raise AnnotationError(f"{where}: 'sentences' must be a list of objects with 'sent'")
        return ref

    def splits(self) -> list[str]:
        """The split names present in the refs file."""
        return sorted({str(r["split"]) for r in self.refs})

    def records(self, split: str) -> list[ImageRecord]:
        """Images of ``split`` (sorted by image id) with their expressions. Raises ValueError for an unknown split."""
        chosen = [r for r in self.refs if self._split_match(split, str(r["split"]))]
        if not chosen:
            raise InputError(f"split {split!r} not in {self.refs_path} (available: {', '.join(self.splits())})")
        by_image: dict[int, list[Expression]] = {}
        for ref in chosen:
            raw = self._ann_list(ref)
            no_target = all(a == -1 for a in raw)  # [-1] (gRefCOCO) and [] (Ref-ZOM)
            ann_ids = tuple(a for a in raw if a != -1 and not self.anns[a].get("iscrowd", 0))
            for j, s in enumerate(ref["sentences"]):
                text = str(s["sent"]).strip()
                sent_id = s["sent_id"] if "sent_id" in s else f"{ref['ref_id']}:{j}"  # unique without sent_id too
                if text:
                    by_image.setdefault(int(ref["image_id"]), []).append(
                        Expression(int(ref["ref_id"]), sent_id, text, ann_ids, no_target))
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
                raise AnnotationError(f"{self.instances_path}: annotation {a}: {exc}") from None
        return out


def open_refer_dataset(refer_root: str | Path, dataset: str, image_root: str | Path | None = None,
                       refs_file: str | None = None) -> ReferDataset:
    """Open ``<refer_root>/<dataset>`` (GSVA ``refer_seg`` layout, :data:`REFS_FILES`); images under ``image_root``
    or :func:`default_image_dir`. Raises ValueError for an unknown dataset, AnnotationError for missing files."""
    root = Path(refer_root)
    if dataset not in REFS_FILES:
        raise InputError(f"unknown referring dataset {dataset!r}; known: {', '.join(REFS_FILES)}")
    folder = root / dataset
    names = (refs_file,) if refs_file else REFS_FILES[dataset]
    refs_path = next((folder / n for n in names if (folder / n).exists()), None)
    if refs_path is None:
        raise AnnotationError(f"{folder}: no refs file ({' or '.join(names)})")
    return ReferDataset(refs_path, folder / "instances.json", image_root or default_image_dir(root, dataset),
                        split_match=refzom_split_match if dataset == "refzom" else None, name=dataset)


def open_custom_dataset(folder: str | Path, image_root: str | Path | None = None) -> ReferDataset:
    """Open a dataset in our documented custom format (docs/training.md, "Fine-tuning on your own data")::

        <folder>/instances.json    COCO: images [{id, file_name, height, width}],
                                   annotations [{id, image_id, segmentation (polygons or RLE), iscrowd?}]
        <folder>/expressions.json  [{"image_id": 1, "sentences": ["the red cup", ...] (or "sentence": "..."),
                                    "ann_ids": [3, 4] ([] = the expression refers to nothing), "split": "train"}]
        <folder>/images/<file_name>

    Each entry becomes a gRefCOCO-style ref (``ann_ids == []`` is a no-target expression, answered ``[REJ]``).
    Raises AnnotationError naming the file and entry for anything malformed.
    """
    folder = Path(folder)
    path = folder / "expressions.json"
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise AnnotationError(f"{path}: expected a non-empty list of expressions")
    refs = []
    for i, e in enumerate(entries):
        where = f"{path}: entry #{i}"
        if not isinstance(e, dict) or "image_id" not in e or "split" not in e:
            raise AnnotationError(f"{where} needs image_id, split and sentences (or sentence)")
        sentences = e.get("sentences", [e["sentence"]] if "sentence" in e else None)
        if not isinstance(sentences, list) or not sentences or not all(isinstance(t, str) and t.strip()
                                                                      for t in sentences):
            raise AnnotationError(f"{where}: 'sentences' must be a non-empty list of non-empty strings")
        ann_ids = e.get("ann_ids", [])
        if not isinstance(ann_ids, list) or not all(isinstance(a, int) and a >= 0 for a in ann_ids):
            raise AnnotationError(f"{where}: 'ann_ids' must be a list of annotation ids ([] = no target)")
        refs.append({"ref_id": i, "image_id": e["image_id"], "ann_id": ann_ids or [-1], "split": str(e["split"]),
                     "sentences": [{"sent": t.strip(), "sent_id": f"{i}:{k}"} for k, t in enumerate(sentences)]})
    return ReferDataset(path, folder / "instances.json", image_root or folder / "images", refs=refs, name="custom")
