"""Reader for ReasonSeg (LISA): ``<root>/<split>/<name>.jpg`` each with a sibling ``<name>.json``.

The JSON (LabelMe style; LISA ``utils/data_processing.py get_mask_from_json``) holds ``text`` (a list of queries),
``is_sentence`` (long reasoning sentence vs short phrase) and ``shapes`` [{``label``, ``points`` [[x, y], ...]}] in
pixel coordinates (x right, y down). The GT is rasterised exactly as LISA does, with OpenCV: shapes labelled "flag"
are skipped; the others are drawn (1-pixel outline + fill, points truncated to int32) in descending order of their own
area, so smaller shapes overwrite larger ones; a label containing "ignore" paints the ignore value, anything else
the target. Files are read as UTF-8, falling back to cp1252 (as LISA). Evaluation uses ``text[0]`` only (LISA and
GSVA ``validate``); ``all_texts=True`` keeps every query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .refer import AnnotationError, read_json

__all__ = ["ReasonSegRecord", "ReasonSeg", "rasterize_shapes"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ReasonSegRecord:
    """One image: ``texts`` its queries (one unless ``all_texts``), ``is_sentence`` the query style, ``json_path``
    its annotation file."""

    image_id: str
    image_path: Path
    json_path: Path
    texts: tuple[str, ...]
    is_sentence: bool


def rasterize_shapes(shapes: list, height: int, width: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """LabelMe shapes -> (target (H, W) bool, ignore (H, W) bool), as LISA's ``get_mask_from_json``.

    Raises :class:`AnnotationError` (prefixed by ``where``) for a shape without a label or with malformed points.
    """
    import cv2

    drawn = []
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise AnnotationError(f"{where}shapes[{k}] lacks a 'label'")
        if shape["label"].lower() == "flag":
            continue
        try:
            pts = np.array([shape["points"]], dtype=np.int32)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"{where}shapes[{k}] has malformed 'points' ({exc})") from None
        if pts.ndim != 3 or pts.shape[2] != 2 or pts.shape[1] < 1:
            raise AnnotationError(f"{where}shapes[{k}] 'points' must be a list of [x, y] pairs")
        tmp = np.zeros((height, width), np.uint8)
        cv2.polylines(tmp, pts, True, 1, 1)
        cv2.fillPoly(tmp, pts, 1)
        drawn.append((int(tmp.sum()), k, pts, "ignore" in shape["label"].lower()))
    # LISA: np.argsort(area)[::-1] (largest first). Its default sort leaves the order of equal areas unspecified;
    # a stable sort reversed visits later shapes first.
    order = np.argsort([a for a, _, _, _ in drawn], kind="stable")[::-1] if drawn else []
    label = np.zeros((height, width), np.uint8)
    for idx in order:
        _, _, pts, ignore = drawn[idx]
        value = 255 if ignore else 1
        cv2.polylines(label, pts, True, value, 1)
        cv2.fillPoly(label, pts, value)
    return label == 1, label == 255


class ReasonSeg:
    """Index of one ReasonSeg split folder (``.../ReasonSeg/val``).

    Raises :class:`AnnotationError` when the folder is missing or has no annotated image, or (lazily, per record)
    when a JSON is unreadable or lacks ``text``/``shapes``.
    """

    def __init__(self, split_dir: str | Path, all_texts: bool = False) -> None:
        self.split_dir = Path(split_dir)
        if not self.split_dir.is_dir():
            raise AnnotationError(f"{self.split_dir}: ReasonSeg split folder not found")
        self.all_texts = all_texts
        self._records: list[ReasonSegRecord] = []
        for json_path in sorted(self.split_dir.glob("*.json")):
            image = next((json_path.with_suffix(s) for s in IMAGE_SUFFIXES if json_path.with_suffix(s).exists()), None)
            if image is None:
                raise AnnotationError(f"{json_path}: no image next to it ({'/'.join(IMAGE_SUFFIXES)})")
            anno = self._read(json_path)
            texts = anno["text"] if isinstance(anno["text"], list) else [anno["text"]]
            texts = [str(t).strip() for t in texts if str(t).strip()]
            if not texts:
                raise AnnotationError(f"{json_path}: 'text' holds no query")
            self._records.append(ReasonSegRecord(json_path.stem, image, json_path,
                                                 tuple(texts if all_texts else texts[:1]),
                                                 bool(anno.get("is_sentence", False))))
        if not self._records:
            raise AnnotationError(f"{self.split_dir}: no annotated image (<name>.jpg + <name>.json)")

    @staticmethod
    def _read(json_path: Path) -> dict:
        anno = read_json(json_path, encodings=("utf-8", "cp1252"))
        if not isinstance(anno, dict) or "text" not in anno or not isinstance(anno.get("shapes"), list):
            raise AnnotationError(f"{json_path}: expected an object with 'text' and a list 'shapes'")
        return anno

    def records(self) -> list[ReasonSegRecord]:
        """Every annotated image of the split, sorted by file name."""
        return list(self._records)

    def masks(self, record: ReasonSegRecord, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(target, ignore) masks, (height, width) bool, of ``record`` at the image's size."""
        anno = self._read(record.json_path)
        return rasterize_shapes(anno["shapes"], height, width, where=f"{record.json_path}: ")


def read_explanations(path: str | Path) -> dict[str, str]:
    """ReasonSeg's ``explanatory/train.json`` ([{``image``, ``query``, ``outputs``}]) as {image file name: outputs}.

    Raises :class:`AnnotationError` naming the file and entry when it is malformed.
    """
    path = Path(path)
    items = read_json(path, encodings=("utf-8", "cp1252"))
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a list of {{image, query, outputs}}")
    out = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) \
                or not isinstance(item.get("outputs"), str):
            raise AnnotationError(f"{path}: entry #{i} needs 'image' and 'outputs' strings")
        out[item["image"]] = item["outputs"].strip()
    return out
