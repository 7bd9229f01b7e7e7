"""Readers and conversations of the pre-training mixture, on fixtures written in each dataset's real layout."""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsva.data.refer import AnnotationError, open_custom_dataset
from gsva.data.semseg import PartName, literal_classes, open_semseg
from gsva.data.training_mix import PAPER_DATASETS, conversation_datasets, open_sources, source_texts, validate_spec
from gsva.data.vqa import LlavaInstruct

from .conftest import micro_config


def _jpg(path: Path, h: int = 6, w: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _png(path: Path, label: np.ndarray, mode: str = "L", palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode=mode)
    if palette:
        im.putpalette(palette)
    im.save(path)


# -- semantic segmentation readers --------------------------------------------------------------------------------
def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    label = np.zeros((6, 8), np.uint8)
    label[:2] = 1       # class 0 "wall"
    label[2:4, :4] = 13  # class 12 "person"
    _jpg(tmp_path / "ade20k/images/training/ADE_train_00000001.jpg")
    _png(tmp_path / "ade20k/annotations/training/ADE_train_00000001.png", label)
    rec = open_semseg("ade20k", tmp_path)[0]
    assert rec.names == ["wall", "person"]
    np.testing.assert_array_equal(rec.mask(1), (label == 13).astype(np.uint8))
    assert len(literal_classes("ade20k_classes")) == 150


def test_cocostuff_ignores_unlabeled_and_dash_classes(tmp_path):
    classes = literal_classes("cocostuff_classes")
    label = np.full((6, 8), 255, np.uint8)
    label[0] = classes.index("person")
    label[1] = classes.index("wall-other")   # a "-" class: ignored by the official loader
    label[2] = classes.index("sky")
    _jpg(tmp_path / "coco/train2017/000000000009.jpg")
    _png(tmp_path / "cocostuff/train2017/000000000009.png", label)
    ds = open_semseg("cocostuff", tmp_path)
    assert ds.pairs[0][0] == tmp_path / "coco/train2017/000000000009.jpg"
    assert ds[0].names == ["person", "sky"] and len(classes) == 182 and classes[0] == "person"


def test_mapillary_reads_palette_labels_and_config_names(tmp_path):
    root = tmp_path / "mapillary"
    labels = [{"readable": "Car", "name": "object--vehicle--car"}, {"readable": "Road", "name": "construction--road"},
              {"readable": "Unlabeled", "name": "void--unlabeled"}]
    root.mkdir()
    (root / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    label = np.array([[0, 1, 2, 2]] * 3, np.uint8)
    _jpg(root / "training/images/abc.jpg", 3, 4)
    _png(root / "training/v2.0/labels/abc.png", label, mode="P", palette=[9, 9, 9, 50, 50, 50, 0, 0, 0])
    rec = open_semseg("mapillary", tmp_path)[0]
    assert rec.names == ["car", "road"]  # "unlabeled" is never asked for
    np.testing.assert_array_equal(rec.mask(0), (label == 0).astype(np.uint8))
    bad = tmp_path / "rgb" / "mapillary"
    bad.mkdir(parents=True)
    (bad / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    _jpg(bad / "training/images/x.jpg")
    _jpg(bad / "training/v2.0/labels/x.png")  # an RGB image where class indices belong
    with pytest.raises(AnnotationError, match=r"x\.png.*single-channel"):
        open_semseg("mapillary", tmp_path / "rgb")[0]


def _part_json(path: Path, categories, annotations, file_name="train2017/000000000001.jpg"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name, "height": 6, "width": 8}],
                                "annotations": annotations, "categories": categories}))


