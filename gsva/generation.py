"""Greedy decoding of several answers at once, with a KV cache, prompt-lookup drafts and [SEG]/[REJ] recording.

:func:`decode` continues B prompts whose starts are already in one KV cache. The first forward pass feeds, per row,
the rest of its prompt plus a guess of the answer's start (the answer hint); every later pass feeds the row's last
chosen id plus up to ``draft_tokens`` ids copied from its draft source (:func:`gsva.prompt_lookup.draft_from_prompt`).
A drafted id is kept while it equals the argmax at its position, so each row's answer is its greedy answer. Rows
differ in how many drafts they keep: the columns a row rejected (and its padding) stay in the cache but are masked
out of attention for good, and its RoPE positions count only the tokens it kept, so a row sees exactly the sequence
it would see decoded alone. Columns that no row kept are cropped, and finished rows leave the batch. With one row
nothing is ever masked: plain speculative greedy decoding.

Legend: B rows, A rows still decoding, C cache columns, W tokens fed per pass (the longest row input of the pass),
N positions where an id is predicted, D hidden size, V vocabulary.
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

    def ban(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (..., V) with the banned ids at -inf (in place); returns them."""
        logits[..., self.banned.to(logits.device)] = float("-inf")
        return logits

    def __call__(self, state: torch.Tensor, logits: torch.Tensor, out: Generated, greedy: int | None = None
                 ) -> int | None:
        """``state`` (D,), ``logits`` (V,) float32. ``greedy``: the argmax of ``logits`` after :meth:`ban`, when the
        caller has banned and taken the argmax for many positions at once (None: done here, banning ``logits`` in
        place). Returns the id, or None at the end."""
        if greedy is None:
            greedy = int(self.ban(logits).argmax())
        token = greedy
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
    """One transformers ``DynamicCache`` holding the rows of ``caches`` (each of one or more rows), left-padded with
    zeros to the longest (``lengths``: each cache's column count; the caller masks the padding). New tensors: the
    inputs are not changed."""
    from transformers import DynamicCache

    lengths = list(lengths) if lengths is not None else [c.get_seq_length() for c in caches]
    width = max(lengths)
    layers = []
    for layer in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, n in zip(caches, lengths):
            k, v = cache.layers[layer].keys, cache.layers[layer].values  # (rows, H, n, d)
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
           positions: torch.Tensor, pending: Sequence[Sequence[int]], first_drafts: Sequence[Sequence[int]],
           sources: Sequence[Sequence[int]], budgets: Sequence[int], chooser: SlotChooser, draft_tokens: int,
           pad_id: int, on_step: Callable[[int, list[int]], None] | None = None) -> list[Generated]:
    """Greedy answers of B prompts whose starts are in ``cache``.

    Args:
        forward: (ids (A, W), attention mask (A, C + W) or None, position ids (A, W)) -> last hidden states
            (A, W, D); it appends the W columns to ``cache``.
        lm_logits: (..., D) hidden states -> (..., V) logits.
        cache: a ``DynamicCache`` of the B prompts' starts, C columns; rows are dropped from it as they finish.
        attention_mask: (B, C) int64, 1 where a column is part of the row's prompt (0: padding).
        positions: (B,) int64, each row's next RoPE position (the length of its prompt's start).
        pending: per row the rest of its prompt (at least one id), fed in the first pass together with the row's
            ``first_drafts`` (a guess of the answer's first ids, e.g. the answer hint; may be empty), so the
            prompt's end and the first drafts cost one pass.
        sources: per row the ids later drafts are copied from (the answer hints first, then the prompt).
        budgets: per row the most ids to generate (<= 0: none).
        chooser: the greedy choice (:class:`SlotChooser`). draft_tokens: most drafted ids per pass (0: one token
            per pass, and no first drafts). pad_id: the id fed where a row's input is shorter than the pass
            (masked out).
        on_step: called as ``on_step(row, ids so far)`` after each pass that added ids to a row (streaming).

    Returns:
        One :class:`Generated` per row, in order.
    """
    b = len(pending)
    out = [Generated() for _ in range(b)]
    stop_draft = {chooser.ids.image, chooser.ids.eos, *chooser.banned.tolist()}  # ids greedy decoding never picks
    aliases = {chooser.ids.rej: chooser.ids.seg}  # after a [REJ] the hint's "[SEG], ..." goes on
    feeds = [list(p) for p in pending]  # what each row feeds next: its prompt's rest, then its last chosen id
    cursor = [0] * b
    device = attention_mask.device
    rows = [r for r in range(b) if budgets[r] > 0]  # the rows still in the batch, in cache order
    if len(rows) < b:
        index = torch.tensor(rows, dtype=torch.long, device=device)
        cache.batch_select_indices(index)
        attention_mask, positions = attention_mask[index], positions[index]
    first = True
    while rows:
        drafts, starts = [], []
        for r in rows:
            room = min(draft_tokens, budgets[r] - len(out[r].ids))
            if first:
                d, s = list(first_drafts[r])[:max(room, 0)], 0
            else:
                d, s = draft_from_prompt(sources[r], out[r].ids, cursor[r], room, stop_draft, aliases=aliases)
            drafts.append(d)
            starts.append(s)
        lengths = [len(feeds[r]) + len(d) for r, d in zip(rows, drafts)]
        width = max(lengths)
        feed = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
        fed = torch.zeros((len(rows), width), dtype=attention_mask.dtype, device=device)
        for i, (r, d) in enumerate(zip(rows, drafts)):
            feed[i, :lengths[i]] = torch.tensor(feeds[r] + d, device=device)
            fed[i, :lengths[i]] = 1
        columns = attention_mask.shape[1]
        attention_mask = torch.cat([attention_mask, fed], dim=1)
        step_positions = positions[:, None] + torch.arange(width, device=device)
        hidden = forward(feed, None if bool(attention_mask.all()) else attention_mask, step_positions)
        # logits only where a row predicts an id: its last fed prompt/answer id and each of its drafts, in one product
        row_index = torch.tensor([i for i, (r, d) in enumerate(zip(rows, drafts)) for _ in range(len(d) + 1)],
                                 device=device)
        col_index = torch.tensor([len(feeds[r]) - 1 + j for r, d in zip(rows, drafts) for j in range(len(d) + 1)],
                                 device=device)
        states = hidden[row_index, col_index]  # (N, D)
        logits = chooser.ban(lm_logits(states).float())  # (N, V)
        greedy = logits.argmax(-1).tolist()  # one call for every position of the pass
        kept, done, first_of_row = [], [], 0
        for i, (r, d) in enumerate(zip(rows, drafts)):
            a = 0
            token = chooser(states[first_of_row], logits[first_of_row], out[r], greedy[first_of_row])
            while token is not None and a < len(d) and token == d[a] and len(out[r].ids) < budgets[r]:
                out[r].ids.append(token)
                a += 1
                k = first_of_row + a
                token = chooser(states[k], logits[k], out[r], greedy[k]) if len(out[r].ids) < budgets[r] else None
            first_of_row += len(d) + 1
            kept.append(len(feeds[r]) + a)
            if a:
                cursor[r] = starts[i] + a
            if token is not None:
                out[r].ids.append(token)
                feeds[r] = [token]
            done.append(token is None or len(out[r].ids) >= budgets[r])
        keep = max(kept)
        if keep < width:  # columns no row kept
            cache.crop(keep - width)  # a negative count removes that many trailing columns
            attention_mask = attention_mask[:, :columns + keep]
        for i, k in enumerate(kept):
            attention_mask[i, columns + k:] = 0  # this row's rejected drafts and padding
        positions = positions + torch.tensor(kept, device=device)
        if on_step is not None:
            for r in rows:
                on_step(r, list(out[r].ids))
        first = False
        if any(done):
            index = [i for i, d in enumerate(done) if not d]
            rows = [rows[i] for i in index]
            if rows:
                t = torch.tensor(index, dtype=torch.long, device=device)
                cache.batch_select_indices(t)
                attention_mask, positions = attention_mask[t], positions[t]
    return out
