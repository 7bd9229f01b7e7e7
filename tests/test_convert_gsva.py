"""gsva convert gsva: a release file in the official layout -> our checkpoint, and equivalence with the official
semantics (LeapLabTHU/GSVA at 618dc79, ``model/modeling_lisa_gsva.py``, ``LisaGSVAForCausalLM.model_forward``): slot
decisions from the argmax one position earlier, masks from the hidden state before each [SEG] through text_hidden_fcs
into SAM (raw sparse token, no-mask dense prompt, multimask off), upsampled to the SAM input size, cropped and resized.
The reference below is written from those facts with transformers' LLaMA/CLIP and segment-anything's Sam directly, not
with our model code."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsva.checkpoint import CheckpointError, load_model
from gsva.cli import main as gsva_main
from gsva.config import SamConfig
from gsva.conversation import Turn, render_conversation
from gsva.convert.gsva_release import convert_gsva_release
from gsva.convert.llava import convert_llava_v1
from gsva.data.collate import collate, encode_sample
from gsva.evaluation.prompts import refer_answer, refer_question
from gsva.evaluation.protocols import teacher_forced_outcomes
from gsva.inference import GSVAPredictor
from gsva.modeling.sam import build_sam
from gsva.tokenizer_build import train_tokenizer

from .conftest import micro_config
from .official_layouts import official_release_state, write_llava_v1

RANK = 4
SAM = SamConfig(img_size=64, patch_size=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                encoder_global_attn_indexes=[1], encoder_window_size=2, prompt_embed_dim=32, decoder_depth=2,
                decoder_mlp_dim=64, decoder_num_heads=8, iou_head_hidden_dim=32, mask_in_chans=4)


def _config():
    cfg = micro_config(lora_rank=RANK, from_scratch=False)
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, feature_layer=-2, projector_type="linear",
                                                               preprocess="center_crop"), sam=SAM)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """LLaVA-v1 base (converted), SAM file, release .bin (SAM image encoder left out, as a frozen part) and the
    converted checkpoint."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("release")
    words = ["Can you segment the red circle, the blue star in this image?", "Sure, the mask of it is.",
             "A chat between a curious human and an artificial intelligence assistant.", "USER: ASSISTANT:"]
    llava_tok = train_tokenizer(words * 20, vocab_size=300, control_tokens=False)
    cfg = _config()
    parts = write_llava_v1(root, llava_tok, cfg)
    convert_llava_v1(parts["src"], parts["clip_dir"], root / "base")
    base_sam = build_sam(SAM)
    torch.save(base_sam.state_dict(), root / "sam.pth")
    official_vocab = len(llava_tok) + 4  # [SEG], [REJ], <im_start>, <im_end> added by the official code
    state = official_release_state(cfg, SAM, official_vocab, RANK, omit_prefixes=("model.visual_model.image_encoder.",))
    torch.save(state, root / "gsva-micro-ft.bin")
    report = convert_gsva_release(root / "gsva-micro-ft.bin", root / "base", root / "sam.pth", root / "ckpt", cfg)
    return {"root": root, "state": {k[len("base_model.model."):]: v for k, v in state.items()}, "report": report,
            "base_sam": base_sam, "vocab": official_vocab, "cfg": cfg}


