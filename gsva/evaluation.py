"""Evaluation by free generation (the realistic protocol): the model answers each question on its own.

Prompt mode "per expression" (ReLA scores one expression at a time): one question per expression,
``"Can you segment {expression} in this image?"`` (the first official training template), asked in a fresh
conversation. The answer's slots are matched to the asked expression by phrase. A missing slot counts against the
model (a target expression is scored as rejected, a no-target one as not rejected) and extra slots are ignored; both
are counted in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .conversation import normalize_phrase, question_text
from .data.grefcoco import GRefCOCO
from .data.masks import encode_rle
from .inference import Answer, GSVAPredictor, Target
from .metrics import ReLAScorer

__all__ = ["ExpressionResult", "match_slot", "evaluate_generate"]

logger = logging.getLogger(__name__)


@dataclass
class ExpressionResult:
    """One scored expression (a line of ``predictions.jsonl``)."""

    id: int
    image_id: int
    sentence: str
    gt_empty: bool
    pred_reject: bool
    score: float | None
    slots: str  # "ok", "missing" or "extra"
    answer: str
    gt_mask: dict
    pred_mask: dict

    def to_json(self) -> dict:
        return dict(self.__dict__)


def match_slot(answer: Answer, phrase: str) -> tuple[Target | None, str]:
    """The slot of ``answer`` that answers ``phrase``: an exact (normalised) phrase match, else the only/first slot.

    Returns (target or None, "ok" | "missing" | "extra").
    """
    if not answer.targets:
        return None, "missing"
    want = normalize_phrase(phrase)
    exact = [t for t in answer.targets if normalize_phrase(t.phrase) == want]
    chosen = exact[0] if exact else answer.targets[0]
    return chosen, "ok" if len(answer.targets) == 1 else "extra"


def evaluate_generate(predictor: GSVAPredictor, gref: GRefCOCO, split: str, limit: int | None = None,
                      progress: Callable[[Iterator], Iterator] | None = None) -> tuple[dict, list[ExpressionResult]]:
    """Score ``split`` with the ReLA definitions; ``limit`` caps the number of images. Returns (metrics, rows)."""
    records = gref.records(split)[:limit] if limit else gref.records(split)
    scorer = ReLAScorer()
    rows: list[ExpressionResult] = []
    counts = {"ok": 0, "missing": 0, "extra": 0}
    iterator = progress(records) if progress else records
    for rec in iterator:
        predictor.set_image(gref.image_path(rec))
        if predictor.image.shape[:2] != (rec.height, rec.width):
            raise ValueError(f"{rec.file_name}: image size differs from its annotation")
        for expr in rec.expressions:
            predictor.reset()
            phrase = expr.sentence.rstrip(".").strip()
            answer = predictor.ask(question_text([phrase], template=0))
            target, status = match_slot(answer, phrase)
            counts[status] += 1
            gt = gref.mask(expr.ann_ids, rec.height, rec.width).astype(bool)
            if target is None:
                pred_reject, pred_mask, score = not expr.is_empty, None, None  # a missing slot is always wrong
            else:
                pred_reject = target.status == "rej"
                pred_mask, score = target.mask, target.score
            scorer.add(None if pred_reject else pred_mask, gt, pred_reject, gt_empty=expr.is_empty)
            empty = np.zeros_like(gt)
            rows.append(ExpressionResult(
                id=expr.sent_id, image_id=rec.image_id, sentence=expr.sentence, gt_empty=expr.is_empty,
                pred_reject=pred_reject, score=score, slots=status, answer=answer.text,
                gt_mask=encode_rle(gt), pred_mask=encode_rle(pred_mask if pred_mask is not None else empty)))
    metrics = scorer.result()
    metrics.update({"slots_ok": counts["ok"], "slots_missing": counts["missing"], "slots_extra": counts["extra"],
                    "num_images": len(records)})
    return metrics, rows