def test_paco_parts_are_named_and_instances_of_a_category_are_one_target(tmp_path):
    cats = [{"id": 1, "name": "dog_(animal):leg_(body)"}, {"id": 2, "name": "trash_can"}]
    poly = lambda x0: [[x0, 0, x0 + 2, 0, x0 + 2, 2, x0, 2]]  # noqa: E731
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly(0)},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": poly(4)},
            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": poly(2)}]
    _part_json(tmp_path / "vlpart/paco/annotations/paco_lvis_v1_train.json", cats, anns)
    ds = open_semseg("paco_lvis", tmp_path)
    rec = ds[0]
    assert rec.image_path == tmp_path / "coco/train2017/000000000001.jpg"
    assert rec.names == [PartName("dog", "leg"), "trash can"]
    assert rec.names[0].phrase(False) == "dog leg" and rec.names[0].phrase(True) == "the leg of the dog"
    leg = rec.mask(0)
    assert leg[:2, 0:2].all() and leg[:2, 4:6].all() and not leg[:, 2:4].any()  # both legs, one target


def test_pascal_part_layout_and_malformed_files(tmp_path):
    cats = [{"id": 7, "name": "cat:tail"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[0, 0, 3, 0, 3, 3]]}]
    _part_json(tmp_path / "vlpart/pascal_part/train.json", cats, anns, file_name="2008_000002.jpg")
    rec = open_semseg("pascal_part", tmp_path)[0]
    assert rec.image_path == tmp_path / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg"
    assert rec.names == [PartName("cat", "tail")]
    _part_json(tmp_path / "vlpart/pascal_part/train.json", cats,
               [{"id": 1, "image_id": 1, "category_id": 99, "segmentation": []}])
    with pytest.raises(AnnotationError, match=r"train\.json: annotations\[0\]"):
        open_semseg("pascal_part", tmp_path)
    (tmp_path / "vlpart/pascal_part/train.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="train.json"):
        open_semseg("pascal_part", tmp_path)
    with pytest.raises(ValueError, match="partimagenet"):
        open_semseg("partimagenet", tmp_path)


# -- VQA ----------------------------------------------------------------------------------------------------------
def test_llava_instruct_drops_a_leading_answer_and_moves_the_image_marker(tmp_path):
    data = [{"id": "1", "image": "a.jpg", "conversations": [
        {"from": "gpt", "value": "hi"}, {"from": "human", "value": "What is this?\n<image>"},
        {"from": "gpt", "value": "A cat."}, {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]}]
    (tmp_path / "llava_dataset").mkdir()
    (tmp_path / "llava_dataset/llava_instruct_150k.json").write_text(json.dumps(data))
    rec = LlavaInstruct.from_dataset_dir(tmp_path)[0]
    assert rec.image_path == tmp_path / "coco/train2017/a.jpg"
    assert rec.rounds == (("What is this?", "A cat."), ("Colour?", "Grey."))
    data[0]["conversations"] = data[0]["conversations"][:2]
    (tmp_path / "llava_dataset/llava_instruct_150k.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"record #0 \(id=1\): needs human/gpt pairs"):
        LlavaInstruct.from_dataset_dir(tmp_path)


# -- custom data ----------------------------------------------------------------------------------------------------
def test_custom_format_reads_expressions_with_and_without_targets(tmp_path):
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 3, "file_name": "x.jpg", "height": 6, "width": 8}],
        "annotations": [{"id": 10, "image_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0}]}))
    (tmp_path / "expressions.json").write_text(json.dumps([
        {"image_id": 3, "sentences": ["the box", "square thing"], "ann_ids": [10], "split": "train"},
        {"image_id": 3, "sentence": "the zebra", "ann_ids": [], "split": "train"}]))
    ds = open_custom_dataset(tmp_path)
    (rec,) = ds.records("train")
    assert [(e.sentence, e.no_target) for e in rec.expressions] == \
        [("the box", False), ("square thing", False), ("the zebra", True)]
    assert ds.image_path(rec) == tmp_path / "images" / "x.jpg"
    assert ds.mask(rec.expressions[0].ann_ids, 6, 8).sum() > 0
    (tmp_path / "expressions.json").write_text(json.dumps([{"image_id": 3, "sentences": ["a"], "ann_ids": [11],
                                                            "split": "train"}]))
    with pytest.raises(AnnotationError, match="ann_id 11 is not in instances.json"):
        open_custom_dataset(tmp_path)
    (tmp_path / "expressions.json").write_text(json.dumps([{"image_id": 3, "sentences": [], "split": "train"}]))
    with pytest.raises(AnnotationError, match=r"entry #0: 'sentences'"):
        open_custom_dataset(tmp_path)


# -- the stand-ins and the conversations built from them ------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture(standins_root):
    from gsva.training.model_setup import tokenizer_corpus
    from gsva.tokenizer_build import train_tokenizer
    from gsva.tokens import add_control_tokens

    sources = open_sources(PAPER_DATASETS, standins_root)
    tok = train_tokenizer(tokenizer_corpus(None, texts=source_texts(sources)), vocab_size=400)
    ids = add_control_tokens(tok)
    return sources, tok, ids, conversation_datasets(sources, tok, ids, micro_config(), max_targets=5, seed=1)


def _answer(tok, ids, sample) -> str:
    keep = [t for t, lab in zip(sample.input_ids.tolist(), sample.labels.tolist()) if lab != -100]
    return tok.decode(keep)


def test_standins_open_in_every_official_layout(standins_root, mixture):
    sources, _, _, datasets = mixture
    assert {f: [d.name for d in ds] for f, ds in datasets.items()} == {
        "sem_seg": ["ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part"],
        "refer_seg": ["refclef", "refcoco", "refcoco+", "refcocog", "grefcoco"],
        "vqa": ["llava_instruct_150k"], "reason_seg": ["reason_seg"]}
    with open(standins_root / "refer_seg/refcocog/refs(umd).p", "rb") as f:
        refs = pickle.load(f)  # noqa: S301 - our own test fixture
    assert isinstance(refs[0]["ann_id"], int) and {r["split"] for r in refs} <= {"train", "val", "test"}


def test_semseg_conversations_join_targets_without_space_and_never_reject(mixture):
    _, tok, ids, datasets = mixture
    for ds in datasets["sem_seg"]:
        for i in range(len(ds)):
            s = ds.sample(i, random.Random(i))
            n_seg = int((s.input_ids == ids.seg).sum())
            assert n_seg == len(s.gt_masks) >= 1 and int((s.input_ids == ids.rej).sum()) == 0
            assert s.gt_masks.flatten(1).sum(1).min() > 0  # every asked class is in the image
            if n_seg > 1:  # official sem_seg: ",".join (refer_seg: ", ")
                answer = _answer(tok, ids, s)
                assert answer.count("[SEG],") == n_seg - 1 and "[SEG], " not in answer, answer


def test_vqa_conversations_have_no_slots_and_keep_user_text_as_text(mixture):
    _, tok, ids, datasets = mixture
    (vqa,) = datasets["vqa"]
    for i in range(len(vqa)):
        s = vqa.sample(i, random.Random(0))
        assert s.gt_masks.shape[0] == 0 and int((s.input_ids == ids.seg).sum()) == 0
        assert int((s.input_ids == ids.image).sum()) == micro_config().num_image_tokens  # one image, first turn
    assert "[SEG]" in tok.decode(vqa.sample(3, random.Random(0)).input_ids)  # typed by the user, as characters


def test_reasonseg_explanation_only_answers_at_the_configured_rate(mixture):
    _, tok, ids, datasets = mixture
    (reason,) = datasets["reason_seg"]
    explained = [i for i, (_, r) in enumerate(reason.records) if r.image_path.name in reason.explanations]
    plain = [i for i in range(len(reason)) if i not in explained]
    assert explained and plain
    counts = Counter()
    for k in range(400):
        s = reason.sample(explained[0], random.Random(k))
        n_seg = int((s.input_ids == ids.seg).sum())
        counts[n_seg] += 1
        assert len(s.gt_masks) == n_seg
    assert 0.05 < counts[0] / 400 < 0.16, counts  # official explanatory = 0.1
    for k in range(20):
        s = reason.sample(plain[0], random.Random(k))
        assert int((s.input_ids == ids.seg).sum()) == 1 and s.gt_masks[0].sum() > 0


def test_mixture_items_come_from_all_four_families_by_weight(mixture):
    from gsva.data.mixture import PAPER_FAMILY_WEIGHTS, MixtureDataset

    _, _, _, datasets = mixture
    mix = MixtureDataset(datasets, PAPER_FAMILY_WEIGHTS, length=4000, seed=3)
    counts = Counter(mix.draw(i)[0] for i in range(4000))
    for family, weight in PAPER_FAMILY_WEIGHTS.items():
        assert counts[family] / 4000 == pytest.approx(weight / 19, abs=0.025)
    names = {mix[i].meta.get("dataset", "refer") for i in range(40)}
    assert {"llava_instruct_150k"} <= names and len(names) >= 5


def test_data_spec_is_checked():
    validate_spec(PAPER_DATASETS)
    for bad, match in (({"sem_seg": ["ade20k"], "video": ["x"]}, "unknown dataset family"),
                       ({"sem_seg": ["partimagenet"]}, "unknown dataset 'partimagenet'"),
                       ({"reason_seg": ["ReasonSeg"]}, "unknown dataset"),
                       ({"refer_seg": []}, "lists no dataset"), ({"vqa": "llava"}, "expected a list")):
        with pytest.raises(ValueError, match=match):
            validate_spec(bad)


def test_point_prompts_survive_a_mixed_batch(mixture):
    """A GRES sample's point prompts (auxiliary SAM objective) count even when a VQA sample shares its batch."""
    from gsva.data.collate import collate
    from gsva.modeling.gsva_model import GSVAModel

    _, tok, ids, datasets = mixture
    config = micro_config()
    config.loss.point_prompt_weight = 1.0
    gres = datasets["refer_seg"][4]
    gres.config = config
    try:
        with_points = gres.sample(0, random.Random(0))
    finally:
        gres.config = micro_config()
    assert len(with_points.point_coords) > 0
    vqa = datasets["vqa"][0].sample(0, random.Random(0))
    torch.manual_seed(0)
    model = GSVAModel(config, ids, len(tok))
    mixed = collate([vqa, with_points], ids.pad)
    assert mixed.point_coords[0].shape == (0, 2) and mixed.point_masks[1].shape[0] == len(with_points.point_coords)
    with torch.no_grad():
        alone = float(model(collate([with_points], ids.pad)).loss.point_mask)
        together = float(model(mixed).loss.point_mask)
        none = float(model(collate([vqa], ids.pad)).loss.point_mask)
    assert alone > 0 and together == pytest.approx(alone, rel=1e-5) and none == 0.0


def test_too_long_conversations_drop_trailing_targets_or_rounds(mixture):
    """Over ``max_length``, a target (SemSeg) or a round (VQA) is dropped from the end, never cut mid-[SEG]."""
    import dataclasses

    from gsva.conversation import PromptTooLongError

    _, _, ids, datasets = mixture
    semseg, vqa = datasets["sem_seg"][4], datasets["vqa"][0]  # PASCAL-Part: several parts per image
    full = semseg.sample(0, random.Random(0))
    n_full = int((full.input_ids == ids.seg).sum())
    assert n_full >= 2
    rounds = vqa.sample(0, random.Random(0))
    for ds, sample in ((semseg, full), (vqa, rounds)):
        ds.config = dataclasses.replace(micro_config(), max_length=sample.input_ids.numel() - 1)
    try:
        short = semseg.sample(0, random.Random(0))
        n_short = int((short.input_ids == ids.seg).sum())
        assert 1 <= n_short < n_full and len(short.gt_masks) == n_short
        assert short.meta["phrases"] == full.meta["phrases"][:n_short]
        assert torch.equal(short.gt_masks, full.gt_masks[:n_short])
        one_round = vqa.sample(0, random.Random(0))
        assert one_round.input_ids.numel() < rounds.input_ids.numel()
        assert one_round.input_ids.tolist() == rounds.input_ids.tolist()[:one_round.input_ids.numel()]
        semseg.config = dataclasses.replace(micro_config(), max_length=micro_config().num_image_tokens + 9)
        with pytest.raises(PromptTooLongError):
            semseg.sample(0, random.Random(0))
    finally:
        semseg.config = vqa.config = micro_config()
