"""A GSVA model on a pretrained base: put the base's weights in, and tell them apart from what training changed.

For a config with ``text.base`` (e.g. ``gsva-smol``), the language model's layers, final norm and the base
vocabulary's embedding rows (tied to ``lm_head``) come from the base file at load time and are never trained or
saved. Everything else, the *own* weights, is what a checkpoint holds: the vision tower and projector, LoRA, the
embedding rows of the added control tokens (saved as ``mllm.added_token_embeddings``), the [SEG] projector and SAM.
"""

from __future__ import annotations

import torch

from ..config import ConfigError

__all__ = ["ADDED_ROWS_KEY", "is_base_key", "attach_base", "train_added_rows_only", "init_slot_rows",
           "separator_token_id", "own_state_dict", "word_token_ids"]

ADDED_ROWS_KEY = "mllm.added_token_embeddings"
"""Checkpoint key of the (V - V_base, D) embedding rows of the tokens added to the base tokenizer."""

_LM = "mllm.model.language_model."
_EMBED = _LM + "embed_tokens.weight"


def is_base_key(name: str) -> bool:
    """Whether state-dict key ``name`` of a based model is provided by the base (layers, norm, embeddings,
    the tied ``lm_head``), as opposed to trained weights (LoRA inside those layers is trained)."""
    if name == "mllm.lm_head.weight":
        return True
    return name.startswith(_LM) and ".lora_" not in name


def attach_base(model, base_lm, tokenizer) -> None:
    """Copy the base ``LlamaForCausalLM``'s first ``config.text.num_hidden_layers`` layers, norm and embedding rows
    into ``model`` (a :class:`gsva.modeling.gsva_model.GSVAModel`, LoRA already injected) in place, and fill the
    word projector's word embeddings. Training must call :func:`train_added_rows_only` after setting
    ``requires_grad``.

    Raises ValueError if the base's shapes differ from the config or a language-model weight is left unfilled.
    """
    cfg = model.config.text
    base_state = base_lm.state_dict()
    n_base_layers = base_lm.config.num_hidden_layers
    if cfg.num_hidden_layers > n_base_layers or base_lm.config.hidden_size != cfg.hidden_size:
        raise ValueError(f"the base has {n_base_layers} layers of width {base_lm.config.hidden_size}; the config asks "
                         f"for {cfg.num_hidden_layers} of width {cfg.hidden_size}")
    own = model.state_dict()
    filled = 0
    with torch.no_grad():
        for name, tensor in own.items():
            if not is_base_key(name) or name in (_EMBED, "mllm.lm_head.weight"):
                continue
            source = "model." + name[len(_LM):].replace(".base_layer", "")
            if source not in base_state or tuple(base_state[source].shape) != tuple(tensor.shape):
                raise ValueError(f"the base lacks {source} of shape {tuple(tensor.shape)}")
            tensor.copy_(base_state[source])
            filled += 1
        embed = model.mllm.get_input_embeddings().weight
        rows = base_state["model.embed_tokens.weight"]
        if rows.shape[0] != cfg.vocab_size or rows.shape[0] > embed.shape[0]:
            raise ValueError(f"the base vocabulary has {rows.shape[0]} rows, the config says {cfg.vocab_size}")
        embed[: rows.shape[0]].copy_(rows)
    if filled == 0:
        raise ValueError("no language-model weight was filled from the base")
    projector = model.mllm.model.multi_modal_projector
    if hasattr(projector, "set_word_embeddings"):
        ids = word_token_ids(tokenizer, model.config.vision.word_groups)
        if projector.word_embeddings.shape[0] == len(ids) + 1:  # the object projector's separator, as in "a, b"
            ids.append(separator_token_id(tokenizer))
        projector.set_word_embeddings(embed[ids])


def train_added_rows_only(model) -> None:
    """Zero the gradient of the base vocabulary's rows of the (tied) embedding matrix, so that training moves only
    the added tokens' rows (keep weight decay 0 on it, as every recipe here does). No-op if it is frozen."""
    embed = model.mllm.get_input_embeddings().weight
    if not embed.requires_grad:
        return
    keep = torch.zeros(embed.shape[0], 1, dtype=embed.dtype)
    keep[model.config.text.vocab_size:] = 1
    embed.register_hook(lambda grad: grad * keep.to(grad))


def word_token_ids(tokenizer, groups: list[list[str]]) -> list[int]:
    """The id of each word as it appears in running text (with a leading space): its first token when the
    tokenizer splits it (" hexagon" -> " hex" + "agon" in SmolLM2's vocabulary)."""
    ids = []
    for group in groups:
        for word in group:
            pieces = tokenizer(" " + word, add_special_tokens=False).input_ids
            if not pieces:
                raise ConfigError(f"the tokenizer encodes {word!r} to nothing")
            ids.append(pieces[0])
    return ids


def separator_token_id(tokenizer) -> int:
    """The id of "," as it follows a word in running text (no leading space); its last piece if split."""
    pieces = tokenizer(",", add_special_tokens=False).input_ids
    if not pieces:
        raise ValueError("the tokenizer encodes ',' to nothing")
    return pieces[-1]


def init_slot_rows(model, tokenizer, words: list[str]) -> None:
    """Start the ``[SEG]`` and ``[REJ]`` embedding rows (tied: also their ``lm_head`` rows) as copies of the base's
    rows of two words, e.g. ``["yes", "no"]``, so that the presence decision begins on a readout the pretrained model
    already has (first piece of each word with a leading space, as :func:`word_token_ids`).

    Raises ValueError unless exactly two words are given.
    """
    if len(words) != 2:
        raise ConfigError(f"slot_row_words needs two words ([SEG], [REJ]), got {words!r}")
    seg_word, rej_word = word_token_ids(tokenizer, [list(words)])
    embed = model.mllm.get_input_embeddings().weight
    with torch.no_grad():
        embed[model.token_ids.seg].copy_(embed[seg_word])
        embed[model.token_ids.rej].copy_(embed[rej_word])


def own_state_dict(model, full_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The weights a based checkpoint holds: every key that :func:`is_base_key` rejects, plus
    :data:`ADDED_ROWS_KEY` (the embedding rows from ``config.text.vocab_size`` on). ``full_state``: take them from
    this complete state dict (e.g. gathered from ZeRO-3 partitions) instead of ``model.state_dict()``."""
    full = model.state_dict() if full_state is None else full_state
    state = {k: v for k, v in full.items() if not is_base_key(k)}
    state[ADDED_ROWS_KEY] = full[_EMBED][model.config.text.vocab_size:]
    return state
