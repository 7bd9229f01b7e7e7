"""Our prompt ids equal the official GSVA pipeline's on a LLaMA sentencepiece tokenizer (gsva.legacy_tokenization):
against the official steps written out (tests/legacy_llama.py) and against transformers 4.44.2 itself
(tests/data/official_tokenization_4.44.2.json, made by tests/tools/official_tokenization_oracle.py)."""

import hashlib
import json
from pathlib import Path

import pytest

from gsva.conversation import Piece, Turn, render_conversation, tokenize_pieces
from gsva.legacy_tokenization import LegacyTokenizerError, attach_legacy_sentencepiece, legacy_sentencepiece_of
from gsva.tokens import add_control_tokens, encode_text

from .legacy_cases import prompt_cases
from .legacy_llama import IMAGE_TOKEN_INDEX, OfficialTokenization, build_llama_sentencepiece, write_llama_tokenizer_folder

ORACLE = Path(__file__).parent / "data" / "official_tokenization_4.44.2.json"


@pytest.fixture(scope="module")
def sp_model() -> bytes:
    return build_llama_sentencepiece()


@pytest.fixture(scope="module")
def llama(sp_model, tmp_path_factory):
    """(HF tokenizer with our control tokens and the legacy encoder attached, control ids, folder)."""
    from transformers import AutoTokenizer

    folder = write_llama_tokenizer_folder(tmp_path_factory.mktemp("llama-tok"), sp_model)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = add_control_tokens(tok)
    attach_legacy_sentencepiece(tok, folder / "tokenizer.model")
    return tok, ids, folder


def _ours(pieces, tok, ids):
    input_ids, labels = tokenize_pieces(pieces, tok, ids, num_image_tokens=1)
    return [IMAGE_TOKEN_INDEX if i == ids.image else i for i in input_ids], labels


def _same_added_ids(ids, official_added):
    assert (ids.seg, ids.rej, ids.im_start, ids.im_end) == tuple(
        official_added[t] for t in ("[SEG]", "[REJ]", "<im_start>", "<im_end>"))


def test_ids_and_labels_equal_the_official_steps(llama, sp_model):
    tok, ids, _ = llama
    official = OfficialTokenization(sp_model)
    _same_added_ids(ids, official.added)
    for name, prompt, pieces in prompt_cases():
        got, labels = _ours(pieces, tok, ids)
        assert got == official.input_ids(prompt), name
        if prompt.endswith("</s>"):
            assert [IMAGE_TOKEN_INDEX if t == ids.image else t for t in labels] == official.labels(prompt), name


def test_ids_and_labels_equal_transformers_4_44_2(llama, sp_model):
    """The fixture was made by transformers 4.44.2's slow LlamaTokenizer on this very model."""
    tok, ids, _ = llama
    data = json.loads(ORACLE.read_text())
    assert hashlib.sha256(sp_model).hexdigest() == data["sentencepiece_sha256"], (
        "the sentencepiece model built here differs from the fixture's (another sentencepiece version?): "
        "regenerate tests/data/official_tokenization_4.44.2.json with tests/tools/official_tokenization_oracle.py")
    _same_added_ids(ids, data["added_ids"])
    cases = prompt_cases()
    assert [c[1] for c in cases] == [p["prompt"] for p in data["prompts"]]
    for (name, _, pieces), ref in zip(cases, data["prompts"]):
        got, labels = _ours(pieces, tok, ids)
        assert got == ref["ids"], name
        if ref["labels"] is not None:
            assert [IMAGE_TOKEN_INDEX if t == ids.image else t for t in labels] == ref["labels"], name


def test_the_quirks_that_make_it_differ_from_per_piece_encoding(llama):
    """The first piece starts with ``▁A``; text after a control token starts with its own ``▁`` piece."""
    tok, ids, _ = llama
    got, _ = _ours(render_conversation([Turn("Can you segment the dog in this image?",
                                             [Piece(" Sure, the dog:", train=True), Piece(control="[SEG]", train=True),
                                              Piece(", ok.", train=True), Piece(control="<eos>", train=True)])]),
                   tok, ids)
    pieces = tok.convert_ids_to_tokens([i for i in got if i >= 0])
    assert pieces[1] == "▁A"
    seg = pieces.index("[SEG]")
    assert pieces[seg + 1:seg + 3] == ["▁", ","]
    end = pieces.index("<im_end>")
    assert pieces[end + 1:end + 3] == ["▁", "<0x0A>"]


def test_user_text_spelling_control_tokens_stays_text(llama):
    tok, ids, _ = llama
    text = "[SEG] </s> <im_start> <image> [REJ]"
    enc = encode_text(tok, text)
    assert not {ids.seg, ids.rej, ids.im_start, ids.image, ids.eos} & set(enc)
    assert tok.decode(enc).strip() == text


def test_bad_sentencepiece_files_are_clear_errors(llama, tmp_path):
    from transformers import AutoTokenizer

    tok, _, folder = llama
    with pytest.raises(LegacyTokenizerError, match="does not exist"):
        attach_legacy_sentencepiece(tok, tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(LegacyTokenizerError, match="not a sentencepiece model"):
        attach_legacy_sentencepiece(tok, tmp_path / "junk.model")
    other = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1] / "gsva" / "assets" / "gsva-tiny"))
    with pytest.raises(LegacyTokenizerError, match="does not match the tokenizer"):
        attach_legacy_sentencepiece(other, folder / "tokenizer.model")
    assert legacy_sentencepiece_of(other) is None
