"""Describe-the-scene conversations: an image-grounding task for models whose vision side is trained from scratch.

LLaVA's first stage aligns vision and language on captions before any instruction tuning; the paper's models start
from such a LLaVA. ``gsva-tiny`` has no such start: its vision tower, projector and language model begin random, and
trained on GRES conversations alone its language model learns to answer from the question's text and ignore the
image (docs/training.md, "Known weakness"). A GRES answer gives one image-dependent decision per target ([SEG] or [REJ]); a
description gives one per word. Mixing these conversations into training (``TrainRecipe.caption_rate``) is our
addition for the from-scratch recipe; the official recipe has no such task.

Attribute questions (:func:`attribute_question`) are the other kind of target-free conversation: "What colour is the
large star?" answered " The large star is red." (or, when several objects fit, " There are 2 large stars: a red one
and a blue one."); they teach a model fine-tuned on GRES answers that a question naming no target to segment is
answered in words.

Question: :data:`DESCRIBE_QUESTION`. Answer: ``" There are N objects: a small red circle, a large blue star."`` with the
image's non-crowd instances ordered left to right by box centre (ties: top to bottom). An instance's phrase is its
category name, preceded by the ``size`` and ``color`` of its ``attributes`` when the annotation has them (our synthetic
``instances.json`` does; real COCO annotations do not, and then the phrase is the category name alone).
"""

from __future__ import annotations

from ..templates import (ATTRIBUTE_COLOUR_QUESTION, ATTRIBUTE_MANY, ATTRIBUTE_ONE, ATTRIBUTE_SHAPE_QUESTION,
                         DESCRIBE_MANY, DESCRIBE_NONE, DESCRIBE_ONE, DESCRIBE_QUESTION)
from .grefcoco import AnnotationError, GRefCOCO

__all__ = ["DESCRIBE_QUESTION", "instance_phrase", "describe_answer", "describe_texts", "attribute_question"]

_ATTRIBUTE_ORDER = ("size", "color")


def instance_phrase(annotation: dict, categories: dict[int, str]) -> str:
    """``"small red circle"`` from a COCO annotation with optional ``attributes`` {"size", "color"}.

    Raises KeyError if the annotation's ``category_id`` is not among ``categories``.
    """
    attrs = annotation.get("attributes") or {}
    words = [str(attrs[k]) for k in _ATTRIBUTE_ORDER if attrs.get(k)]
    return " ".join(words + [categories[int(annotation["category_id"])]])


def _with_article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def describe_answer(gref: GRefCOCO, image_id: int) -> str:
    """The answer text for image ``image_id`` (starts with a space, ends with a full stop; no control tokens).

    Raises :class:`AnnotationError` naming the annotation if its ``bbox`` or ``category_id`` is missing or unknown.
    """
    anns = [gref.anns[a] for a in gref.instance_ids(image_id)]
    if not anns:
        return DESCRIBE_NONE
    try:
        anns.sort(key=lambda a: (a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2))
        items = ", ".join(_with_article(instance_phrase(a, gref.categories)) for a in anns)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{gref.ann_dir / 'instances.json'}: image {image_id}: an annotation lacks a valid "
                              f"bbox or category_id ({exc!r})") from None
    return DESCRIBE_ONE.format(items=items) if len(anns) == 1 else DESCRIBE_MANY.format(k=len(anns), items=items)


def describe_texts(gref: GRefCOCO) -> list[str]:
    """Every text the describe task can produce on ``gref`` (question and one answer per image), for tokenizers."""
    return [DESCRIBE_QUESTION] + [describe_answer(gref, i) for i in sorted(gref.images)]


def attribute_question(gref: GRefCOCO, image_id: int, rng) -> tuple[str, str] | None:
    """A question about one attribute of the objects a phrase names, and its answer in words, or None when the image
    has no instance with ``size`` and ``color`` attributes (real COCO).

    Drawn with ``rng`` (a ``random.Random``): an instance, then either "What colour is the <size> <shape>?" or "What
    shape is the <size> <colour> object?"; every instance the phrase fits is counted in the answer (left to right).
    """
    anns = [gref.anns[a] for a in gref.instance_ids(image_id)]
    anns = [a for a in anns if (a.get("attributes") or {}).get("size") and (a.get("attributes") or {}).get("color")]
    if not anns:
        return None
    anns.sort(key=lambda a: (a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2))
    pick = rng.choice(anns)
    size, color = pick["attributes"]["size"], pick["attributes"]["color"]
    shape = gref.categories[int(pick["category_id"])]
    if rng.random() < 0.5:
        fits = [a for a in anns if a["attributes"]["size"] == size and gref.categories[int(a["category_id"])] == shape]
        phrase, plural = f"{size} {shape}", f"{size} {shape}s"
        question, values = ATTRIBUTE_COLOUR_QUESTION.format(phrase=phrase), [a["attributes"]["color"] for a in fits]
        item = "{} one".format  # "a red one"
    else:
        fits = [a for a in anns if a["attributes"]["size"] == size and a["attributes"]["color"] == color]
        phrase, plural = f"{size} {color} object", f"{size} {color} objects"
        question = ATTRIBUTE_SHAPE_QUESTION.format(phrase=phrase)
        values = [gref.categories[int(a["category_id"])] for a in fits]
        item = str  # "a star"
    if len(values) == 1:
        value = values[0] if item is not str else _with_article(values[0])
        return question, ATTRIBUTE_ONE.format(phrase=phrase, value=value)
    named = [_with_article(item(v)) for v in values]
    return question, ATTRIBUTE_MANY.format(k=len(values), plural=plural, items=", ".join(named[:-1]),
                                           last=named[-1])
