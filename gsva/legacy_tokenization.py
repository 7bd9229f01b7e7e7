"""The LLaMA tokenization the released GSVA/LISA/LLaVA-v1 weights were trained with ("legacy" sentencepiece).

The official code (GSVA ``main.py`` ``prepare_model_tokenizer``; LISA ``train_ds.py``) loads
``AutoTokenizer(..., use_fast=False)``: transformers' slow ``LlamaTokenizer``, which for the LLaMA-1-era folders (no
``legacy`` key in ``tokenizer_config.json``) runs with ``legacy=True`` (transformers 4.31-4.44,
``tokenization_llama.py``). It tokenizes a prompt string as follows:

1. LLaVA's ``tokenizer_image_token`` (``mm_utils.py``) splits the prompt on ``"<image>"``; each part is tokenized
   on its own with BOS, the BOS of every part but the first is dropped, and the image id goes between the parts.
2. ``PreTrainedTokenizer.tokenize`` splits each part on the added tokens (``[SEG]``, ``[REJ]``, ``<im_start>``,
   ``<im_end>``, ``</s>``, ...), without stripping the spaces around them (``AddedToken(lstrip=False,
   rstrip=False)``).
3. Every text chunk between added tokens is encoded by ``sentencepiece`` alone (``LlamaTokenizer._tokenize``:
   ``self.sp_model.encode(text, out_type=str)``). The LLaMA model's ``add_dummy_prefix`` therefore puts a ``▁`` in
   front of *every chunk*: ``"A chat ..."`` starts with ``▁A``, and text right after an added token starts with an
   extra ``▁`` piece (``"[SEG], the"`` -> ``[SEG]``, ``▁``, ``,``, ``▁the``; ``"<im_end>\\nWhat"`` -> ``<im_end>``,
   ``▁``, ``<0x0A>``, ...).

Our conversations are lists of :class:`gsva.conversation.Piece` s, split exactly at the control tokens, so the
same ids come out when each maximal run of adjacent text pieces is encoded as one chunk by the model's own
``tokenizer.model`` (:meth:`LegacySentencePiece.encode_runs`). One deliberate difference: text a user typed is
always text here, so a user's literal ``"[SEG]"`` or ``"</s>"`` stays characters where the official code would
turn it into the control token.

A model uses this tokenization when its config says ``text.tokenization: legacy_sentencepiece`` (the
``gsva-vicuna-*``/``gsva-llama2-13b`` configs); its checkpoint then holds the ``tokenizer.model`` file, and the
HF tokenizer next to it supplies the added tokens' ids and decoding.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

__all__ = ["SENTENCEPIECE_FILE", "TOKENIZATIONS", "LegacySentencePiece", "attach_legacy_sentencepiece",
           "legacy_sentencepiece_of", "LegacyTokenizerError", "prepare_tokenizer"]

SENTENCEPIECE_FILE = "tokenizer.model"
"""The sentencepiece model file of a LLaMA tokenizer folder."""

TOKENIZATIONS = ("hf", "legacy_sentencepiece")
"""Values of ``TextConfig.tokenization``: "hf" = the HF tokenizer encodes each text piece; "legacy_sentencepiece"
= this module."""

_ATTRIBUTE = "_gsva_legacy_sentencepiece"


class LegacyTokenizerError(UserError, ValueError):
    """The sentencepiece file is missing, unreadable, or does not belong to the HF tokenizer beside it."""


class LegacySentencePiece:
    """A LLaMA ``tokenizer.model`` used the way transformers' slow ``LlamaTokenizer`` (``legacy=True``) uses it.

    Args:
        path: the sentencepiece model file.
        vocab: the HF tokenizer's ``get_vocab()``; every sentencepiece piece must have the same id there (the
            tokenizer was built from this file), else :class:`LegacyTokenizerError`.
    """

    def __init__(self, path: str | Path, vocab: dict[str, int] | None = None) -> None:
        import sentencepiece

        self.path = Path(path)
        if not self.path.is_file():
            raise LegacyTokenizerError(f"{self.path} does not exist: a legacy_sentencepiece model needs the LLaMA "
                                       f"{SENTENCEPIECE_FILE} of its tokenizer")
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            ok = self.processor.LoadFromSerializedProto(self.path.read_bytes())
        except (OSError, RuntimeError) as exc:
            raise LegacyTokenizerError(f"{self.path}: not a sentencepiece model ({exc})") from None
        if not ok:
            raise LegacyTokenizerError(f"{self.path}: not a sentencepiece model")
        if vocab is not None:
            wrong = [(i, self.processor.id_to_piece(i)) for i in range(self.processor.get_piece_size())
                     if vocab.get(self.processor.id_to_piece(i)) != i
                     and not self.processor.is_control(i) and not self.processor.is_unknown(i)]
            if wrong:
                raise LegacyTokenizerError(f"{self.path} does not match the tokenizer beside it: pieces "
                                           f"{wrong[:5]} have other ids there")

    def encode(self, text: str) -> list[int]:
        """One chunk (text between two added tokens) -> ids, with sentencepiece's dummy prefix."""
        return list(self.processor.encode(text)) if text else []

    def encode_runs(self, texts: list[str], train: list[bool]) -> tuple[list[int], list[bool]]:
        """Encode adjacent text pieces as the one chunk they form in the official prompt string.

        Returns the ids and, per id, whether it belongs to a ``train`` piece: the piece in which the token's first
        byte lies (a token made only of the dummy-prefix ``▁`` belongs to the first piece). So ``" ASSISTANT:"`` +
        ``" Sure,"`` gives ``...``, ``:`` (prompt), ``▁S``, ``ure``, ``,`` (answer): the tokens the official label
        masking (LLaVA ``preprocess_v1``, ``instruction_len``) supervises.
        """
        if len(texts) != len(train):
            raise ValueError("texts and train must have the same length")
        joined = "".join(texts)
        if not joined:
            return [], []
        ends, pos = [], 0
        for t in texts:
            pos += len(t.encode("utf-8"))
            ends.append(pos)
        proto = self.processor.encode(joined, return_type="proto")
        ids, flags = [], []
        for piece in proto.pieces:
            start = piece.begin
            k = next((j for j, end in enumerate(ends) if start < end), len(texts) - 1)
            ids.append(piece.id)
            flags.append(train[k])
        return ids, flags


