"""Greedy decoding of several answers at once, with a KV cache, prompt-lookup drafts and [SEG]/[REJ] recording.

:func:`decode` continues B prompts that have already been run through the language model (their keys and values in
one cache). Every forward pass feeds, per row, its last chosen token plus up to ``draft_tokens`` ids copied from
the row's draft source (:func:`gsva.prompt_lookup.draft_from_prompt`); a drafted id is kept while it equals the
argmax at its position, so each row's answer is its greedy answer. Rows differ in how many drafts they keep: the
columns a row rejected stay in the cache but are masked out of attention for good, and its RoPE positions count
only the tokens it kept, so a row sees exactly the sequence it would see decoded alone. Columns that no row kept are
cropped, and finished rows leave the batch. With one row nothing is ever masked: plain speculative greedy decoding.

Legend: B rows, A rows still decoding, C cache columns, W tokens fed per pass (1 + the longest draft), D hidden
size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .prompt_lookup import draft_from_prompt
from .tokens import ControlTokenIds

__all__ = ["Generated", "SlotChooser", "decode", "stack_caches"]


@dataclass
class Generated:
    """One row's answer: ``ids`` the generated token ids (no end-of-sequence id); per slot (each ``[SEG]``/``[REJ]``
    in ``ids``, in order) ``states`` the (D,) last hidden state of the position that predicted it, ``scores``
    P([SEG]) / (P([SEG]) + P([REJ])) there in [0, 1], ``is_seg`` the decision."""

    ids: list[int] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    is_seg: list[bool] = field(default_factory=list)


class SlotChooser:
    """The greedy choice at one position, recording slots.

    ``banned``: ids never chosen (image placeholder, image start/end, BOS). At a position whose greedy id is
    ``[SEG]`` or ``[REJ]`` the slot is recorded; with ``reject_threshold`` set the slot is ``[SEG]`` iff
    P([SEG]) / (P([SEG]) + P([REJ])) >= the threshold, else the greedy id stands.
    """

    def __init__(self, ids: ControlTokenIds, banned: torch.Tensor, reject_threshold: float | None) -> None:
        self.ids = ids
        self.banned = banned
        self.reject_threshold = reject_threshold

    def __call__(self, state: torch.Tensor, logits: torch.Tensor, out: Generated) -> int | None:
        """``state`` (D,), ``logits`` (V,) float32 (modified in place). Returns the id, or None at the end."""
        logits[self.banned.to(logits.device)] = float("-inf")
        token = int(logits.argmax())
        if token == self.ids.eos:
            return None
        if token in (self.ids.seg, self.ids.rej):
            probs = torch.softmax(logits, -1)
            p_seg, p_rej = float(probs[self.ids.seg]), float(probs[self.ids.rej])
            score = p_seg / max(p_seg + p_rej, 1e-12)
            if self.reject_threshold is not None:
                token = self.ids.seg if score >= self.reject_threshold else self.ids.rej
            out.states.append(state)
            out.scores.append(score)
            out.is_seg.append(token == self.ids.seg)
        return token


def stack_caches(caches: Sequence[object], lengths: Sequence[int] | None = None) -> object:
    """One transformers ``DynamicCache`` holding the rows of ``caches`` (each one row), left-padded with zeros to
    the longest (``lengths``: each cache's column count; the caller masks the padding). The inputs are not changed."""
    from transformers import DynamicCache

    lengths = list(lengths) if lengths is not None else [c.get_seq_length() for c in caches]
    width = max(lengths)
    layers = []
    for layer in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, n in zip(caches, lengths):
            k, v = cache.layers[layer].keys, cache.layers[layer].values  # (1, H, n, d)
            pad = width - n
            if pad:
                k = torch.cat([k.new_zeros(*k.shape[:2], pad, k.shape[3]), k], dim=2)
                v = torch.cat([v.new_zeros(*v.shape[:2], pad, v.shape[3]), v], dim=2)
            keys.append(k)
            values.append(v)
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(layers)


def decode(forward: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor],
           lm_logits: Callable[[torch.Tensor], torch.Tensor], cache, attention_mask: torch.Tensor,
           positions: torch.Tensor, last_hidden: torch.Tensor, sources: Sequence[Sequence[int]],
           budgets: Sequence[int], chooser: SlotChooser, draft_tokens: int, pad_id: int,
           on_step: Callable[[int, list[int]], None] | None = None) -> list[Generated]:
    """Greedy answers of B prompts already in ``cache``.

    Args:
        forward: (ids (A, W), attention mask (A, C + W) or None, position ids (A, W)) -> last hidden states
            (A, W, D); it appends the W columns to ``cache``.
        lm_logits: (..., D) hidden states -> (..., V) logits.
        cache: a ``DynamicCache`` of the B prompts, C columns; rows are dropped from it as they finish.
        attention_mask: (B, C) int64, 1 where a column is part of the row's prompt (0: padding).
        positions: (B,) int64, each row's next RoPE position (its prompt length).
        last_hidden: (B, D) the prompts' last hidden states (they predict the first answer token).
        sources: per row the ids drafts are copied from (an answer hint, then the prompt).
        budgets: per row the most ids to generate (<= 0: none).
        chooser: the greedy choice (:class:`SlotChooser`). draft_tokens: most drafted ids per pass (0: one token
            per pass). pad_id: the id fed where a row's draft is shorter than the pass (masked out).
        on_step: called as ``on_step(row, ids so far)`` after each pass that added ids to a row (streaming).

    Returns:
        One :class:`Generated` per row, in order.
    """
    b = last_hidden.shape[0]
    out = [Generated() for _ in range(b)]
    stop_draft = {chooser.ids.image, chooser.ids.eos, *chooser.banned.tolist()}  # ids greedy decoding never picks
    aliases = {chooser.ids.rej: chooser.ids.seg}  # after a [REJ] the hint's "[SEG], ..." goes on
    logits = lm_logits(last_hidden).float()  # (B, V)
    token: list[int | None] = [chooser(last_hidden[r], logits[r], out[r]) if budgets[r] > 0 else None
                               for r in range(b)]
    cursor = [0] * b
    rows = list(range(b))  # the rows still in the batch, in cache order
    device = last_hidden.device
    while True:
        for r in rows:
            if token[r] is not None:
                out[r].ids.append(token[r])
                if len(out[r].ids) >= budgets[r]:
                    token[r] = None
        keep = [i for i, r in enumerate(rows) if token[r] is not None]
        if not keep:
            return out
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attention_mask, positions = attention_mask[index], positions[index]
            rows = [rows[i] for i in keep]
        drafts, starts = [], []
        for r in rows:
            d, s = draft_from_prompt(sources[r], out[r].ids, cursor[r],
                                     min(draft_tokens, budgets[r] - len(out[r].ids)), stop_draft, aliases=aliases)
            drafts.append(d)
            starts.append(s)
        width = 1 + max(len(d) for d in drafts)
        feed = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
        fed = torch.zeros((len(rows), width), dtype=attention_mask.dtype, device=device)
        for i, (r, d) in enumerate(zip(rows, drafts)):
            feed[i, :1 + len(d)] = torch.tensor([token[r]] + d, device=device)
            fed[i, :1 + len(d)] = 1
        columns = attention_mask.shape[1]
        attention_mask = torch.cat([attention_mask, fed], dim=1)
        step_positions = positions[:, None] + torch.arange(width, device=device)
        hidden = forward(feed, None if bool(attention_mask.all()) else attention_mask, step_positions)
        step_logits = lm_logits(hidden).float()  # (A, W, V)
        accepted = []
        for i, (r, d) in enumerate(zip(rows, drafts)):
            a = 0
            token[r] = chooser(hidden[i, 0], step_logits[i, 0], out[r])
            while a < len(d) and token[r] == d[a]:
                out[r].ids.append(token[r])
                a += 1
                if len(out[r].ids) >= budgets[r]:
                    token[r] = None
                    break
                token[r] = chooser(hidden[i, a], step_logits[i, a], out[r])
            accepted.append(a)
            if a:
                cursor[r] = starts[i] + a
        kept = 1 + max(accepted)
        if kept < width:  # columns no row kept
            cache.crop(kept - width)  # a negative count removes that many trailing columns
            attention_mask = attention_mask[:, :columns + kept]
        for i, a in enumerate(accepted):
            attention_mask[i, columns + 1 + a:] = 0  # this row's rejected drafts
        positions = positions + 1 + torch.tensor(accepted, device=device)
        if on_step is not None:
            for r in rows:  # the answer so far: the kept ids and the id just chosen
                on_step(r, out[r].ids + ([token[r]] if token[r] is not None else []))
