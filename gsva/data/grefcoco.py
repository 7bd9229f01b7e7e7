"""Reader for gRefCOCO (``grefs(unc).json`` + ``instances.json``), the real format, used for our synthetic data too.

Layout (ReLA ``datasets/DATASET.md``; GSVA ``refer_seg/grefcoco``)::

    <ann_dir>/grefs(unc).json    list of refs (``grefs(unc).p`` is read instead when present, as G_REFER does)
    <ann_dir>/instances.json     COCO: images, annotations (polygon or RLE), categories
    <image_dir>/<file_name>      file_name from instances.json "images"

A ref has ``ref_id``, ``image_id``, ``ann_id`` (a list; ``[-1]`` = no target), ``category_id`` (list), ``split``
(train/val/testA/testB) and ``sentences`` [{``sent``, ``raw``, ``sent_id``, ``tokens``}]. Emptiness comes from
``ann_id == [-1]`` (the official loaders ignore the optional ``no_target`` key). A multi-target mask is the union of
its non-crowd instance masks (ReLA ``load_grefcoco_json`` skips crowd annotations). The other referring datasets
share this reader: :mod:`gsva.data.refer`.
"""

from __future__ import annotations

from pathlib import Path

from .refer import AnnotationError, Expression, ImageRecord, ReferDataset

__all__ = ["AnnotationError", "Expression", "ImageRecord", "GRefCOCO", "GREF_SPLITS"]

GREF_SPLITS = ("train", "val", "testA", "testB")


class GRefCOCO(ReferDataset):
    """In-memory index of a gRefCOCO annotation folder.

    Args:
        ann_dir: folder with ``grefs(unc).json`` (or ``grefs(unc).p``) and ``instances.json``.
        image_dir: folder the ``file_name`` s are relative to.
    Raises :class:`AnnotationError` naming the file and record for any structural problem.
    """

    def __init__(self, ann_dir: str | Path, image_dir: str | Path) -> None:
        ann_dir = Path(ann_dir)
        refs = ann_dir / "grefs(unc).p"
        if not refs.exists():
            refs = ann_dir / "grefs(unc).json"
        super().__init__(refs, ann_dir / "instances.json", image_dir)
