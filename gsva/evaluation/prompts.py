"""Questions and teacher-forced answers for evaluation, in two styles.

``ours`` (default): the first official *training* question template, "Can you segment {X} in this image?", and for
teacher forcing the third training answer style, "Sure, the mask of {x} is [SEG], the mask of {y} is [REJ]." —
what the model was trained to read and write. ReasonSeg uses LISA's validation questions without the leading space.

``official``: GSVA's *validation* strings reproduced exactly, quirks included (LeapLabTHU/GSVA at 618dc79,
``data/dataset.py``, ``ValDataset.__getitem__``): user ``" What are " + ", ".join(refs) + "in this image? Please output
segmentation masks."`` (leading space, no space before "in"), assistant ``"Sure," + ", ".join(r + ":[SEG]"
or r + ":[REJ]") + "."`` (no space after "Sure,"); refs lower-cased with '.' stripped. ReasonSeg: ``" {sent}
Please output segmentation mask."`` (long query) or ``" What is {sent} in this image? Please output segmentation
mask."``, answer ``"[SEG]"``. Use it to reproduce GSVA's published numbers with released weights.
"""

from __future__ import annotations

from ..constants import REJ_TOKEN, SEG_TOKEN
from ..conversation import Piece, answer_pieces, question_text
from ..errors import InputError
from ..templates import (OFFICIAL_REFER_ANSWER_START, OFFICIAL_REFER_QUESTION, OFFICIAL_REFER_SLOT,
                         REASONSEG_VAL_QUESTIONS)

__all__ = ["PROMPT_STYLES", "clean_expression", "refer_question", "refer_answer", "reasonseg_question",
           "reasonseg_answer"]

PROMPT_STYLES = ("ours", "official")


def clean_expression(sentence: str) -> str:
    """The expression as it enters a prompt: lower-cased, trailing '.' and surrounding spaces removed."""
    return sentence.strip().rstrip(".").strip().lower()


def _check(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise InputError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def refer_question(expressions: list[str], style: str = "ours") -> str:
    """The user question naming ``expressions`` (already cleaned)."""
    _check(style)
    if style == "official":
        return OFFICIAL_REFER_QUESTION.format(X=", ".join(expressions))
    return question_text(expressions, template=0)


def refer_answer(expressions: list[str], present: list[bool], style: str = "ours") -> list[Piece]:
    """Teacher-forced answer pieces: one slot per expression, ``[SEG]`` if present else ``[REJ]``, then EOS."""
    _check(style)
    if style == "ours":
        return answer_pieces(expressions, present, style=2)
    pieces = [Piece(OFFICIAL_REFER_ANSWER_START, train=True)]
    before = OFFICIAL_REFER_SLOT.split("{n}")[1].replace(SEG_TOKEN, "")
    for i, (expr, here) in enumerate(zip(expressions, present)):
        pieces.append(Piece((", " if i else "") + expr + before, train=True))
        pieces.append(Piece(control=SEG_TOKEN if here else REJ_TOKEN, train=True))
    pieces += [Piece(".", train=True), Piece(control="<eos>", train=True)]
    return pieces


def reasonseg_question(text: str, is_sentence: bool, style: str = "ours") -> str:
    """LISA's ReasonSeg validation question (``is_sentence``: the query is a full sentence)."""
    _check(style)
    q = REASONSEG_VAL_QUESTIONS[0 if is_sentence else 1].format(sent=text)
    return " " + q if style == "official" else q


def reasonseg_answer(style: str = "ours") -> list[Piece]:
    """Teacher-forced ReasonSeg answer: GSVA's ``"[SEG]"`` (official) or ``" Sure, [SEG]."`` (a LISA training
    answer)."""
    _check(style)
    if style == "official":
        return [Piece(" ", train=True), Piece(control=SEG_TOKEN, train=True), Piece(control="<eos>", train=True)]
    return [Piece(" Sure, ", train=True), Piece(control=SEG_TOKEN, train=True), Piece(".", train=True),
            Piece(control="<eos>", train=True)]
