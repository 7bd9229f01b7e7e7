"""Every template of gsva.templates round-trips: the answers it produces parse back to the phrases they name
(gsva.conversation.parse_slot_phrases), the questions back to their phrases (question_phrases), and the slot count is
the number of targets."""

import pytest

from gsva import templates as T
from gsva.constants import REJ_TOKEN, SEG_TOKEN
from gsva.conversation import (answer_pieces, parse_slot_phrases, question_phrases, question_text,
                               text_answer_pieces)
from gsva.evaluation.prompts import reasonseg_answer, reasonseg_question, refer_answer, refer_question

PHRASES = [["the red heart"], ["large orange hexagon", "the dog on the left"],
           ["the one that is red", "man", "the cup behind the mask of paint"]]


def _segments(pieces) -> tuple[list[str], list[str]]:
    """(text before each slot, the slot tokens) of rendered answer pieces, as the predictor decodes them."""
    segments, slots, current = [], [], ""
    for piece in pieces:
        if piece.control in (SEG_TOKEN, REJ_TOKEN):
            segments.append(current)
            slots.append(piece.control)
            current = ""
        elif piece.control is None:
            current += piece.text
    return segments, slots


@pytest.mark.parametrize("style", range(len(T.ANSWER_TEMPLATES)))
@pytest.mark.parametrize("sep", [T.ANSWER_SEP, T.SEMSEG_SEP])
@pytest.mark.parametrize("phrases", PHRASES)
def test_every_gres_answer_style_parses_back_to_its_phrases(style, sep, phrases):
    present = [i % 2 == 0 for i in range(len(phrases))]
    segments, slots = _segments(answer_pieces(phrases, present, style, sep=sep))
    assert slots == [SEG_TOKEN if p else REJ_TOKEN for p in present]
    assert parse_slot_phrases(segments) == phrases


@pytest.mark.parametrize("phrases", PHRASES)
def test_official_validation_answer_parses_back_and_its_question_names_the_phrases(phrases):
    segments, slots = _segments(refer_answer(phrases, [True] * len(phrases), style="official"))
    assert len(slots) == len(phrases) and parse_slot_phrases(segments) == phrases
    question = refer_question(phrases, style="official")
    assert question == T.OFFICIAL_REFER_QUESTION.format(X=", ".join(phrases)) and question.startswith(" What are ")
    ours = refer_answer(phrases, [False] * len(phrases), style="ours")
    assert parse_slot_phrases(_segments(ours)[0]) == phrases


@pytest.mark.parametrize("template", range(len(T.QUESTION_TEMPLATES)))
@pytest.mark.parametrize("phrases", PHRASES)
def test_every_question_template_names_its_phrases(template, phrases):
    question = question_text(phrases, template=template)
    assert question == T.QUESTION_TEMPLATES[template].format(X=", ".join(phrases).lower())
    assert question_phrases(question) == phrases


@pytest.mark.parametrize("answer", T.REASON_ANSWERS)
def test_reasonseg_answers_have_one_slot(answer):
    segments, slots = _segments(text_answer_pieces(answer))
    assert slots == [SEG_TOKEN] and len(segments) == 1


def test_reasonseg_validation_strings():
    assert reasonseg_question("the dog", True) == T.REASONSEG_VAL_QUESTIONS[0].format(sent="the dog")
    assert reasonseg_question("the dog", False, style="official") == " " + T.REASONSEG_VAL_QUESTIONS[1].format(
        sent="the dog")
    for style in ("ours", "official"):
        assert _segments(reasonseg_answer(style))[1] == [SEG_TOKEN]


def test_question_templates_hold_no_control_token_and_one_placeholder():
    for group, key in ((T.QUESTION_TEMPLATES, "{X}"), (T.REASON_SHORT_QUESTIONS, "{c}"),
                       (T.REASON_LONG_QUESTIONS, "{sent}"), (T.REASONSEG_VAL_QUESTIONS, "{sent}")):
        for t in group:
            assert t.count(key) == 1 and SEG_TOKEN not in t and REJ_TOKEN not in t, t
    for t in (T.DESCRIBE_QUESTION, T.DESCRIBE_NONE, T.DESCRIBE_ONE, T.DESCRIBE_MANY, *T.EXPLANATORY_QUESTIONS,
              T.ATTRIBUTE_COLOUR_QUESTION, T.ATTRIBUTE_SHAPE_QUESTION, T.ATTRIBUTE_ONE, T.ATTRIBUTE_MANY,
              T.SYSTEM_PROMPT, T.CHATML_SYSTEM_PROMPT):
        assert SEG_TOKEN not in t and REJ_TOKEN not in t, t
    assert all(t.count("{n}") == 1 and t.endswith(SEG_TOKEN) for t in T.ANSWER_TEMPLATES)
    assert len(T.ANSWER_STARTS) == len(T.ANSWER_TEMPLATES)