def attach_legacy_sentencepiece(tokenizer, path: str | Path) -> LegacySentencePiece:
    """Make ``tokenizer`` (the HF tokenizer of a ``legacy_sentencepiece`` model) encode text through the
    sentencepiece file ``path`` from now on (:func:`gsva.tokens.encode_text`, :func:`gsva.conversation.
    tokenize_pieces`). Raises :class:`LegacyTokenizerError`."""
    legacy = LegacySentencePiece(path, tokenizer.get_vocab())
    setattr(tokenizer, _ATTRIBUTE, legacy)
    return legacy


def legacy_sentencepiece_of(tokenizer) -> LegacySentencePiece | None:
    """The :class:`LegacySentencePiece` attached to ``tokenizer``, or None (the HF tokenizer encodes text)."""
    return getattr(tokenizer, _ATTRIBUTE, None)


def prepare_tokenizer(tokenizer, tokenization: str, folder: str | Path):
    """Set ``tokenizer`` up for a model whose config says ``text.tokenization == tokenization``: for
    "legacy_sentencepiece", attach ``folder/tokenizer.model``; "hf" needs nothing. Returns ``tokenizer``.
    Raises :class:`LegacyTokenizerError`."""
    if tokenization == "legacy_sentencepiece":
        attach_legacy_sentencepiece(tokenizer, Path(folder) / SENTENCEPIECE_FILE)
    elif tokenization != "hf":
        raise LegacyTokenizerError(f"unknown tokenization {tokenization!r}; known: {', '.join(TOKENIZATIONS)}")
    return tokenizer