def _reference(release, input_ids, clip_pixels, sam_pixels, resized_hw, original_hw, seg_id, rej_id):
    """Official semantics from the release tensors: (slot logits (S, V), mask logits (S, H, W))."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from .official_layouts import clip_vision_config

    st, cfg = release["state"], release["cfg"]
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=cfg.text.hidden_size, intermediate_size=cfg.text.intermediate_size,
                                         num_hidden_layers=cfg.text.num_hidden_layers,
                                         num_attention_heads=cfg.text.num_attention_heads,
                                         vocab_size=release["vocab"], max_position_embeddings=512,
                                         rms_norm_eps=1e-6)).eval()
    merged = {}
    for k in llama.state_dict():
        w = st[k]
        stem = k[: -len(".weight")]
        if f"{stem}.lora_A.default.weight" in st:  # peft: W + (alpha / r) B A, alpha 16
            w = w + (16 / RANK) * st[f"{stem}.lora_B.default.weight"] @ st[f"{stem}.lora_A.default.weight"]
        merged[k] = w
    llama.load_state_dict(merged, strict=True)
    clip = CLIPVisionModel(CLIPVisionConfig(**clip_vision_config(cfg))).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."
    clip.load_state_dict({k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)}, strict=True)
    sam = build_sam(SAM).eval()  # segment-anything's modules; weights: release, image encoder from the base file
    sam_state = {k[len("model.visual_model."):]: v for k, v in st.items() if k.startswith("model.visual_model.")}
    sam_state.update({k: v for k, v in release["base_sam"].state_dict().items() if k.startswith("image_encoder.")})
    sam.load_state_dict(sam_state, strict=True)
    image_token = (input_ids >= release["vocab"])  # our <image> placeholder: the id after the official vocab
    with torch.no_grad():
        feats = clip(pixel_values=clip_pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = feats @ st["model.mm_projector.weight"].T + st["model.mm_projector.bias"]

        def run(ids):
            emb = llama.model.embed_tokens(ids.clamp(max=release["vocab"] - 1))
            emb[image_token] = feats.reshape(-1, feats.shape[-1])
            out = llama(inputs_embeds=emb, output_hidden_states=True)
            return out.logits[0], out.hidden_states[-1][0]

        logits, _ = run(input_ids)
        slot_pos = ((input_ids[0] == seg_id) | (input_ids[0] == rej_id)).nonzero()[:, 0]
        reeval = input_ids.masked_fill(input_ids == rej_id, seg_id)
        _, hidden = run(reeval)
        h = hidden[slot_pos - 1]
        h = F.relu(h @ st["model.text_hidden_fcs.0.0.weight"].T + st["model.text_hidden_fcs.0.0.bias"])
        emb = h @ st["model.text_hidden_fcs.0.2.weight"].T + st["model.text_hidden_fcs.0.2.bias"]
        image_embeddings = sam.image_encoder(sam_pixels)
        masks = []
        for e in emb:
            sparse = e[None, None, :]
            dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                1, -1, *image_embeddings.shape[-2:])
            low, _ = sam.mask_decoder(image_embeddings=image_embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
            up = F.interpolate(low.float(), (SAM.img_size, SAM.img_size), mode="bilinear", align_corners=False)
            up = up[..., : resized_hw[0], : resized_hw[1]]
            masks.append(F.interpolate(up, original_hw, mode="bilinear", align_corners=False)[0, 0])
    return logits[slot_pos - 1], torch.stack(masks)


def test_release_converts_with_a_complete_report(release):
    report = release["report"]
    assert report["lora_rank"] == RANK
    assert all(k.startswith("sam.image_encoder.") for k in report["from_base"]) and report["from_base"]
    assert report["release_vocab_rows"]["mllm.lm_head.weight"] == release["vocab"]
    ids = report["token_ids"]  # the official id order: [SEG], [REJ], <im_start>, <im_end>, then our <image>
    v = release["vocab"] - 4
    assert (ids["seg"], ids["rej"], ids["im_start"], ids["im_end"], ids["image"]) == (v, v + 1, v + 2, v + 3, v + 4)
    assert json.loads((release["root"] / "ckpt" / "conversion.json").read_text())["lora_rank"] == RANK


def test_converted_release_matches_the_official_semantics(release):
    model, tokenizer = load_model(release["root"] / "ckpt")
    predictor = GSVAPredictor(model, tokenizer)
    ids = predictor.ids
    image = np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    exprs, present = ["the red circle", "the blue star", "it"], [True, False, True]
    question, answer = refer_question(exprs), refer_answer(exprs, present)
    sample = encode_sample(image, render_conversation([Turn(question, answer)]), None, tokenizer, ids, model.config)
    batch = collate([sample], ids.pad)
    ref_logits, ref_masks = _reference(release, batch.input_ids, batch.clip_pixels, batch.sam_pixels,
                                       batch.resized_hw[0], batch.original_hw[0], ids.seg, ids.rej)
    outcomes = teacher_forced_outcomes(predictor, [(image, question, answer, present)])[0]
    for out, here, lg in zip(outcomes, present, ref_logits):
        top = int(lg.argmax())
        assert out.pred_reject == ((top != ids.seg) if here else (top == ids.rej))
    reeval = batch.input_ids.masked_fill(batch.input_ids == ids.rej, ids.seg)
    with torch.no_grad():
        ours = model(dataclasses.replace(batch, input_ids=reeval, labels=None))
        hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, model.image_features(batch.clip_pixels)))
        our_logits = model.lm_logits(hidden[0, ours.slots.predict_position])
    torch.testing.assert_close(our_logits[:, : release["vocab"]], ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.mask_logits[0], ref_masks, atol=1e-6, rtol=1e-4)  # logits of size ~1e-2 here
    # not constant, and different per slot by far more than the tolerance (a wrong slot embedding would show)
    assert ref_masks.std() > 1e-3 and (ref_masks[0] - ref_masks[1]).abs().max() > 1e-4


def test_release_errors(release, tmp_path, capsys):
    root, cfg = release["root"], release["cfg"]
    state = {f"base_model.model.{k}": v for k, v in release["state"].items()}
    state["base_model.model.model.vision_resampler.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(CheckpointError, match="no place in the model: \\['model.vision_resampler.weight'\\]"):
        convert_gsva_release(tmp_path / "extra.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)
    no_proj = {k: v for k, v in state.items() if "mm_projector" not in k}
    torch.save(no_proj, tmp_path / "noproj.bin")
    with pytest.raises(CheckpointError, match="no model.mm_projector: the official code re-initialises"):
        convert_gsva_release(tmp_path / "noproj.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)
    (tmp_path / "bad.bin").write_bytes(b"garbage")
    assert gsva_main(["convert", "gsva", "--weights", str(tmp_path / "bad.bin"), "--llava", str(root / "base"),
                      "--sam", str(root / "sam.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_release_with_wrong_vocabulary_or_lora_shapes(release, tmp_path):
    root, cfg = release["root"], release["cfg"]
    state = {f"base_model.model.{k}": v for k, v in release["state"].items()}
    bigger = dict(state)
    for key in ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"):
        bigger[key] = torch.cat([state[key], torch.zeros(7, state[key].shape[1])])  # a different LLaVA's vocabulary
    torch.save(bigger, tmp_path / "vocab.bin")
    with pytest.raises(CheckpointError, match="embed_tokens.weight has .* rows .* wrong LLaVA tokenizer"):
        convert_gsva_release(tmp_path / "vocab.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)
    wider = dict(state)
    for key in ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"):
        wider[key] = torch.zeros(state[key].shape[0], state[key].shape[1] * 2)  # weights of a wider model
    torch.save(wider, tmp_path / "width.bin")
    with pytest.raises(CheckpointError, match="embed_tokens.weight has width .* another model size"):
        convert_gsva_release(tmp_path / "width.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)
    mixed = dict(state)
    key = next(k for k in state if k.endswith("q_proj.lora_A.default.weight"))
    mixed[key] = torch.zeros(RANK * 2, state[key].shape[1])  # one adapter of another rank
    torch.save(mixed, tmp_path / "rank.bin")
    with pytest.raises(CheckpointError, match="LoRA layers of different ranks"):
        convert_gsva_release(tmp_path / "rank.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)
    b_key = key.replace("lora_A", "lora_B")
    wrong_b = dict(state)
    wrong_b[b_key] = torch.zeros(state[b_key].shape[0], RANK + 1)  # B does not match A's rank
    torch.save(wrong_b, tmp_path / "b.bin")
    with pytest.raises(CheckpointError, match="wrong shape .*lora_B"):
        convert_gsva_release(tmp_path / "b.bin", root / "base", root / "sam.pth", tmp_path / "o", cfg)


def test_one_command_from_official_files_to_gsva_predict(release, tmp_path, capsys):
    """LLaVA-v1 folder + CLIP folder + SAM .pth + release .bin -> one command -> a checkpoint gsva predict loads."""
    from PIL import Image

    root = release["root"]
    args = ["convert", "gsva", "--weights", str(root / "gsva-micro-ft.bin"), "--llava", str(root / "llava-v1"),
            "--sam", str(root / "sam.pth"), "--out", str(tmp_path / "ckpt")]
    assert gsva_main(args) == 2 and "--vision-tower" in capsys.readouterr().err  # v1 folder without its CLIP
    release["cfg"].save(tmp_path / "micro.json")  # the paper configs are 7B/13B: this stand-in is micro-sized
    assert gsva_main(args + ["--vision-tower", str(root / "clip"), "--config", str(tmp_path / "micro.json")]) == 0
    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(tmp_path / "img.png")
    assert gsva_main(["predict", "--model", str(tmp_path / "ckpt"), "--image", str(tmp_path / "img.png"),
                      "--query", "the red circle", "--out", str(tmp_path / "pred")]) == 0
    assert json.loads((tmp_path / "pred" / "result.json").read_text())["answer"] is not None
