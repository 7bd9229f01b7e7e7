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

The prompt alone cannot draft what the answer adds around the phrases (its opening words, the slot tokens, the
separators), so every slot costs at least two passes. :func:`answer_hint` writes the answer a model trained on our
templates gives when every named target is present (:func:`gsva.conversation.answer_pieces`, style 0) as a second
source placed before the prompt; with ``[REJ]`` matched as ``[SEG]`` (``aliases``) a rejected target breaks the
copy for one pass only. A model mixes styles from answer to answer ("Sure, the mask of A is [SEG]." / "Sure, the
referred A is [SEG]."), so :func:`answer_hints` writes the hint in every style: the guessed one is the first draft,
and all of them are draft sources, so an answer that leaves the guessed style at its first words continues in the
style it took in the next pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

__all__ = ["draft_from_prompt", "answer_hint", "answer_hints", "hint_style", "common_prefix"]


def draft_from_prompt(prompt: Sequence[int], generated: Sequence[int], cursor: int, max_draft: int,
                      stop_ids: Collection[int] = (), max_ngram: int = 3,
                      aliases: Mapping[int, int] | None = None) -> tuple[list[int], int]:
    """Up to ``max_draft`` token ids that followed the generated tail the last time it occurred in ``prompt``.

    Args:
        prompt: the prompt's token ids (length P). generated: the answer's ids so far (length G >= 1).
        cursor: prompt index where the previous accepted copy ended (0 at the start); the first match that
            ends at or after it wins, else the first match.
        max_draft: most ids to return (0 returns none). stop_ids: ids a draft never contains (the draft ends
            before the first one, e.g. the image placeholder). max_ngram: longest tail tried; shorter tails are
            tried when it has no match. aliases: ids matched as another id (``{rej_id: seg_id}``); drafts copy the
            source's own ids.
    Returns:
        (draft ids, prompt index just after the matched tail): the caller sets ``cursor`` to that index plus the
        number of draft ids it accepted. ``([], cursor)`` when nothing matches.
    """
    if max_draft <= 0 or not generated:
        return [], cursor
    aliases = aliases or {}
    source = [aliases.get(int(t), int(t)) for t in prompt] if aliases else list(prompt)
    for n in range(min(max_ngram, len(generated)), 0, -1):
        tail = [aliases.get(int(t), int(t)) for t in generated[-n:]]
        starts = [i for i in range(len(source) - n) if source[i:i + n] == tail]
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


def answer_hint(question: str, tokenizer, ids, template: str, style: int = 0) -> list[int]:
    """Token ids of the answer to ``question`` when every target it names is present, in answer style ``style`` of
    the forms our models are trained with (:func:`gsva.conversation.answer_pieces`; style 0: "The segmentation
    results are A [SEG], B [SEG]."; conversation ``template`` "chatml" or "llava_v1" decides the leading space),
    ending with EOS; [] when the question is not one of the multi-target forms
    (:func:`gsva.conversation.question_phrases`). A draft source only: a wrong hint costs time, never a different
    answer."""
    from .conversation import question_phrases

    phrases = question_phrases(question)
    if not phrases:
        return []
    return _answer_ids(phrases, [True] * len(phrases), style, tokenizer, ids, template)


def answer_hints(question: str, tokenizer, ids, template: str) -> list[list[int]]:
    """:func:`answer_hint` of ``question`` in every answer style (index c: style c of
    :data:`gsva.templates.ANSWER_STARTS`); [] when the question is not one of the multi-target forms."""
    from .conversation import question_phrases
    from .templates import ANSWER_STARTS

    phrases = question_phrases(question)
    if not phrases:
        return []
    return [_answer_ids(phrases, [True] * len(phrases), c, tokenizer, ids, template) for c in range(len(ANSWER_STARTS))]


def hint_style(generated: Sequence[int], hints: Sequence[Sequence[int]], ids) -> int | None:
    """The style c whose hint (:func:`answer_hints`) is the ``generated`` answer (end of sequence excluded) with
    each ``[REJ]`` read as ``[SEG]``; None when none is (a free-form answer). The style the next hint for as many
    targets guesses (:class:`gsva.inference.GSVAPredictor`)."""
    want = [ids.seg if t == ids.rej else int(t) for t in generated] + [ids.eos]
    return next((c for c, hint in enumerate(hints) if list(hint) == want), None)


def common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest list of ids every one of ``sequences`` starts with ([] for none)."""
    if not sequences:
        return []
    first = list(sequences[0])
    n = next((i for i in range(len(first)) if any(len(s) <= i or s[i] != first[i] for s in sequences[1:])),
             len(first))
    return first[:n]


def _answer_ids(phrases: list[str], present: list[bool], style: int, tokenizer, ids, template: str) -> list[int]:
    from .conversation import answer_pieces, tokenize_pieces

    pieces = answer_pieces(phrases, present, style=style)
    if template == "chatml":  # its answer starts a line (gsva.conversation.render_conversation)
        pieces[0] = type(pieces[0])(pieces[0].text[1:], train=True)
    return tokenize_pieces(pieces, tokenizer, ids, num_image_tokens=0)[0]
