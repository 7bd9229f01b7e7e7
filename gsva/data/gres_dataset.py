"""Multi-target GRES training conversations from a gRefCOCO-format dataset.

Each item is one image with k expressions: k = min(max_targets, #expressions) half of the time (the official choice;
the paper's default max is 5, appendix Figure A4), otherwise uniform in 1..that. The question names all k, the answer has one ``[SEG]`` per present target and
``[REJ]`` per absent one (official templates, :mod:`gsva.conversation`).

Differences from the official sampler (documented choices): k also takes smaller values (the official always takes
min(N, #sentences)), so single-expression questions, as used by per-expression evaluation, are seen in training;
and conversations whose targets are all absent are kept (the official redraws them), so "nothing here" answers are
learned too. With ``caption_rate`` > 0 (from-scratch recipes only), that share of items is a describe-the-scene
conversation instead (:mod:`gsva.data.describe`).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import GSVAConfig
from ..conversation import Piece, PromptTooLongError, Turn, answer_pieces, question_text, render_conversation
from ..errors import InputError
from ..images import load_image
from ..tokens import ControlTokenIds
from .collate import EncodedSample, encode_longest_prefix, encode_sample
from .describe import DESCRIBE_QUESTION, attribute_question, describe_answer
from .grefcoco import AnnotationError, GRefCOCO

__all__ = ["GRESConversationDataset", "MAX_POINT_PROMPTS"]

MAX_POINT_PROMPTS = 3
"""Instances per image prompted by a point for the auxiliary SAM objective (``LossConfig.point_prompt_weight``)."""

logger = logging.getLogger(__name__)


class GRESConversationDataset(Dataset):
    """One item per image of ``split``; the drawn targets change per access (seeded by ``seed`` and the index).

    Args:
        gref: the annotation index. split: e.g. "train". max_targets: N, at most this many targets per question.
        seed: base seed; item ``i`` at its ``e``-th access uses ``Random((seed, i, e))``, so runs are reproducible.
        caption_rate: probability in [0, 1) that an item is a describe-the-scene conversation (no slots, no masks)
            instead of a GRES one. attribute_rate: probability in [0, 1] that such an item is an attribute question
            answered in words instead. follow_up_rate: probability in [0, 1] that a GRES conversation with two or
            more drawn targets asks them in two turns (the second a follow-up about the same image, both answers
            supervised, the masks in slot order), so the model also learns to answer after an earlier turn; 0 (the
            official data: one turn) draws exactly what it drew before the option existed. Raises ValueError
            outside those ranges.
    """

    def __init__(self, gref: GRefCOCO, split: str, tokenizer, token_ids: ControlTokenIds, config: GSVAConfig,
                 max_targets: int = 5, seed: int = 0, caption_rate: float = 0.0, attribute_rate: float = 0.0,
                 follow_up_rate: float = 0.0) -> None:
        if not 0.0 <= follow_up_rate <= 1.0:
            raise InputError(f"follow_up_rate must be in [0, 1], got {follow_up_rate}")
        if not 0.0 <= caption_rate < 1.0:
            raise InputError(f"caption_rate must be in [0, 1), got {caption_rate}")
        if not 0.0 <= attribute_rate <= 1.0:
            raise InputError(f"attribute_rate must be in [0, 1], got {attribute_rate}")
        self.gref = gref
        self.records = gref.records(split)
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.config = config
        self.max_targets = max_targets
        self.seed = seed
        self.caption_rate, self.attribute_rate = caption_rate, attribute_rate
        self.follow_up_rate = follow_up_rate
        self.epoch = 0
        self.name = getattr(gref, "name", "grefcoco")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the draw of targets/templates for the next pass (call once per pass over the data)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> EncodedSample:
        return self.sample(index, random.Random(f"{self.seed}-{index}-{self.epoch}"))

    def texts(self) -> list[str]:
        """Every expression of the split (for a from-scratch tokenizer)."""
        return [e.sentence for rec in self.records for e in rec.expressions]

    def sample(self, index: int, rng: random.Random) -> EncodedSample:
        """The conversation of image ``index`` with the random choices drawn from ``rng``."""
        rec = self.records[index]
        image = load_image(self.gref.image_path(rec))
        if image.shape[:2] != (rec.height, rec.width):
            raise AnnotationError(f"{rec.file_name}: image is {image.shape[1]}x{image.shape[0]}, annotation says "
                             f"{rec.width}x{rec.height}")
        sample = None
        if self.caption_rate and rng.random() < self.caption_rate:
            try:
                sample = self._describe_sample(rec, image, rng)
            except PromptTooLongError:  # e.g. a real image with dozens of instances: ask a GRES question instead
                logger.debug("description of image %d is too long; using a GRES conversation", rec.image_id)
        if sample is None:
            sample = self._gres_sample(rec, image, rng)
        if self.config.loss.point_prompt_weight > 0:
            sample.point_coords, sample.point_masks = self._point_prompts(rec, sample.resized_hw, rng)
        return sample

    def _gres_sample(self, rec, image: np.ndarray, rng: random.Random) -> EncodedSample:
        """A multi-target GRES conversation on ``rec``: k drawn expressions, one [SEG]/[REJ] slot each, asked in
        one turn, or (``follow_up_rate``) split over two turns at a drawn point."""
        most = min(self.max_targets, len(rec.expressions))
        k = most if rng.random() < 0.5 else rng.randint(1, most)
        exprs = rng.sample(list(rec.expressions), k)
        split = k
        if self.follow_up_rate and k >= 2 and rng.random() < self.follow_up_rate:
            split = rng.randint(1, k - 1)  # the first turn asks exprs[:split], the follow-up the rest

        def turn(chosen) -> Turn:
            phrases = [e.sentence.rstrip(".").strip() for e in chosen]
            present = [not e.is_empty for e in chosen]
            return Turn(question_text(phrases, rng), answer_pieces(phrases, present, rng.randrange(5)), phrases)

        def build(n: int) -> EncodedSample:
            chosen = exprs[:n]
            turns = [turn(chosen[:split])] + ([turn(chosen[split:])] if n > split else [])
            masks = [self.gref.mask(e.ann_ids, rec.height, rec.width) for e in chosen if not e.is_empty]
            masks = np.stack(masks) if masks else np.zeros((0, rec.height, rec.width), np.uint8)
            pieces = render_conversation(turns, self.config.use_im_start_end, self.config.conv_template)
            phrases = [e.sentence.rstrip(".").strip() for e in chosen]
            return encode_sample(image, pieces, masks,
                                 self.tokenizer, self.token_ids, self.config,
                                 meta={"image_id": rec.image_id, "phrases": phrases})

        return encode_longest_prefix(build, len(exprs))

    def _describe_sample(self, rec, image: np.ndarray, rng: random.Random) -> EncodedSample:
        """A target-free conversation on ``rec`` (no [SEG]/[REJ] slots, so no masks): describe-the-scene, or (with
        probability ``attribute_rate``, when the annotations have attributes) an attribute question answered in
        words."""
        asked = None
        if self.attribute_rate and rng.random() < self.attribute_rate:
            asked = attribute_question(self.gref, rec.image_id, rng)
        question, text = asked or (DESCRIBE_QUESTION, describe_answer(self.gref, rec.image_id))
        answer = [Piece(text, train=True), Piece(control="<eos>", train=True)]
        pieces = render_conversation([Turn(question, answer)], self.config.use_im_start_end,
                                     self.config.conv_template)
        no_masks = np.zeros((0, rec.height, rec.width), np.uint8)
        return encode_sample(image, pieces, no_masks, self.tokenizer, self.token_ids, self.config,
                             meta={"image_id": rec.image_id, "phrases": [], "task": "describe"})

    def _point_prompts(self, rec, resized_hw: tuple[int, int], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive point, uniform over its visible pixels, for up to MAX_POINT_PROMPTS instances of the image.

        Returns ((m, 2) float32 (x, y) in the SAM input frame, (m, H, W) float32 {0, 1} instance masks).
        """
        ids = self.gref.instance_ids(rec.image_id)
        ids = rng.sample(ids, min(len(ids), MAX_POINT_PROMPTS))
        sy, sx = resized_hw[0] / rec.height, resized_hw[1] / rec.width
        coords, masks = [], []
        for a in ids:
            m = self.gref.mask((a,), rec.height, rec.width)
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            j = rng.randrange(len(ys))
            coords.append((xs[j] * sx, ys[j] * sy))
            masks.append(m)
        if not masks:
            return torch.zeros((0, 2)), torch.zeros((0, rec.height, rec.width))
        return (torch.tensor(coords, dtype=torch.float32),
                torch.from_numpy(np.stack(masks).astype(np.float32)))


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy/random in a DataLoader worker from torch's per-worker seed (deterministic for a seeded loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
