"""Conversations: rendering turns with the templates of :mod:`gsva.templates`, tokenisation into ``input_ids`` /
``labels``, and parsing a generated answer back into its slot phrases.

A conversation is rendered as a list of :class:`Piece` s: plain text, or one control token placed by this module.
Text is always encoded with :func:`gsva.tokens.encode_text`, so control tokens can never come from text a user typed.

Rendering (LeapLabTHU/GSVA at 618dc79, ``model/llava/conversation.py``, ``data/refer_seg_dataset.py``; the strings
are in :mod:`gsva.templates`):

* llava_v1: ``SYSTEM + " USER: " + "<im_start><image><im_end>\\n" + question + " ASSISTANT: " + answer + "</s>"``;
  later turns ``"USER: " + question + " ASSISTANT: " + answer + "</s>"``.
* Questions (``SHORT_QUESTION_LIST_MODE4``) name all targets, ``", ".join(phrases).lower()``.
* Answers: ``START[c] + " " + SEP.join(TEMPLATE[c](phrase)) + "."`` with one style ``c`` for the whole answer;
  absent targets get ``[REJ]`` in place of ``[SEG]``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .constants import IGNORE_INDEX, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, REJ_TOKEN, SEG_TOKEN
from .errors import UserError
from .legacy_tokenization import legacy_sentencepiece_of
from .templates import (ANSWER_SEP, ANSWER_STARTS, ANSWER_TEMPLATES, CHATML_SYSTEM_PROMPT, QUESTION_TEMPLATES,
                        SYSTEM_PROMPT, answer_template_parts)
from .tokens import ControlTokenIds, encode_text

__all__ = [
    "SYSTEM_PROMPT",
    "QUESTION_TEMPLATES",
    "ANSWER_STARTS",
    "ANSWER_TEMPLATES",
    "Piece",
    "Turn",
    "question_text",
    "answer_pieces",
    "text_answer_pieces",
    "render_conversation",
    "CHATML_SYSTEM_PROMPT",
    "tokenize_pieces",
    "parse_slot_phrases",
    "normalize_phrase",
    "PromptTooLongError",
    "question_phrases",
]


class PromptTooLongError(UserError, ValueError):
    """The rendered conversation has more tokens than the model's ``max_length``."""


@dataclass(frozen=True)
class Piece:
    """One span of a conversation: ``text`` (plain), ``control`` (a control-token string, ``"<bos>"``/``"<eos>"``)
    or ``ids`` (token ids produced by the model itself, e.g. an earlier generated answer).

    ``train`` marks spans of an assistant answer, which receive language-model labels.
    """

    text: str = ""
    control: str | None = None
    train: bool = False
    ids: tuple[int, ...] | None = None


@dataclass
class Turn:
    """One user question and, when known, the assistant answer as pieces (``None`` = to be generated)."""

    question: str
    answer: list[Piece] | None = None
    phrases: list[str] = field(default_factory=list)


def question_text(phrases: list[str], rng: random.Random | None = None, template: int | None = None) -> str:
    """Join target phrases into one question (lower-cased, official ``", ".join(names).lower()``)."""
    if not phrases:
        raise ValueError("a question needs at least one phrase")
    idx = template if template is not None else (rng or random).randrange(len(QUESTION_TEMPLATES))
    return QUESTION_TEMPLATES[idx].format(X=", ".join(phrases).lower())


def answer_pieces(phrases: list[str], present: list[bool], style: int, sep: str = ANSWER_SEP) -> list[Piece]:
    """Answer pieces for targets ``phrases``; ``present[i]`` selects ``[SEG]`` (True) or ``[REJ]`` (False).

    ``sep`` joins the targets: ", " for referring data, "," for semantic segmentation (official
    ``refer_seg_dataset.py`` / ``sem_seg_dataset.py``). The answer starts with a space because the generation
    prompt ends in ``"ASSISTANT:"`` (llava_v1).
    """
    if len(phrases) != len(present) or not phrases:
        raise ValueError("phrases and present must be non-empty and of equal length")
    pieces = [Piece(" " + ANSWER_STARTS[style] + " ", train=True)]
    prefix, suffix = answer_template_parts(style)
    for i, (phrase, here) in enumerate(zip(phrases, present)):
        lead = sep if i else ""
        pieces.append(Piece(lead + prefix + phrase + suffix, train=True))
        pieces.append(Piece(control=SEG_TOKEN if here else REJ_TOKEN, train=True))
    pieces.append(Piece(".", train=True))
    pieces.append(Piece(control="<eos>", train=True))
    return pieces


