"""Benchmarks as lists of images with expressions, whatever the on-disk format.

:func:`open_benchmark` maps a dataset name and a data root to :class:`Benchmark`. The data root follows GSVA's
``refer_seg`` layout (LeapLabTHU/GSVA at 618dc79, README.md and ``data/dataset.py``, ``ValDataset.__init__``), with
fallbacks for the flat layout our synthetic data uses::

    <root>/grefcoco/{grefs(unc).json | grefs(unc).p, instances.json}
    <root>/refcoco/{refs(unc).p, instances.json}      (refcoco+, refcocog: refs(umd).p, refclef)
    <root>/refzom/{Ref_ZOM.p | refs(final).p, instances.json}
    <root>/images/mscoco/images/train2014/...         (refclef: <root>/images/saiapr_tc-12; Ref-ZOM also trainval2014)
    <root>/images/...                                 (flat layout, e.g. data/synth)
    <root>/reason_seg/ReasonSeg/<split>/*.jpg|json    (or <root>/ReasonSeg/<split>, or <root>/<split>)

``custom``: ``data_root`` is a folder in our custom format (:func:`gsva.data.refer.open_custom_dataset`).

``image_root`` overrides the image folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.reasonseg import ReasonSeg
from ..data.refer import AnnotationError, open_custom_dataset, open_refer_dataset
from ..errors import InputError

__all__ = ["EvalExpression", "EvalImage", "Benchmark", "open_benchmark", "DATASETS"]

DATASETS = ("grefcoco", "refzom", "reasonseg", "refcoco", "refcoco+", "refcocog", "refclef", "custom")

@dataclass(frozen=True)
class EvalExpression:
    """One expression to evaluate: ``id`` unique within the benchmark split, ``sentence`` as annotated,
    ``gt_empty`` (refers to nothing), ``is_sentence`` (ReasonSeg long query; selects the prompt form)."""

    id: int | str
    sentence: str
    gt_empty: bool
    is_sentence: bool = False
    ann_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvalImage:
    """One image with its expressions of the split, in annotation order."""

    image_id: int | str
    path: Path
    height: int | None
    width: int | None
    expressions: tuple[EvalExpression, ...]


class Benchmark:
    """A dataset split ready for evaluation: :attr:`images` and :meth:`ground_truth`."""

    def __init__(self, name: str, split: str, images: list[EvalImage], source) -> None:
        self.name, self.split, self.images, self._source = name, split, images, source
        self._source_records = {r.image_id: r for r in source.records()} if isinstance(source, ReasonSeg) else {}

    def ground_truth(self, image: EvalImage, expr: EvalExpression, height: int, width: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """(GT mask (H, W) bool, ignore mask (H, W) bool or None) of ``expr`` at the image's size."""
        if isinstance(self._source, ReasonSeg):
            record = self._source_records[image.image_id]
            return self._source.masks(record, height, width)
        if image.height is not None and (height, width) != (image.height, image.width):
            raise AnnotationError(f"{image.path}: image is {height}x{width} but the annotation says "
                                  f"{image.height}x{image.width}")
        return self._source.mask(expr.ann_ids, height, width).astype(bool), None


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def open_benchmark(dataset: str, data_root: str | Path, split: str, image_root: str | Path | None = None,
                   refs_file: str | None = None) -> Benchmark:
    """Open ``dataset``'s ``split`` under ``data_root`` (layout in the module docstring).

    ``refs_file`` picks a refs file by name (e.g. ``refs(google).p`` for RefCOCOg's Google split).
    Raises ValueError for an unknown dataset or split and :class:`AnnotationError` for missing/malformed files.
    """
    root = Path(data_root)
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if dataset == "reasonseg":
        folder = _first_existing([root / "reason_seg" / "ReasonSeg" / split, root / "ReasonSeg" / split,
                                  root / split])
        if folder is None:
            raise AnnotationError(f"{root}: no ReasonSeg split folder {split!r} (looked for reason_seg/ReasonSeg/"
                                  f"{split}, ReasonSeg/{split}, {split})")
        source = ReasonSeg(folder)
        images = [EvalImage(r.image_id, r.image_path, None, None,
                            tuple(EvalExpression(f"{r.image_id}#{k}", t, False, r.is_sentence)
                                  for k, t in enumerate(r.texts)))
                  for r in source.records()]
        return Benchmark(dataset, split, images, source)
    if dataset == "custom":
        source = open_custom_dataset(root, image_root)
    else:
        source = open_refer_dataset(root, dataset, image_root, refs_file)
    images = [EvalImage(rec.image_id, source.image_path(rec), rec.height, rec.width,
                        tuple(EvalExpression(e.sent_id, e.sentence, e.no_target, False, e.ann_ids)
                              for e in rec.expressions))
              for rec in source.records(split)]
    return Benchmark(dataset, split, images, source)
