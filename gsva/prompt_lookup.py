"""Draft tokens for prompt-lookup decoding: guess the next tokens of an answer by copying them from the prompt.

A GSVA answer mostly repeats the question's phrases ("What are the red heart, the yellow hexagon in this image?" ->
"Sure, the red heart: [SEG], the yellow hexagon: [REJ]."), so the tokens that follow the answer's last few tokens
in the prompt are a good guess of what comes next. The predictor feeds the guess to the language model in one
forward pass and keeps the longest prefix that greedy decoding would have produced itself (prompt-lookup
decoding: Saxena, "Prompt Lookup Decoding", github.com/apoorvumang/prompt-lookup-decoding, 2023; transformers'
``generate(prompt_lookup_num_tokens=...)``). A wrong guess costs a slightly longer forward pass, never a different
answer: every kept token is the argmax of the model's own logits.

Our matcher prefers the first match at or after ``cursor`` (where the previous copy ended), so phrases are copied
in the order the question names them even when a short n-gram such as "the" occurs several times.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["draft_from_prompt"]


def draft_from_prompt(prompt: Sequence[int], generated: Sequence[int], cursor: int, max_draft: int,
                      stop_ids: Collection[int] = (), max_ngram: int = 3) -> tuple[list[int], int]:
    """Up to ``max_draft`` token ids that followed the generated tail the last time it occurred in ``prompt``.

    Args:
        prompt: the prompt's token ids (length P). generated: the answer's ids so far (length G >= 1).
        cursor: prompt index where the previous accepted copy ended (0 at the start); the first match that
            ends at or after it wins, else the first match.
        max_draft: most ids to return (0 returns none). stop_ids: ids a draft never contains (the draft ends
            before the first one, e.g. the image placeholder). max_ngram: longest tail tried; shorter tails are
            tried when it has no match.
    Returns:
        (draft ids, prompt index just after the matched tail): the caller sets ``cursor`` to that index plus the
        number of draft ids it accepted. ``([], cursor)`` when nothing matches.
    """
    if max_draft <= 0 or not generated:
        return [], cursor
    for n in range(min(max_ngram, len(generated)), 0, -1):
        tail = list(generated[-n:])
        starts = [i for i in range(len(prompt) - n) if list(prompt[i:i + n]) == tail]
        if not starts:
            continue
        # a match ending at or after the cursor continues the copy in progress (or starts the next phrase)
        start = next((i for i in starts if i + n >= cursor), starts[0]) + n
        draft = []
        for token in prompt[start:start + max_draft]:
            if token in stop_ids:
                break
            draft.append(int(token))
        if draft:
            return draft, start
    return [], cursor
