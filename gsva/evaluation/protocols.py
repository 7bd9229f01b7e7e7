"""The two evaluation protocols, per image.

``generate`` (the realistic one; no official script has it): the model answers each question by greedy generation
(several questions may be decoded together, with the same answers).
Answer slots are matched to the asked expressions by phrase (:func:`match_slots`); an expression left without a
slot counts against the model (a target as rejected, a no-target expression as not rejected, with an empty mask);
slots no expression claims are counted as extra.

``teacher-forced`` (the official GSVA protocol: LeapLabTHU/GSVA at 618dc79, ``model/modeling_lisa_gsva.py``,
``model_forward(inference=True)`` with ``reeval=True``, as ``solver.py`` ``eval_gres`` calls it): the ground-truth
answer is fed in; at each GT slot the argmax of the logits one position earlier decides — at a GT ``[SEG]`` anything but
``[SEG]`` counts as ``[REJ]``, at a GT ``[REJ]`` anything but ``[REJ]`` counts as ``[SEG]``; then every ``[REJ]`` in the
input is replaced by ``[SEG]`` and a second pass gives a mask for every slot. Several conversations run in one batch.

Both return, per expression, a :class:`SlotOutcome`; ``mask`` is always the slot's decoded mask (also when
rejected), so every scorer can apply its own rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..conversation import Piece, Turn, normalize_phrase, render_conversation, tokenize_pieces
from ..data.collate import collate, encode_sample
from ..inference import Answer, EncodedImage, GSVAPredictor
from ..modeling.object_projector import ObjectLayout
from ..modeling.seg_tokens import locate_slots

__all__ = ["SlotOutcome", "match_slots", "generate_outcomes_batch", "answer_outcomes", "teacher_forced_outcomes"]


@dataclass
class SlotOutcome:
    """The model's answer for one expression.

    ``pred_reject`` the slot said ``[REJ]`` (or no slot); ``score`` P([SEG]) / (P([SEG]) + P([REJ])) at the slot
    (None without a slot); ``mask`` (H, W) bool, the slot's decoded mask (all False without a slot); ``slot`` "ok"
    or "missing" (no slot answered this expression); ``answer`` the answer text; ``extra_slots`` the number of the
    answer's slots no asked expression claimed, counted once per answer (on its first expression).
    """

    pred_reject: bool
    score: float | None
    mask: np.ndarray
    slot: str
    answer: str
    extra_slots: int = 0


def match_slots(answer: Answer, expressions: list[str]) -> tuple[list[int | None], int]:
    """Assign answer slots to asked expressions.

    Exact (normalised) phrase matches first, in order; then the remaining expressions take the remaining slots in
    reading order. Returns (slot index or None per expression, number of unclaimed slots).
    """
    free = list(range(len(answer.targets)))
    chosen: list[int | None] = [None] * len(expressions)
    for e, expr in enumerate(expressions):
        want = normalize_phrase(expr)
        hit = next((k for k in free if normalize_phrase(answer.targets[k].phrase) == want), None)
        if hit is not None:
            chosen[e] = hit
            free.remove(hit)
    for e in range(len(expressions)):
        if chosen[e] is None and free:
            chosen[e] = free.pop(0)
    return chosen, len(free)


def generate_outcomes_batch(predictor: GSVAPredictor,
                            questions: list[tuple[EncodedImage, str, list[str], list[bool]]],
                            verbatim: bool = False, batch_size: int | None = None) -> list[list[SlotOutcome]]:
    """Ask each (encoded image, question, expressions, GT empty per expression) question in a fresh conversation,
    ``batch_size`` decoded together at a time (None: all; :meth:`gsva.inference.GSVAPredictor.answer_many`: the
    answers of one at a time), and score each expression's slot (:func:`answer_outcomes`)."""
    answers = predictor.answer_many([(enc, [], q) for enc, q, _, _ in questions], batch_size or len(questions) or 1,
                                    decode_rejected=True, verbatim=verbatim)
    return [answer_outcomes(a, enc.image.shape[:2], exprs, empty)
            for (a, _), (enc, _, exprs, empty) in zip(answers, questions)]


def answer_outcomes(answer: Answer, shape: tuple[int, int], expressions: list[str],
                    gt_empty: list[bool]) -> list[SlotOutcome]:
    """Each asked expression's outcome in ``answer`` (slots matched by :func:`match_slots`); ``shape`` (H, W) the
    image's size in pixels."""
    chosen, extra = match_slots(answer, expressions)
    out = []
    for k, empty in zip(chosen, gt_empty):
        if k is None:
            out.append(SlotOutcome(not empty, None, np.zeros(shape, bool), "missing", answer.text))
            continue
        t = answer.targets[k]
        mask = t.slot_mask if t.slot_mask is not None else np.zeros(shape, bool)
        out.append(SlotOutcome(t.status == "rej", t.score, mask, "ok", answer.text))
    out[0].extra_slots = extra
    return out


