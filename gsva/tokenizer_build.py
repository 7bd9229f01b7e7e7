"""Train the small sentencepiece tokenizer of ``gsva-tiny`` (offline, on synthetic expressions + templates).

The sentencepiece model (BPE, byte fallback so any UTF-8 text encodes) is loaded as transformers'
``LlamaTokenizer``, the tokenizer class of LLaVA-Vicuna, and saved as ``tokenizer.json``. It is built with
``add_prefix_space=False`` (its Metaspace pre-tokenizer never prepends a "▁"), so a text span encodes the same wherever
it stands in a conversation (spans are encoded one by one, :mod:`gsva.conversation`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["train_tokenizer"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, control_tokens: bool = True):
    """Train on ``texts`` and return a ``LlamaTokenizer``; with ``control_tokens`` the control tokens are added
    (ids after the base vocab), without it the result is a plain LLaMA-style tokenizer (as a LLaVA release ships)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    from .tokens import add_control_tokens

    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_prefix=str(Path(tmp) / "tokenizer"), vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=False, split_digits=True, minloglevel=2,
        )
        # add_prefix_space=False: Metaspace never prepends "▁" (and the setting is saved with the tokenizer)
        tokenizer = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=False)
    if control_tokens:
        add_control_tokens(tokenizer)
    return tokenizer
