"""Training conversations for the semantic segmentation, VQA and ReasonSeg families (referring data:
:mod:`gsva.data.gres_dataset`).

Every dataset here is a map-style dataset of :class:`gsva.data.collate.EncodedSample` with one more method,
``sample(index, rng)``: the conversation built from record ``index`` with the random choices (targets, templates)
drawn from ``rng``. ``dataset[i]`` uses ``random.Random(f"{seed}-{i}-{epoch}")``; the mixture
(:class:`gsva.data.mixture.MixtureDataset`) passes its own per-draw generator, so a record drawn twice is asked
about differently. ``texts()`` lists what a from-scratch tokenizer must cover.

Templates (LeapLabTHU/GSVA at 618dc79, ``model/llava/constants.py``, used by ``data/sem_seg_dataset.py``,
``data/vqa_dataset.py`` and ``data/reason_seg_dataset.py``):

* semantic segmentation: up to ``max_targets`` distinct classes of the image (the official takes exactly
  min(N, #classes)), the GRES question and answer templates with targets joined by "," (no space); always
  ``[SEG]``.
* VQA: the LLaVA-Instruct rounds as given; when too long for ``config.max_length``, trailing rounds are dropped
  (the official truncates the token sequence at 769 tokens instead).
* ReasonSeg: one query of the image per conversation (the official packs up to N queries of an image, each its
  own conversation, into one sample); short queries use LISA's ``SHORT_QUESTION_LIST``, sentences its
  ``LONG_QUESTION_LIST``; answers ``ANSWER_LIST``. For an image listed in ``explanatory/train.json``, with
  probability ``explanatory`` (official 0.1) the answer is the explanation alone (no mask), otherwise 50/50 a plain
  answer, or the answer plus the explanation with an "explain why" question.
"""

from __future__ import annotations

import logging
import random

import numpy as np
from torch.utils.data import Dataset

from ..config import GSVAConfig
from ..conversation import Turn, answer_pieces, question_text, render_conversation, \
    text_answer_pieces
from ..errors import InputError
from ..images import load_image
from ..templates import (EXPLANATORY_QUESTIONS, REASON_ANSWERS, REASON_LONG_QUESTIONS, REASON_SHORT_QUESTIONS,
                         SEMSEG_SEP)
from ..tokens import ControlTokenIds
from .collate import EncodedSample, encode_longest_prefix, encode_sample
from .reasonseg import ReasonSeg
from .refer import AnnotationError
from .semseg import LabelMapDataset, PartDataset, PartName
from .vqa import LlavaInstruct

__all__ = ["ConversationDataset", "SemSegConversations", "VQAConversations", "ReasonSegConversations",
           "SEMSEG_SEP", "REASON_SHORT_QUESTIONS", "REASON_LONG_QUESTIONS", "REASON_ANSWERS",
           "EXPLANATORY_QUESTIONS", "reasonseg_texts"]

logger = logging.getLogger(__name__)


class ConversationDataset(Dataset):
    """Base: ``__getitem__(i)`` = ``sample(i, Random(f"{seed}-{i}-{epoch}"))``; subclasses implement ``sample`` and
    set ``source`` (a reader with ``len``, ``[i]`` and ``texts()``) or override ``__len__`` and ``texts``."""

    name = "conversations"

    def __init__(self, tokenizer, token_ids: ControlTokenIds, config: GSVAConfig, max_targets: int = 5,
                 seed: int = 0) -> None:
        if max_targets < 1:
            raise InputError("max_targets must be >= 1")
        self.tokenizer, self.token_ids, self.config = tokenizer, token_ids, config
        self.max_targets, self.seed, self.epoch = max_targets, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def texts(self) -> list[str]:
        return self.source.texts()

    def __getitem__(self, index: int) -> EncodedSample:
        return self.sample(index, random.Random(f"{self.seed}-{index}-{self.epoch}"))

    def sample(self, index: int, rng: random.Random) -> EncodedSample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, image: np.ndarray, turns: list[Turn], masks: np.ndarray, meta: dict) -> EncodedSample:
        pieces = render_conversation(turns, self.config.use_im_start_end, self.config.conv_template)
        return encode_sample(image, pieces, masks,
                             self.tokenizer, self.token_ids, self.config, meta=meta)


def _no_masks(image: np.ndarray) -> np.ndarray:
    return np.zeros((0, image.shape[0], image.shape[1]), np.uint8)


