"""Run a protocol over a benchmark split and turn the outcomes into ``predictions.jsonl`` rows and metrics.

Prompt modes: ``per-expression`` (default) asks one question per expression in a fresh conversation, which is how
every GRES benchmark scores (ReLA and DMMI evaluate each (image, sentence) on its own) and keeps each answer
independent of which other expressions an image happens to have; ``per-image`` names all of an image's expressions
in one question, as GSVA's ``ValDataset`` does (a question too long for the model's context is split in halves until
it fits — the official code has no limit). Metrics are always computed from the rows' RLE masks through
:func:`gsva.scoring.score_samples`, the same path ``gsva score`` takes, so the two agree exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from ..conversation import PromptTooLongError, Turn, render_conversation, tokenize_pieces
from ..data.masks import encode_rle
from ..errors import InputError
from ..images import load_image
from ..inference import GSVAPredictor, QuestionError
from ..scoring import DEFAULT_SCORERS, sample_from_row, score_samples
from .benchmarks import Benchmark, EvalExpression, EvalImage
from .prompts import clean_expression, reasonseg_answer, reasonseg_question, refer_answer, refer_question
from .protocols import SlotOutcome, generate_outcomes_batch, teacher_forced_outcomes

__all__ = ["PROTOCOLS", "PROMPT_MODES", "run_benchmark", "summarize"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("generate", "teacher-forced")
PROMPT_MODES = ("per-expression", "per-image")


def _groups(image: EvalImage, prompt_mode: str, reasonseg: bool) -> list[list[EvalExpression]]:
    if prompt_mode == "per-image" and not reasonseg:
        return [list(image.expressions)]
    return [[e] for e in image.expressions]


def _conversation(group: list[EvalExpression], style: str, reasonseg: bool):
    """(question, teacher-forced answer pieces, present flags) for one group of expressions."""
    present = [not e.gt_empty for e in group]
    if reasonseg:
        return reasonseg_question(group[0].sentence, group[0].is_sentence, style), reasonseg_answer(style), present
    exprs = [clean_expression(e.sentence) for e in group]
    return refer_question(exprs, style), refer_answer(exprs, present, style), present


def _split_until_fits(group, fn):
    """Run ``fn(group)``; when the prompt is too long, run it on both halves (a single expression must fit)."""
    try:
        return fn(group)
    except (PromptTooLongError, QuestionError):
        if len(group) == 1:
            raise
        half = len(group) // 2
        return _split_until_fits(group[:half], fn) + _split_until_fits(group[half:], fn)


def _check_length(predictor: GSVAPredictor, question: str, answer) -> None:
    """Raise PromptTooLongError when the teacher-forced conversation exceeds the model's ``max_length``."""
    cfg = predictor.model.config
    tokenize_pieces(render_conversation([Turn(question, answer)], cfg.use_im_start_end, cfg.conv_template),
                    predictor.tokenizer, predictor.ids, cfg.num_image_tokens, cfg.max_length)


def _row(image: EvalImage, expr: EvalExpression, outcome: SlotOutcome, gt: np.ndarray, ignore) -> dict:
    row = {"id": expr.id, "image_id": image.image_id, "sentence": expr.sentence, "gt_empty": expr.gt_empty,
           "pred_reject": bool(outcome.pred_reject), "score": outcome.score, "slot": outcome.slot,
           "extra_slots": outcome.extra_slots, "answer": outcome.answer, "gt_mask": encode_rle(gt), "pred_mask": encode_rle(outcome.mask)}
    if ignore is not None:
        row["ignore_mask"] = encode_rle(ignore)
    return row


LENGTH_GROUPS = 4
"""Generate protocol, batch size > 1: the questions of this many batches are grouped by prompt length
(:meth:`gsva.inference.GSVAPredictor.answer_many`), so fewer pad tokens are computed."""


