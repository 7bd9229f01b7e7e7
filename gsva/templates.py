"""Every prompt and answer template, in one place: what the model is asked and what it is trained to answer.

The answer parser (:func:`gsva.conversation.parse_slot_phrases`) is built from :data:`ANSWER_STARTS` and
:data:`ANSWER_TEMPLATES`, so the two cannot drift apart; ``tests/test_templates.py`` checks that every answer a
template produces parses back to the phrases it names. Placeholders: ``{X}`` the comma-joined target phrases of a
question, ``{n}`` one target phrase of an answer, ``{c}`` a class name, ``{sent}`` a ReasonSeg query; ``[SEG]`` in a
template becomes a mask slot (``[REJ]`` when the target is absent), never text.

Sources (LeapLabTHU/GSVA at 618dc79): ``model/llava/conversation.py`` (system prompt of ``llava_v1``),
``model/llava/constants.py`` (``SHORT_QUESTION_LIST_MODE4``, ``ANSWER_LIST_MODE4_START``/``_TEMPLATE``, the ReasonSeg
and explanatory lists), ``data/dataset.py`` ``ValDataset.__getitem__`` (the validation strings of
:data:`OFFICIAL_REFER_QUESTION`); LISA's ReasonSeg validation questions (dvlab-research/LISA at 3cb2d43,
``utils/dataset.py``, ``ValDataset.__getitem__``). The describe and attribute tasks and the ``chatml`` system
message are ours.
"""

from __future__ import annotations

__all__ = [
    "SYSTEM_PROMPT", "CHATML_SYSTEM_PROMPT", "QUESTION_TEMPLATES", "ANSWER_STARTS", "ANSWER_TEMPLATES", "ANSWER_SEP",
    "SEMSEG_SEP", "REASON_SHORT_QUESTIONS", "REASON_LONG_QUESTIONS", "REASON_ANSWERS", "EXPLANATORY_QUESTIONS",
    "DESCRIBE_QUESTION", "DESCRIBE_NONE", "DESCRIBE_ONE", "DESCRIBE_MANY", "ATTRIBUTE_COLOUR_QUESTION",
    "ATTRIBUTE_SHAPE_QUESTION", "ATTRIBUTE_ONE", "ATTRIBUTE_MANY", "OFFICIAL_REFER_QUESTION",
    "OFFICIAL_REFER_ANSWER_START", "OFFICIAL_REFER_SLOT", "REASONSEG_VAL_QUESTIONS", "answer_template_parts",
]

# -- conversation frame ------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""System prompt of the ``llava_v1`` template (Vicuna configs)."""

CHATML_SYSTEM_PROMPT = "You are a helpful assistant. You segment the objects the user names in the image."
"""System message of the ``chatml`` template (ours; SmolLM2's chat template inserts a default one)."""

# -- GRES (referring and semantic segmentation) --------------------------------------------------------------------
QUESTION_TEMPLATES = (
    "Can you segment {X} in this image?",
    "Please segment {X} in this image.",
    "What are {X} in this image? Please respond with segmentation masks.",
    "What are {X} in this image? Please output segmentation masks.",
)
"""Multi-target questions; ``{X}`` is ``", ".join(phrases).lower()``."""

ANSWER_STARTS = ("The segmentation results are", "Sure, they are", "Sure,", "Sure,", "Sure,")
ANSWER_TEMPLATES = ("{n} [SEG]", "{n}:[SEG]", "the mask of {n} is [SEG]", "the segmentation of {n} is [SEG]",
                    "the referred {n} is [SEG]")
"""Answer style c: ``" " + ANSWER_STARTS[c] + " " + SEP.join(ANSWER_TEMPLATES[c] per target) + "."``, one style for
the whole answer."""

ANSWER_SEP = ", "
"""Separator of targets in referring answers (official ``refer_seg_dataset.py``)."""
SEMSEG_SEP = ","
"""Separator of targets in semantic segmentation answers (official ``sem_seg_dataset.py``: ``",".join``)."""

# -- ReasonSeg and VQA ---------------------------------------------------------------------------------------------
REASON_SHORT_QUESTIONS = ("Can you segment the {c} in this image?", "Please segment the {c} in this image.",
                          "What is {c} in this image? Please respond with segmentation mask.",
                          "What is {c} in this image? Please output segmentation mask.")
REASON_LONG_QUESTIONS = ("{sent} Please respond with segmentation mask.", "{sent} Please output segmentation mask.")
REASON_ANSWERS = ("It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "Sure, the segmentation result is [SEG].",
                  "[SEG].")
EXPLANATORY_QUESTIONS = ("Please output segmentation mask and explain why.",
                         "Please output segmentation mask and explain the reason.",
                         "Please output segmentation mask and give some explaination.")  # sic, official text

# -- describe the scene (ours, :mod:`gsva.data.describe`) ---------------------------------------------------------
DESCRIBE_QUESTION = "Describe the objects in this image from left to right."
DESCRIBE_NONE = " There are no objects."
DESCRIBE_ONE = " There is 1 object: {items}."
DESCRIBE_MANY = " There are {k} objects: {items}."
"""Describe answers; ``{items}``: "a small red circle, a large blue star" (left to right)."""
ATTRIBUTE_COLOUR_QUESTION = "What colour is the {phrase}?"
ATTRIBUTE_SHAPE_QUESTION = "What shape is the {phrase}?"
ATTRIBUTE_ONE = " The {phrase} is {value}."
ATTRIBUTE_MANY = " There are {k} {plural}: {items} and {last}."
"""Attribute answers in words (no slot); ``{value}``: "red" or "a star"."""

# -- evaluation (:mod:`gsva.evaluation.prompts`) -------------------------------------------------------------------
OFFICIAL_REFER_QUESTION = " What are {X}in this image? Please output segmentation masks."
"""GSVA's validation question, quirks kept: a leading space and no space before "in"."""
OFFICIAL_REFER_ANSWER_START = " Sure,"
OFFICIAL_REFER_SLOT = "{n}:[SEG]"
"""GSVA's validation answer: ``" Sure," + ", ".join(slot per expression) + "."`` (no space after "Sure,")."""
REASONSEG_VAL_QUESTIONS = ("{sent} Please output segmentation mask.",
                           "What is {sent} in this image? Please output segmentation mask.")
"""LISA's ReasonSeg validation questions: a full-sentence query, then a short one (GSVA adds a leading space)."""


def answer_template_parts(style: int) -> tuple[str, str]:
    """The text before and after the phrase in ``ANSWER_TEMPLATES[style]``, the slot removed:
    ``"the mask of {n} is [SEG]"`` -> ``("the mask of ", " is ")``."""
    prefix, suffix = ANSWER_TEMPLATES[style].split("{n}")
    return prefix, suffix.replace("[SEG]", "")