class SemSegConversations(ConversationDataset):
    """Multi-target "segment these classes" conversations from a :mod:`gsva.data.semseg` reader."""

    def __init__(self, source: LabelMapDataset | PartDataset, tokenizer, token_ids: ControlTokenIds,
                 config: GSVAConfig, max_targets: int = 5, seed: int = 0) -> None:
        super().__init__(tokenizer, token_ids, config, max_targets, seed)
        self.source, self.name = source, source.name

    def sample(self, index: int, rng: random.Random) -> EncodedSample:
        record = self.source[index]
        if not record.names:
            raise AnnotationError(f"{record.image_path}: no labelled class in this image")
        image = load_image(record.image_path)
        picked = rng.sample(range(len(record.names)), min(self.max_targets, len(record.names)))
        phrases = [n.phrase(rng.random() >= 0.5) if isinstance(n, PartName) else n
                   for n in (record.names[k] for k in picked)]
        masks = [record.mask(k) for k in picked]
        if masks[0].shape != image.shape[:2]:
            raise AnnotationError(f"{record.image_path}: image is {image.shape[1]}x{image.shape[0]} but its label "
                                  f"is {masks[0].shape[1]}x{masks[0].shape[0]}")
        template, style = rng.randrange(4), rng.randrange(5)
        meta = {"dataset": self.name, "image": str(record.image_path)}

        def build(k: int) -> EncodedSample:
            turn = Turn(question_text(phrases[:k], template=template),
                        answer_pieces(phrases[:k], [True] * k, style, sep=SEMSEG_SEP), phrases[:k])
            return self._encode(image, [turn], np.stack(masks[:k]), dict(meta, phrases=phrases[:k]))

        return encode_longest_prefix(build, len(phrases))


class VQAConversations(ConversationDataset):
    """LLaVA-Instruct multi-round conversations (text answers, no masks)."""

    name = "llava_instruct_150k"

    def __init__(self, source: LlavaInstruct, tokenizer, token_ids: ControlTokenIds, config: GSVAConfig,
                 max_targets: int = 5, seed: int = 0) -> None:
        super().__init__(tokenizer, token_ids, config, max_targets, seed)
        self.source = source

    def sample(self, index: int, rng: random.Random) -> EncodedSample:
        record = self.source[index]
        image = load_image(record.image_path)
        turns = [Turn(q, text_answer_pieces("", a)) for q, a in record.rounds]
        meta = {"dataset": self.name, "phrases": [], "image": str(record.image_path)}
        return encode_longest_prefix(lambda k: self._encode(image, turns[:k], _no_masks(image), meta), len(turns))


class ReasonSegConversations(ConversationDataset):
    """ReasonSeg training conversations: one query, one ``[SEG]`` (or an explanation only), see the module doc.

    Args:
        sources: ReasonSeg split readers opened with ``all_texts=True`` (the official ``ReasonSeg|train_val``
            joins splits).
        explanations: {image file name: explanation} from ``explanatory/train.json`` (empty: none).
        explanatory: probability of an explanation-only answer for an image with an explanation, in [0, 1].
    """

    name = "reason_seg"

    def __init__(self, sources: list[ReasonSeg], explanations: dict[str, str], tokenizer,
                 token_ids: ControlTokenIds, config: GSVAConfig, max_targets: int = 5, seed: int = 0,
                 explanatory: float = 0.1) -> None:
        super().__init__(tokenizer, token_ids, config, max_targets, seed)
        if not 0.0 <= explanatory <= 1.0:
            raise InputError(f"explanatory must be in [0, 1], got {explanatory}")
        self.sources = list(sources)
        self.records = [(s, r) for s in self.sources for r in s.records()]
        self.explanations = dict(explanations)
        self.explanatory = explanatory

    def __len__(self) -> int:
        return len(self.records)

    def texts(self) -> list[str]:
        return reasonseg_texts(self.sources, self.explanations)

    def sample(self, index: int, rng: random.Random) -> EncodedSample:
        source, record = self.records[index]
        image = load_image(record.image_path)
        text = rng.choice(record.texts)
        answer = rng.choice(REASON_ANSWERS)
        explanation = self.explanations.get(record.image_path.name)
        meta = {"dataset": self.name, "phrases": [text], "image": str(record.image_path)}
        if explanation is not None and rng.random() < self.explanatory:
            return self._encode(image, [Turn(text, text_answer_pieces("", explanation))], _no_masks(image), meta)
        if record.is_sentence:
            question = rng.choice(REASON_LONG_QUESTIONS).format(sent=text)
        else:
            question = rng.choice(REASON_SHORT_QUESTIONS).format(c=text.lower())
        plain = ""
        if explanation is not None and rng.random() < 0.5:
            question, plain = f"{text} {rng.choice(EXPLANATORY_QUESTIONS)}", explanation
        target, _ignore = source.masks(record, image.shape[0], image.shape[1])
        return self._encode(image, [Turn(question, text_answer_pieces(answer, plain))],
                            target[None].astype(np.uint8), meta)


def reasonseg_texts(sources: list[ReasonSeg], explanations: dict[str, str]) -> list[str]:
    """Queries, explanations and the ReasonSeg templates (for a from-scratch tokenizer)."""
    out = [t for s in sources for r in s.records() for t in r.texts] + list(explanations.values())
    return out + list(REASON_SHORT_QUESTIONS + REASON_LONG_QUESTIONS + REASON_ANSWERS + EXPLANATORY_QUESTIONS)