@torch.inference_mode()
def teacher_forced_outcomes(predictor: GSVAPredictor, conversations: list[tuple[np.ndarray, str, list[Piece],
                                                                               list[bool]]]) -> list[list[SlotOutcome]]:
    """Teacher-forced decisions and re-evaluated masks for a batch of conversations.

    ``conversations``: (image (H, W, 3) uint8, question, GT answer pieces, GT present per slot). Returns one list of
    outcomes per conversation, in slot order. Raises ValueError when the rendered slots differ from the GT count.
    """
    model, tok, ids = predictor.model, predictor.tokenizer, predictor.ids
    cfg = model.config
    samples, first = [], {}  # conversations about the same image (the same array object) share one preprocessing
    for image, q, answer, _ in conversations:
        pieces = render_conversation([Turn(q, answer)], cfg.use_im_start_end, cfg.conv_template)
        if id(image) in first:
            token_ids, labels = tokenize_pieces(pieces, tok, ids, cfg.num_image_tokens, cfg.max_length)
            samples.append(dataclasses.replace(first[id(image)], input_ids=torch.tensor(token_ids),
                                               labels=torch.tensor(labels)))
        else:
            samples.append(first.setdefault(id(image), encode_sample(image, pieces, None, tok, ids, cfg)))
    batch = collate(samples, ids.pad).to(model.device, model.dtype)
    # ... and one pass of each image encoder
    image_number: dict[int, int] = {}
    row_image = torch.tensor([image_number.setdefault(id(c[0]), len(image_number)) for c in conversations],
                             device=model.device)
    unique = [next(r for r, c in enumerate(conversations) if id(c[0]) == key) for key in image_number]
    feats, layout = model.image_tokens(batch.clip_pixels[unique])
    feats = feats[row_image]
    hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, feats), batch.attention_mask)
    slots = locate_slots(batch.input_ids, ids.seg, ids.rej)
    logits = model.lm_logits(hidden[slots.batch_index, slots.predict_position]).float()  # (S, V)
    logits[:, ids.image] = float("-inf")  # our image placeholder is never a prediction (no official vocab has it)
    argmax = logits.argmax(-1)
    probs = torch.softmax(logits, -1)
    p_seg, p_rej = probs[:, ids.seg], probs[:, ids.rej]
    score = (p_seg / (p_seg + p_rej).clamp_min(1e-12)).tolist()
    gt_seg = slots.is_seg.tolist()
    reject = [(int(a) != ids.seg) if g else (int(a) == ids.rej) for a, g in zip(argmax, gt_seg)]
    if predictor.reject_threshold is not None:  # the calibrated decision generation makes (GSVAPredictor)
        reject = [s < predictor.reject_threshold for s in score]
    # re-evaluation pass: every slot as [SEG], masks for all of them
    reeval_ids = batch.input_ids.masked_fill(batch.input_ids == ids.rej, ids.seg)
    hidden2, _ = model.language_forward(model.embed_inputs(reeval_ids, feats), batch.attention_mask)
    slots2 = locate_slots(reeval_ids, ids.seg, ids.rej)
    embeddings = model.sam_image_embeddings(batch.sam_pixels[unique])
    objects = None
    if model.uses_object_pointer:  # the object slots of every conversation row
        row_layout = ObjectLayout(layout.boxes[row_image], layout.present[row_image])
        objects = model.object_slots(hidden2, reeval_ids, row_layout, batch.resized_hw)
    seg_hidden = hidden2[slots2.batch_index, slots2.predict_position]
    low, _ = model.slot_masks(seg_hidden, slots2.batch_index, embeddings[row_image], objects)
    per_row = slots2.counts(len(conversations)).tolist()
    results, start = [], 0
    for r, ((_, _, _, present), n) in enumerate(zip(conversations, per_row)):
        if n != len(present):
            raise ValueError(f"conversation {r}: {n} slots rendered for {len(present)} expressions")
        full = model.postprocess(low[start:start + n], batch.resized_hw[r], batch.original_hw[r]).float()
        masks = (full > predictor.mask_threshold).cpu().numpy()
        results.append([SlotOutcome(reject[start + j], float(score[start + j]), masks[j], "ok", "")
                        for j in range(n)])
        start += n
    return results
