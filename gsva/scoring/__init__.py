"""Scorers: every metric definition the GRES/RES literature uses, each from its official source.

=========  ==================================================================  =====================================
name       definition                                                          source
=========  ==================================================================  =====================================
``rela``   gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9 (the gRefCOCO benchmark)   ReLA ``ReferEvaluator`` (884ef17)
``gsva``   the same names with GSVA's semantics (rejected targets not zeroed)  GSVA ``solver.py eval_gres``
``dmmi``   oIoU, mIoU, Pr@0.5..0.9 on non-empty, Acc on zero-target (Ref-ZOM)  RIS-DMMI ``test.py evaluate``
``lisa``   gIoU (both empty = 1), cIoU, ignore regions excluded                LISA ``train_ds.py validate``
``rec``    Acc@0.5 of boxes taken from the masks                               REC convention (GSVA issue #16)
=========  ==================================================================  =====================================

All scorers read the same per-expression records (:mod:`gsva.scoring.rows`), so numbers printed by an evaluation run
are recomputed exactly by ``gsva score`` from its ``predictions.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InputError
from .base import Scorer
from .dmmi import DMMIScorer
from .gsva_eval import GSVAScorer
from .lisa import LISAScorer
from .rec import RECScorer
from .rela import ReLAScorer
from .rows import PredictionError, ScoredSample, read_predictions, sample_from_row

__all__ = ["SCORERS", "DEFAULT_SCORERS", "Scorer", "make_scorer", "score_samples", "score_file", "ScoredSample",
           "PredictionError", "read_predictions", "sample_from_row"]

SCORERS: dict[str, type[Scorer]] = {c.name: c for c in (ReLAScorer, GSVAScorer, DMMIScorer, LISAScorer, RECScorer)}

DEFAULT_SCORERS: dict[str, tuple[str, ...]] = {
    "grefcoco": ("rela", "gsva", "rec"),
    "refzom": ("dmmi", "gsva", "rela"),
    "reasonseg": ("lisa",),
    "refcoco": ("lisa", "rec"),
    "refcoco+": ("lisa", "rec"),
    "refcocog": ("lisa", "rec"),
    "refclef": ("lisa", "rec"),
    "custom": ("rela", "gsva", "rec"),  # our custom format is GRES (no-target expressions allowed)
}
"""The scorers that apply to each dataset, the benchmark's own first."""


def make_scorer(name: str, dataset: str | None = None, dmmi_resize: int | None = None) -> Scorer:
    """A fresh scorer. ``dataset`` sets GSVA's per-dataset switch (Ref-ZOM adds no union for false negatives);
    ``dmmi_resize`` the DMMI evaluation size (480 in the official script; None = original size).

    Raises ValueError for an unknown name.
    """
    if name not in SCORERS:
        raise InputError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
    if name == "gsva":
        return GSVAScorer(add_fn_union=dataset != "refzom")
    if name == "dmmi":
        return DMMIScorer(resize=dmmi_resize)
    return SCORERS[name]()


def score_samples(samples: Iterable[ScoredSample], names: Iterable[str], dataset: str | None = None,
                  dmmi_resize: int | None = None) -> dict[str, dict]:
    """Run several scorers over the same samples in one pass; returns {scorer name: its result}."""
    scorers = {n: make_scorer(n, dataset, dmmi_resize) for n in names}
    for sample in samples:
        for s in scorers.values():
            s.add(sample)
    return {n: s.result() for n, s in scorers.items()}


def score_file(path, names: Iterable[str], dataset: str | None = None, dmmi_resize: int | None = None) -> dict:
    """Score a saved ``predictions.jsonl``. Raises :class:`PredictionError` for a malformed file."""
    return score_samples((sample for _, sample in read_predictions(path)), names, dataset, dmmi_resize)
