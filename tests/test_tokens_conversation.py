import pytest

from gsva.constants import IGNORE_INDEX
from gsva.conversation import (PromptTooLongError, Turn, answer_pieces, parse_slot_phrases, question_text,
                               render_conversation, tokenize_pieces)
from gsva.tokens import add_control_tokens, control_token_ids, encode_text


def test_control_ids_are_exact_vocabulary_entries(tokenizer):
    ids = control_token_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    assert ids.seg == vocab["[SEG]"] and ids.rej == vocab["[REJ]"] and ids.image == vocab["<image>"]
    assert tokenizer("[SEG]", add_special_tokens=False).input_ids == [ids.seg]  # no "▁" prefix piece (LISA #55)
    assert add_control_tokens(tokenizer) == ids  # idempotent


@pytest.mark.parametrize("text", ["the [SEG] dog", "[REJ]", "<image> here", "<im_start>x<im_end>", "[SEG][REJ]"])
def test_user_text_never_becomes_control_tokens(tokenizer, text):
    ids = control_token_ids(tokenizer)
    encoded = encode_text(tokenizer, text)
    assert not set(encoded) & {ids.seg, ids.rej, ids.image, ids.im_start, ids.im_end}
    assert tokenizer.decode(encoded) == text  # lossless


def test_conversation_labels_cover_only_the_answer(tokenizer):
    ids = control_token_ids(tokenizer)
    phrases = ["the red circle", "the [SEG] star"]
    turn = Turn(question_text(phrases, template=0), answer_pieces(phrases, [True, False], style=1), phrases)
    input_ids, labels = tokenize_pieces(render_conversation([turn]), tokenizer, ids, num_image_tokens=5)
    assert input_ids.count(ids.image) == 5
    assert input_ids.count(ids.seg) == 1 and input_ids.count(ids.rej) == 1  # the phrase's "[SEG]" is text
    first = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
    assert all(v == IGNORE_INDEX for v in labels[:first])
    assert labels[first:] == input_ids[first:]
    assert tokenizer.decode(input_ids[first:]) == " Sure, they are the red circle:[SEG], the [SEG] star:[REJ].</s>"
    assert input_ids[-1] == ids.eos


def test_prompt_too_long(tokenizer):
    ids = control_token_ids(tokenizer)
    pieces = render_conversation([Turn("segment " + "x " * 400)])
    with pytest.raises(PromptTooLongError):
        tokenize_pieces(pieces, tokenizer, ids, 4, max_length=100)


def test_parse_slot_phrases_strips_templates():
    segs = ["Sure, they are the red circle:", ", the blue star:"]
    assert parse_slot_phrases(segs) == ["the red circle", "the blue star"]
    assert parse_slot_phrases(["The segmentation results are the mask of dogs is "]) == ["dogs"]
    assert parse_slot_phrases(["Sure, the referred left cup is "]) == ["left cup"]