def run_benchmark(benchmark: Benchmark, predictor: GSVAPredictor, protocol: str = "generate",
                  prompt_mode: str = "per-expression", prompt_style: str = "ours", batch_size: int = 1,
                  limit: int | None = None, shard: tuple[int, int] = (0, 1),
                  progress: Callable[[Iterator], Iterator] | None = None) -> list[dict]:
    """Evaluate the images of ``benchmark`` (the first ``limit``; of those, every ``shard[1]``-th starting at
    ``shard[0]``). Returns ``predictions.jsonl`` rows (dicts) in benchmark order.

    ``batch_size`` questions (teacher-forced: conversations) share each forward pass; in the generate protocol
    they are decoded together with the answers one at a time gives (:meth:`GSVAPredictor.answer_many`), from
    several images when an image has fewer questions: the questions of :data:`LENGTH_GROUPS` batches (of at most
    ``batch_size`` images) are grouped by prompt length, and their images encoded together
    (:meth:`GSVAPredictor.encode_images`, a batch of images per pass). Raises InputError for an unknown
    protocol/mode or a bad batch size, :class:`gsva.images.ImageError` / :class:`gsva.data.refer.AnnotationError`
    for bad data (naming the file).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if prompt_mode not in PROMPT_MODES:
        raise InputError(f"prompt mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be an integer >= 1, got {batch_size!r}")
    rank, world = shard
    images = benchmark.images[:limit] if limit else benchmark.images
    images = images[rank::world]
    reasonseg = benchmark.name == "reasonseg"
    verbatim = prompt_style == "official"
    # generate: questions wait for LENGTH_GROUPS batches (of at most batch_size images), decoded batch_size at a time
    # grouped by prompt length
    window = batch_size * LENGTH_GROUPS if protocol == "generate" and batch_size > 1 else batch_size
    rows: list[dict] = []
    pending: list[tuple] = []  # conversations waiting for a batch: (protocol's input, (image, group, gts))
    encoded: list[tuple] = []  # generate: (image array, its encoding) of the image whose questions go on

    def flush(current=None) -> None:
        if not pending:
            return
        if protocol == "generate":  # the batch's images not yet encoded, in one pass of each encoder
            def encoding(a):
                return next((e for x, e in encoded if x is a), None)

            new = []
            for (a, *_), _ in pending:
                if encoding(a) is None and not any(a is x for x in new):
                    new.append(a)
            for k in range(0, len(new), batch_size):  # at most a batch of images per encoder pass
                encoded.extend(zip(new[k:k + batch_size], predictor.encode_images(new[k:k + batch_size])))
            items = [(encoding(a), *rest) for (a, *rest), _ in pending]
            encoded[:] = [(x, e) for x, e in encoded if x is current]  # the current image may ask more
            outcomes = generate_outcomes_batch(predictor, items, verbatim=verbatim, batch_size=batch_size)
        else:
            outcomes = teacher_forced_outcomes(predictor, [item for item, _ in pending])
        for (_, (image, group, gts)), outs in zip(pending, outcomes):
            for expr, outcome, (gt, ignore) in zip(group, outs, gts):
                rows.append(_row(image, expr, outcome, gt, ignore))
        pending.clear()

    for image in (progress(images) if progress else images):
        if protocol == "generate" and len({id(item[0]) for item, _ in pending}) >= batch_size:
            flush()  # at most a batch of images waits encoded (1 expression per image: one batch, as before)
        array = load_image(image.path)
        h, w = array.shape[:2]
        gts = {expr.id: benchmark.ground_truth(image, expr, h, w) for expr in image.expressions}
        for group in _groups(image, prompt_mode, reasonseg):
            def check(g):
                question, answer, present = _conversation(g, prompt_style, reasonseg)
                if protocol == "generate":  # QuestionError when the prompt does not fit
                    predictor.check_question(question, verbatim=verbatim)
                    return [(g, (array, question, [clean_expression(e.sentence) for e in g],
                                 [e.gt_empty for e in g]))]
                _check_length(predictor, question, answer)
                return [(g, (array, question, answer, present))]

            for g, item in _split_until_fits(group, check):
                pending.append((item, (image, g, [gts[e.id] for e in g])))
                if len(pending) >= window:
                    flush(array)
    flush()
    return rows


def summarize(rows: list[dict], dataset: str, scorers: tuple[str, ...] | None = None,
              dmmi_resize: int | None = None) -> dict:
    """Metrics of ``rows`` for each scorer (default: the dataset's, :data:`gsva.scoring.DEFAULT_SCORERS`) plus slot
    counts. Decodes the rows' RLE masks, exactly as ``gsva score`` does from the file."""
    names = scorers or DEFAULT_SCORERS[dataset]
    metrics = score_samples((sample_from_row(r) for r in rows), names, dataset, dmmi_resize)
    slots = {k: sum(1 for r in rows if r.get("slot") == k) for k in ("ok", "missing")}
    slots["extra"] = sum(int(r.get("extra_slots", 0)) for r in rows)
    return {"scorers": metrics, "slots": slots, "num_expressions": len(rows),
            "num_images": len({r["image_id"] for r in rows})}