def text_answer_pieces(template: str, plain: str = "") -> list[Piece]:
    """Answer pieces for a free-form answer: ``template`` is ours, and each ``"[SEG]"`` in it becomes a mask slot
    (ReasonSeg's "Sure, [SEG]."); ``plain`` (dataset text: a VQA answer, a ReasonSeg explanation) follows after a
    space and is always plain text, control-token look-alikes included. The answer starts with a space, as in
    :func:`answer_pieces`."""
    pieces = []
    for i, chunk in enumerate((" " + template).split(SEG_TOKEN) if template else []):
        if i:
            pieces.append(Piece(control=SEG_TOKEN, train=True))
        if chunk:
            pieces.append(Piece(chunk, train=True))
    if plain:
        pieces.append(Piece(" " + plain, train=True))
    if not pieces:
        raise ValueError("an answer needs a template or text")
    pieces.append(Piece(control="<eos>", train=True))
    return pieces


def render_conversation(turns: list[Turn], use_im_start_end: bool = True, template: str = "llava_v1") -> list[Piece]:
    """Render turns as pieces of ``template``. The image goes at the start of the first turn; a final turn whose
    ``answer`` is None ends ready for generation (``" ASSISTANT:"`` in llava_v1, ``"<|im_start|>assistant\n"`` in
    chatml).

    ``chatml`` (SmolLM2's template): ``<|im_start|>system\n{CHATML_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n``
    ``<im_start><image><im_end>\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>``, later turns
    ``\n<|im_start|>user\n...``. ``<|im_start|>``/``<|im_end|>`` are placed as the tokenizer's BOS/EOS controls
    (SmolLM2's BOS and EOS are exactly those tokens; :func:`gsva.base_models.build_based_model` checks it). Answers are
    built with llava_v1's leading space (:func:`answer_pieces`); chatml drops it, as its answer starts a line.
    """
    if template == "chatml":
        return _render_chatml(turns, use_im_start_end)
    if template != "llava_v1":
        raise ValueError(f"unknown conversation template {template!r}")
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    pieces = [Piece(control="<bos>"), Piece(SYSTEM_PROMPT + " USER: ")]
    for i, turn in enumerate(turns):
        if i == 0:
            if use_im_start_end:
                pieces.append(Piece(control=IM_START_TOKEN))
            pieces.append(Piece(control=IMAGE_TOKEN))
            if use_im_start_end:
                pieces.append(Piece(control=IM_END_TOKEN))
            pieces.append(Piece("\n" + turn.question + " ASSISTANT:"))
        else:
            pieces.append(Piece("USER: " + turn.question + " ASSISTANT:"))
        if turn.answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        pieces.extend(turn.answer)
    return pieces


def _render_chatml(turns: list[Turn], use_im_start_end: bool) -> list[Piece]:
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    pieces = [Piece(control="<bos>"), Piece("system\n" + CHATML_SYSTEM_PROMPT), Piece(control="<eos>")]
    for i, turn in enumerate(turns):
        pieces += [Piece("\n"), Piece(control="<bos>"), Piece("user\n")]
        if i == 0:
            image = [Piece(control=IMAGE_TOKEN)]
            if use_im_start_end:
                image = [Piece(control=IM_START_TOKEN)] + image + [Piece(control=IM_END_TOKEN)]
            pieces += image + [Piece("\n")]
        pieces += [Piece(turn.question), Piece(control="<eos>"), Piece("\n"), Piece(control="<bos>"),
                   Piece("assistant\n")]
        if turn.answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        answer = list(turn.answer)
        if answer and answer[0].control is None and answer[0].ids is None and answer[0].text.startswith(" "):
            answer[0] = Piece(answer[0].text[1:], train=answer[0].train)
        pieces.extend(answer)
    return pieces


