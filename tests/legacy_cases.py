"""Prompts of every kind our training, evaluation and chat send, each as the official prompt string and as our
conversation pieces (shared by the legacy-tokenization tests and ``tests/tools/official_tokenization_oracle.py``)."""

from __future__ import annotations

from gsva.conversation import (ANSWER_STARTS, ANSWER_TEMPLATES, SYSTEM_PROMPT, Piece, Turn, answer_pieces,
                               question_text, render_conversation, text_answer_pieces)
from gsva.evaluation.prompts import reasonseg_answer, reasonseg_question, refer_answer, refer_question

IM = "<im_start><image><im_end>"


def _answer(text: str, slot: str = "[SEG]") -> list[Piece]:
    head, tail = text.split(slot)
    return [Piece(head, train=True), Piece(control=slot, train=True), Piece(tail, train=True),
            Piece(control="<eos>", train=True)]


def prompt_cases() -> list[tuple[str, str, list[Piece]]]:
    """(name, official prompt string, our pieces); the string is written by hand from the official templates."""
    s = SYSTEM_PROMPT
    cases = []
    ex = ["the left dog", "the red cup", "the zebra"]
    cases.append(("official gRefCOCO val (multi-target, rejection)",
                  f"{s} USER: {IM}\n What are {', '.join(ex)}in this image? Please output segmentation masks. "
                  "ASSISTANT: Sure,the left dog:[SEG], the red cup:[SEG], the zebra:[REJ].</s>",
                  render_conversation([Turn(refer_question(ex, "official"),
                                            refer_answer(ex, [True, True, False], "official"))])))
    cases.append(("official ReasonSeg val",
                  f"{s} USER: {IM}\n What is the thing people sit on in this image? Please output segmentation "
                  "mask. ASSISTANT: [SEG]</s>",
                  render_conversation([Turn(reasonseg_question("the thing people sit on", False, "official"),
                                            reasonseg_answer("official"))])))
    names, present = ["man in red", "the dog on left"], [True, False]
    for style in range(len(ANSWER_STARTS)):
        body = ", ".join(ANSWER_TEMPLATES[style].format(n=n).replace("[SEG]", "[SEG]" if p else "[REJ]")
                         for n, p in zip(names, present))
        q = question_text(names, template=style % 4)
        cases.append((f"training answer style {style}", f"{s} USER: {IM}\n{q} ASSISTANT: {ANSWER_STARTS[style]} {body}.</s>",
                      render_conversation([Turn(q, answer_pieces(names, present, style))])))
    q1, q2 = question_text(["the dog"], template=2), question_text(["the cat", "a cup"], template=1)
    cases.append(("multi-turn",
                  f"{s} USER: {IM}\n{q1} ASSISTANT: Sure, they are the dog:[SEG].</s>USER: {q2} ASSISTANT: The "
                  "segmentation results are the cat [REJ], a cup [SEG].</s>",
                  render_conversation([Turn(q1, answer_pieces(["the dog"], [True], 1)),
                                       Turn(q2, answer_pieces(["the cat", "a cup"], [False, True], 0))])))
    q = question_text(["the red cup"], template=0)
    cases.append(("generation prompt", f"{s} USER: {IM}\n{q} ASSISTANT:", render_conversation([Turn(q)])))
    cases.append(("second-turn generation prompt",
                  f"{s} USER: {IM}\n{q} ASSISTANT: Sure, the red cup:[SEG].</s>USER: What is 12 + 3? ASSISTANT:",
                  render_conversation([Turn(q, _answer(" Sure, the red cup:[SEG].")), Turn("What is 12 + 3?")])))
    cases.append(("without <im_start>/<im_end>", f"{s} USER: <image>\n{q} ASSISTANT: Sure, the red cup:[SEG].</s>",
                  render_conversation([Turn(q, _answer(" Sure, the red cup:[SEG]."))], use_im_start_end=False)))
    why = "Why? Please output segmentation mask and explain why."
    cases.append(("ReasonSeg answer with explanation",
                  f"{s} USER: {IM}\n{why} ASSISTANT: Sure, [SEG]. Because  it   is red.</s>",
                  render_conversation([Turn(why, text_answer_pieces("Sure, [SEG].", "Because  it   is red."))])))
    return cases
