"""Control tokens (``[SEG]``, ``[REJ]``, ``<image>``, ``<im_start>``, ``<im_end>``) and safe text encoding.

Two rules make the control tokens unforgeable:

1. Every control token is added to the tokenizer as a *special* token and its id is looked up in the vocabulary
   (``convert_tokens_to_ids``), never as ``tokenizer(tok).input_ids[0]``: that lookup picked the ``"▁"`` prefix piece
   instead of ``[SEG]`` in LISA issue #55.
2. All text (user questions, expressions, template strings) is encoded with ``split_special_tokens=True``, so a
   literal ``"[SEG]"`` typed by a user becomes ordinary characters. Control ids enter ``input_ids`` only where the
   conversation builder places them (:mod:`gsva.conversation`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import CONTROL_TOKENS, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, REJ_TOKEN, SEG_TOKEN
from .errors import UserError

__all__ = ["ControlTokenIds", "add_control_tokens", "control_token_ids", "encode_text", "TokenizerError"]


class TokenizerError(UserError, ValueError):
    """The tokenizer lacks a required token or maps a control token to more than one id."""


@dataclass(frozen=True)
class ControlTokenIds:
    """Vocabulary ids of the control tokens and of BOS/EOS/PAD (all ints >= 0)."""

    seg: int
    rej: int
    image: int
    im_start: int
    im_end: int
    bos: int
    eos: int
    pad: int


def add_control_tokens(tokenizer) -> ControlTokenIds:
    """Add any missing control token to ``tokenizer`` (in place) and return their ids.

    The caller must resize the model's embeddings to ``len(tokenizer)`` afterwards. Ids of tokens that already
    exist are kept, so a saved tokenizer round-trips to the same ids.
    """
    missing = [tok for tok in CONTROL_TOKENS if tok not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # official: pad = unk
    return control_token_ids(tokenizer)


def control_token_ids(tokenizer) -> ControlTokenIds:
    """Look up the control-token ids by exact vocabulary entry. Raises :class:`TokenizerError` if one is missing."""
    vocab = tokenizer.get_vocab()
    ids = {}
    for name, tok in zip(("seg", "rej", "image", "im_start", "im_end"),
                         (SEG_TOKEN, REJ_TOKEN, IMAGE_TOKEN, IM_START_TOKEN, IM_END_TOKEN)):
        if tok not in vocab:
            raise TokenizerError(f"tokenizer has no {tok} token; call add_control_tokens() first")
        ids[name] = vocab[tok]
    # A control token must encode to exactly its own id (LISA #55: a leading "▁" piece came first).
    for name in ("seg", "rej"):
        tok = SEG_TOKEN if name == "seg" else REJ_TOKEN
        enc = tokenizer(tok, add_special_tokens=False).input_ids
        if enc != [ids[name]]:
            raise TokenizerError(f"{tok} encodes to {enc}, expected the single id [{ids[name]}]")
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, attr) is None:
            raise TokenizerError(f"tokenizer has no {attr}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    if pad is None:
        raise TokenizerError("tokenizer has neither a pad nor an unk token")
    if len(set(ids.values())) != len(ids):
        raise TokenizerError(f"control tokens share ids: {ids}")
    return ControlTokenIds(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=pad, **ids)


def encode_text(tokenizer, text: str) -> list[int]:
    """Encode plain text to ids without BOS/EOS; control-token strings inside ``text`` stay ordinary characters.

    A tokenizer with a legacy sentencepiece model attached (:mod:`gsva.legacy_tokenization`) encodes ``text`` as one
    chunk of the official LLaMA tokenization (dummy ``▁`` prefix included)."""
    from .legacy_tokenization import legacy_sentencepiece_of

    legacy = legacy_sentencepiece_of(tokenizer)
    if legacy is not None:
        return legacy.encode(text)
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)