def tokenize_pieces(pieces: list[Piece], tokenizer, ids: ControlTokenIds, num_image_tokens: int,
                    max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Encode pieces to ``(input_ids, labels)``, both length L.

    The image control expands to ``num_image_tokens`` (T) copies of the image id, so hidden states align 1:1 with
    ``input_ids`` (no "+255" offset). Labels equal ``input_ids`` on ``train`` pieces and ``IGNORE_INDEX`` elsewhere.
    Raises :class:`PromptTooLongError` if L > ``max_length``.

    With a legacy sentencepiece model attached to ``tokenizer`` (the released LLaMA/Vicuna weights,
    :mod:`gsva.legacy_tokenization`), each maximal run of adjacent text pieces is encoded as the one chunk it forms
    in the official prompt string, so the ids equal those of the official pipeline; a token's label follows the
    piece its first byte lies in.
    """
    control_ids = {SEG_TOKEN: ids.seg, REJ_TOKEN: ids.rej, IM_START_TOKEN: ids.im_start, IM_END_TOKEN: ids.im_end,
                   "<bos>": ids.bos, "<eos>": ids.eos}
    legacy = legacy_sentencepiece_of(tokenizer)
    if legacy is not None:
        pieces = _merge_text_runs(pieces)
    input_ids: list[int] = []
    labels: list[int] = []
    for piece in pieces:
        if isinstance(piece, _TextRun):
            new, train = legacy.encode_runs(piece.texts, piece.train)
            input_ids.extend(new)
            labels.extend(i if t else IGNORE_INDEX for i, t in zip(new, train))
            if max_length is not None and len(input_ids) > max_length:
                raise PromptTooLongError(
                    f"the conversation needs more than {max_length} tokens (the model's limit); shorten the question")
            continue
        if piece.control == IMAGE_TOKEN:
            new = [ids.image] * num_image_tokens
        elif piece.control is not None:
            new = [control_ids[piece.control]]
        elif piece.ids is not None:
            new = list(piece.ids)
        else:
            new = encode_text(tokenizer, piece.text)
        input_ids.extend(new)
        labels.extend(new if piece.train else [IGNORE_INDEX] * len(new))
        if max_length is not None and len(input_ids) > max_length:
            raise PromptTooLongError(
                f"the conversation needs more than {max_length} tokens (the model's limit); shorten the question")
    return input_ids, labels


@dataclass(frozen=True)
class _TextRun:
    """Adjacent text pieces, encoded together (legacy sentencepiece tokenization)."""

    texts: list[str]
    train: list[bool]


def _merge_text_runs(pieces: list[Piece]) -> list:
    out: list = []
    for piece in pieces:
        if piece.control is None and piece.ids is None:
            if out and isinstance(out[-1], _TextRun):
                out[-1].texts.append(piece.text)
                out[-1].train.append(piece.train)
            else:
                out.append(_TextRun([piece.text], [piece.train]))
        else:
            out.append(piece)
    return out


_QUESTION_FORMS = [re.compile("^" + re.escape(t).replace(re.escape("{X}"), "(.+?)") + "$", re.IGNORECASE)
                   for t in QUESTION_TEMPLATES + ("What are {X} in this image?", "What is {X} in this image?")]


def question_phrases(question: str) -> list[str] | None:
    """The phrases a question in one of our multi-target forms names (``QUESTION_TEMPLATES``, "What are {X} in
    this image?", "What is {X} in this image?"; ``{X}`` split at ", "), else None.
    "What are the red heart, the zebra in this image?" -> ["the red heart", "the zebra"]."""
    text = " ".join(question.split())
    for form in _QUESTION_FORMS:
        match = form.match(text)
        if match:
            phrases = [p.strip(" ,") for p in match.group(1).split(", ")]
            return phrases if all(phrases) else None
    return None


def _alternatives(words) -> str:
    """A regex group matching any of ``words`` (longest first, so that "sure, they are" wins over "sure,")."""
    return "(" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


# built from the answer templates (gsva.templates): the answer start, the text before a phrase, the text after it
_START_RE = re.compile(r"^\s*" + _alternatives(s.lower() for s in ANSWER_STARTS) + r"\s*", re.IGNORECASE)
_PARTS = [answer_template_parts(c) for c in range(len(ANSWER_TEMPLATES))]
_PREFIX_RE = re.compile(r"^" + _alternatives(p.strip() for p, _ in _PARTS if p.strip()) + r"\s+", re.IGNORECASE)
_SUFFIXES = {s.strip() for _, s in _PARTS} - {""}
_SUFFIX_RE = re.compile("(" + "|".join((r"\s+" if w[0].isalnum() else "") + re.escape(w) for w in sorted(_SUFFIXES))
                        + r")\s*$", re.IGNORECASE)


def parse_slot_phrases(segments: list[str]) -> list[str]:
    """Recover the phrase of each slot from the answer text before it.

    ``segments[k]`` is the generated text between slot k-1 (or the answer start) and slot k. Returns one phrase per
    slot with the answer templates' start, prefixes, separators and suffixes removed.
    """
    phrases = []
    for k, seg in enumerate(segments):
        text = seg
        if k == 0:
            text = _START_RE.sub("", text)
        else:
            text = re.sub(r"^\s*,\s*", "", text)
        text = _PREFIX_RE.sub("", text.strip())
        text = _SUFFIX_RE.sub("", text)
        phrases.append(text.strip())
    return phrases


def normalize_phrase(text: str) -> str:
    """Lower-case, drop punctuation at the ends and collapse spaces (for matching asked vs answered phrases)."""
    return " ".join(text.lower().strip(" .,:;!?\"'").split())
