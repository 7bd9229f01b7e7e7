"""End to end as a user with released weights runs it: a GSVA release in the official key layout with a real (tiny)
LLaMA sentencepiece tokenizer, converted by ``gsva convert gsva``, evaluated teacher-forced on gRefCOCO with
``--prompt-style official --prompt-mode per-image``. The reference takes the official prompt string of each image,
tokenizes it the official way (tests/legacy_llama.py) and runs the official semantics on the release tensors
(tests/test_convert_gsva.py ``_reference``): same token ids, slot logits within 1e-4, equal masks."""

import dataclasses

import numpy as np
import pytest
import torch

from gsva.cli import main as gsva_main
from gsva.conversation import SYSTEM_PROMPT, Turn, render_conversation, tokenize_pieces
from gsva.checkpoint import load_model
from gsva.convert.llava import convert_llava_v1
from gsva.data.collate import collate, encode_sample
from gsva.data.masks import decode_segmentation
from gsva.evaluation import open_benchmark, run_benchmark
from gsva.evaluation.prompts import clean_expression, refer_answer, refer_question
from gsva.images import load_image
from gsva.inference import GSVAPredictor
from gsva.modeling.sam import build_sam

from .legacy_llama import IMAGE_TOKEN_INDEX, OfficialTokenization, build_llama_sentencepiece, write_llama_tokenizer_folder
from .official_layouts import official_release_state, write_llava_v1
from .test_convert_gsva import RANK, SAM, _config, _reference

IMAGES = 2


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("official-e2e")
    sp_model = build_llama_sentencepiece()
    llama_tok = AutoTokenizer.from_pretrained(str(write_llama_tokenizer_folder(root / "tok", sp_model)))
    cfg = _config()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tokenization="legacy_sentencepiece"))
    parts = write_llava_v1(root, llama_tok, cfg)
    for f in parts["src"].glob("tokenizer*"):  # the folder as released: tokenizer.model + a config without legacy
        f.unlink()
    write_llama_tokenizer_folder(parts["src"], sp_model)
    assert gsva_main(["convert", "llava", "--src", str(parts["src"]), "--vision-tower", str(parts["clip_dir"]),
                      "--out", str(root / "base")]) == 0
    torch.save(build_sam(SAM).state_dict(), root / "sam.pth")
    vocab = len(llama_tok) + 4  # [SEG], [REJ], <im_start>, <im_end>
    state = official_release_state(cfg, SAM, vocab, RANK)
    torch.save(state, root / "release.bin")
    cfg.save(root / "config.json")
    assert gsva_main(["convert", "gsva", "--weights", str(root / "release.bin"), "--llava", str(root / "base"),
                      "--sam", str(root / "sam.pth"), "--config", str(root / "config.json"),
                      "--out", str(root / "ckpt")]) == 0
    return {"root": root, "sp": sp_model, "cfg": cfg, "vocab": vocab,
            "state": {k[len("base_model.model."):]: v for k, v in state.items()}}


def _official_prompt(exprs: list[str], present: list[bool]) -> str:
    """GSVA ``ValDataset`` (data/dataset.py): user and assistant strings of one image, llava_v1."""
    user = "<im_start><image><im_end>\n What are " + ", ".join(exprs) + "in this image? Please output segmentation masks."
    answer = "Sure," + ", ".join(f"{e}:[SEG]" if p else f"{e}:[REJ]" for e, p in zip(exprs, present)) + "."
    return f"{SYSTEM_PROMPT} USER: {user} ASSISTANT: {answer}</s>"


def test_converted_release_gives_the_official_ids_logits_and_masks(official, synth_root, monkeypatch):
    ckpt = official["root"] / "ckpt"
    assert (ckpt / "tokenizer.model").read_bytes() == official["sp"]
    model, tokenizer = load_model(ckpt)
    predictor = GSVAPredictor(model, tokenizer)
    ids = predictor.ids
    slot_logits = []
    lm_logits = model.lm_logits

    def recording(hidden):
        out = lm_logits(hidden)
        if hidden.dim() == 2:  # teacher_forced_outcomes' slot logits (S, V)
            slot_logits.append(out.detach().clone())
        return out

    monkeypatch.setattr(model, "lm_logits", recording)
    bench = open_benchmark("grefcoco", synth_root, "val")
    rows = run_benchmark(bench, predictor, protocol="teacher-forced", prompt_mode="per-image",
                         prompt_style="official", limit=IMAGES)
    assert len(slot_logits) == IMAGES
    reference = OfficialTokenization(official["sp"])
    start = 0
    for image, logits in zip(bench.images[:IMAGES], slot_logits):
        exprs = [clean_expression(e.sentence) for e in image.expressions]
        present = [not e.gt_empty for e in image.expressions]
        official_ids = reference.input_ids(_official_prompt(exprs, present))
        pieces = render_conversation([Turn(refer_question(exprs, "official"), refer_answer(exprs, present, "official"))])
        ours, _ = tokenize_pieces(pieces, tokenizer, ids, num_image_tokens=1)
        assert [IMAGE_TOKEN_INDEX if i == ids.image else i for i in ours] == official_ids
        # the reference model on the official ids, <image> spliced as the Np projected CLIP features
        array = load_image(image.path)
        sample = encode_sample(array, pieces, None, tokenizer, ids, model.config)
        batch = collate([sample], ids.pad)
        expanded = []
        for i in official_ids:
            expanded += [official["vocab"]] * model.config.num_image_tokens if i == IMAGE_TOKEN_INDEX else [i]
        ref_logits, ref_masks = _reference(
            {**official, "base_sam": _base_sam(official)}, torch.tensor([expanded]), batch.clip_pixels,
            batch.sam_pixels, batch.resized_hw[0], batch.original_hw[0], ids.seg, ids.rej)
        torch.testing.assert_close(logits[:, : official["vocab"]], ref_logits, atol=1e-4, rtol=1e-4)
        image_rows = rows[start:start + len(exprs)]
        start += len(exprs)
        p = torch.softmax(ref_logits.double(), -1)
        ref_score = (p[:, ids.seg] / (p[:, ids.seg] + p[:, ids.rej])).tolist()
        for row, score, mask in zip(image_rows, ref_score, ref_masks):
            assert row["score"] == pytest.approx(score, abs=1e-4)
            h, w = row["pred_mask"]["size"]
            ours_mask = decode_segmentation(row["pred_mask"], h, w).astype(bool)
            assert np.array_equal(ours_mask, (mask > 0).numpy())
    assert start == len(rows)
    assert any(r["pred_mask"]["counts"] != rows[0]["pred_mask"]["counts"] for r in rows)  # masks differ per slot


def _base_sam(official):
    """The SAM of the release (image encoder included): the reference loads the image encoder from this module."""
    sam = build_sam(SAM)
    prefix = "model.visual_model."
    sam.load_state_dict({k[len(prefix):]: v for k, v in official["state"].items() if k.startswith(prefix)},
                        strict=True)
    return sam
