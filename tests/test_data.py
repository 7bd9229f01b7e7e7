"""Synthetic data validity, the gRefCOCO reader on the real format, malformed annotation files."""

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from gsva.data.grefcoco import AnnotationError, GRefCOCO
from gsva.data.masks import decode_segmentation, encode_rle
from gsva.data.synth import COLORS, SHAPES, SIZES, make_scene, write_synthetic_grefcoco


def test_synthetic_dataset_is_valid_grefcoco(synth_root):
    refs = json.loads((synth_root / "grefcoco" / "grefs(unc).json").read_text())
    inst = json.loads((synth_root / "grefcoco" / "instances.json").read_text())
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    kinds = {"polygon": 0, "rle": 0}
    for ann in inst["annotations"]:
        img = next(i for i in inst["images"] if i["id"] == ann["image_id"])
        m = decode_segmentation(ann["segmentation"], img["height"], img["width"])
        assert m.sum() > 0 and abs(m.sum() - ann["area"]) <= 0.02 * ann["area"] + 2
        kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
    assert kinds["polygon"] > 0 and kinds["rle"] > 0  # both COCO layouts occur
    empty = [r for r in refs if r["ann_id"] == [-1]]
    assert all(r["category_id"] == [-1] and r["no_target"] for r in empty)
    assert 0.25 <= len(empty) / len(refs) <= 0.5  # about a third are absent targets
    multi = [r for r in refs if len(r["ann_id"]) > 1]
    assert multi, "multi-target expressions must occur"
    for r in refs:
        assert set(r["sentences"][0]) == {"sent", "raw", "sent_id", "tokens"}


def test_reader_reads_back_every_split(synth_root):
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    total = 0
    for split in ("train", "val", "testA", "testB"):
        for rec in gref.records(split):
            assert gref.image_path(rec).is_file()
            for e in rec.expressions:
                m = gref.mask(e.ann_ids, rec.height, rec.width)
                assert (m.sum() == 0) == e.is_empty
                total += 1
    assert total == len(json.loads((synth_root / "grefcoco" / "grefs(unc).json").read_text()))
    with pytest.raises(ValueError, match="split"):
        gref.records("test")


def test_scenes_are_deterministic_and_varied():
    a, b = make_scene(3, 11), make_scene(3, 11)
    assert np.array_equal(a.image, b.image) and [o.shape for o in a.objects] == [o.shape for o in b.objects]
    scenes = [make_scene(3, i) for i in range(150)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES) and {o.color for o in objs} == set(COLORS)
    assert {o.size for o in objs} == set(SIZES)
    assert {len(s.objects) for s in scenes} == set(range(1, 7))
    assert any(o.occluded for o in objs)


def test_expression_kinds_cover_attributes_positions_relations(synth_root):
    sents = [s["sent"] for r in json.loads((synth_root / "grefcoco" / "grefs(unc).json").read_text())
             for s in r["sentences"]]
    text = " | ".join(sents)
    for word in ("left", "all ", "of the", "red", "small", "large"):
        assert word in text, word


def test_same_seed_same_files(tmp_path):
    write_synthetic_grefcoco(tmp_path / "a", seed=5, num_images=6)
    write_synthetic_grefcoco(tmp_path / "b", seed=5, num_images=6)
    for name in ("grefs(unc).json", "instances.json"):
        assert (tmp_path / "a/grefcoco" / name).read_bytes() == (tmp_path / "b/grefcoco" / name).read_bytes()
    with pytest.raises(FileExistsError):
        write_synthetic_grefcoco(tmp_path / "a", seed=5, num_images=6)


def test_images_are_written_lossless_and_lossy(tmp_path):
    """About half PNG, the rest JPEG: the PNG pixels are the scene's exactly; the share is checked."""
    from gsva.data.synth import image_format
    from gsva.images import load_image

    write_synthetic_grefcoco(tmp_path / "d", seed=5, num_images=12)
    images = json.loads((tmp_path / "d/grefcoco/instances.json").read_text())["images"]
    kinds = [Path(im["file_name"]).suffix for im in images]
    assert set(kinds) == {".png", ".jpg"}, kinds
    for index, im in enumerate(images):
        kind, quality = image_format(5, index)
        assert im["file_name"].endswith("." + kind) and (quality is None) == (kind == "png")
        pixels = load_image(tmp_path / "d/images" / im["file_name"])
        exact = np.array_equal(pixels, make_scene(5, index).image)
        assert exact == (kind == "png"), im["file_name"]
    write_synthetic_grefcoco(tmp_path / "all_jpeg", seed=5, num_images=3, png_share=0.0)
    assert sorted(p.suffix for p in (tmp_path / "all_jpeg/images").iterdir()) == [".jpg"] * 3
    with pytest.raises(ValueError, match="png_share"):
        write_synthetic_grefcoco(tmp_path / "bad", seed=5, num_images=3, png_share=1.5)


def test_compressed_rle_and_crowd(tmp_path, synth_root):
    shutil.copytree(synth_root, tmp_path / "d")
    inst_path = tmp_path / "d/grefcoco/instances.json"
    inst = json.loads(inst_path.read_text())
    ann = inst["annotations"][0]
    img = next(i for i in inst["images"] if i["id"] == ann["image_id"])
    m = decode_segmentation(ann["segmentation"], img["height"], img["width"])
    ann["segmentation"] = encode_rle(m)  # compressed counts string
    inst["annotations"][1]["iscrowd"] = 1
    inst_path.write_text(json.dumps(inst))
    gref = GRefCOCO(tmp_path / "d/grefcoco", tmp_path / "d/images")
    assert np.array_equal(gref.mask((ann["id"],), img["height"], img["width"]), m)
    crowd = inst["annotations"][1]["id"]
    for split in gref.splits():
        for rec in gref.records(split):
            assert all(crowd not in e.ann_ids for e in rec.expressions)  # crowd annotations are skipped (ReLA)
    rle = mask_utils.encode(np.asfortranarray(m))
    assert mask_utils.area(rle) == m.sum()


@pytest.mark.parametrize("breakage,match", [
    (lambda refs, inst: refs[0].pop("ann_id"), "lacks ann_id"),
    (lambda refs, inst: refs[0].__setitem__("ann_id", [999999]), "ann_id 999999"),
    (lambda refs, inst: refs[0].__setitem__("image_id", 424242), "image_id 424242"),
    (lambda refs, inst: refs[0].__setitem__("sentences", "oops"), "sentences"),
    (lambda refs, inst: inst["annotations"][0].pop("segmentation"), "annotations\\[0\\]"),
])
def test_malformed_annotations_name_file_and_record(tmp_path, synth_root, breakage, match):
    shutil.copytree(synth_root / "grefcoco", tmp_path / "g")
    refs = json.loads((tmp_path / "g/grefs(unc).json").read_text())
    inst = json.loads((tmp_path / "g/instances.json").read_text())
    breakage(refs, inst)
    (tmp_path / "g/grefs(unc).json").write_text(json.dumps(refs))
    (tmp_path / "g/instances.json").write_text(json.dumps(inst))
    with pytest.raises(AnnotationError, match=match) as err:
        GRefCOCO(tmp_path / "g", synth_root / "images")
    assert "grefs(unc).json" in str(err.value) or "instances.json" in str(err.value)


def test_unreadable_annotation_files(tmp_path):
    (tmp_path / "grefs(unc).json").write_text("[{broken")
    (tmp_path / "instances.json").write_text("{}")
    with pytest.raises(AnnotationError, match="grefs\\(unc\\).json: cannot read JSON"):
        GRefCOCO(tmp_path, tmp_path)
    with pytest.raises(AnnotationError, match="file not found"):
        GRefCOCO(tmp_path / "none", tmp_path)


@pytest.mark.slow
def test_absent_expressions_are_not_predictable_from_text():
    """Within every template ("the C S", "the S left of the C S", ...) present and absent targets both occur, so a
    text-only guess of [REJ] is barely better than always answering "present" (the old generator allowed +14 points,
    and the shipped model learned that shortcut)."""
    from collections import defaultdict

    from gsva.data.synth import scene_expressions

    words = {**{c: "C" for c in COLORS}, **{s: "S" for s in SHAPES}, **{s + "s": "Ss" for s in SHAPES},
             **{z: "Z" for z in SIZES}}
    counts = defaultdict(lambda: [0, 0])  # template -> [present, absent]
    for i in range(300):
        for sent, targets in scene_expressions(make_scene(1, i), 1, i):
            sent = sent[4:] if sent.startswith("the ") else sent
            counts[" ".join(words.get(w, w) for w in sent.split())][not targets] += 1
    total = sum(p + a for p, a in counts.values())
    absent = sum(a for _p, a in counts.values()) / total
    text_only = sum(max(p, a) for p, a in counts.values()) / total
    assert 0.28 <= absent <= 0.45
    assert text_only - max(absent, 1 - absent) < 0.05
    for name in ("C S", "S", "Z C S", "C object", "leftmost S", "S left of the C S", "all C objects", "Ss"):
        p, a = counts[name]
        assert p > 0 and a > 0 and 0.2 < a / (p + a) < 0.6, (name, p, a)


def test_point_prompts_lie_on_their_instances(synth_root, tokenizer):
    import dataclasses

    from gsva.data.gres_dataset import MAX_POINT_PROMPTS, GRESConversationDataset
    from gsva.tokens import add_control_tokens

    from .conftest import micro_config

    cfg = micro_config()
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, point_prompt_weight=1.0))
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    ds = GRESConversationDataset(gref, "train", tokenizer, add_control_tokens(tokenizer), cfg)
    seen = 0
    for i in range(len(ds)):
        s, rec = ds[i], ds.records[i]
        n = len(gref.instance_ids(rec.image_id))
        assert len(s.point_coords) == len(s.point_masks) == min(n, MAX_POINT_PROMPTS)
        (rh, rw), (h, w) = s.resized_hw, s.original_hw
        for (x, y), m in zip(s.point_coords.tolist(), s.point_masks):
            col, row = round(x * w / rw), round(y * h / rh)  # back to original pixels
            assert m[row, col] == 1
            seen += 1
    assert seen > 20
    off = GRESConversationDataset(gref, "train", tokenizer, add_control_tokens(tokenizer), micro_config())
    assert off[0].point_coords is None


def test_follow_up_conversations_ask_the_targets_over_two_supervised_turns(synth_root, tokenizer):
    """follow_up_rate 1: every item with two or more targets is two turns (two user questions), each answer's
    [SEG]/[REJ] slots supervised, the masks in slot order; rate 0 draws exactly the one-turn items as before."""
    from gsva.data.gres_dataset import GRESConversationDataset
    from gsva.tokens import add_control_tokens

    from .conftest import micro_config

    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    ids = add_control_tokens(tokenizer)
    two = GRESConversationDataset(gref, "train", tokenizer, ids, micro_config(), follow_up_rate=1.0)
    one = GRESConversationDataset(gref, "train", tokenizer, ids, micro_config())
    again = GRESConversationDataset(gref, "train", tokenizer, ids, micro_config(), follow_up_rate=0.0)
    def questions(sample) -> int:
        return tokenizer.decode(sample.input_ids[sample.input_ids != ids.image]).count("in this image")

    turns_seen = 0
    for i in range(len(two)):
        s, base = two[i], one[i]
        assert torch.equal(base.input_ids, again[i].input_ids)  # rate 0: the draws of before
        assert questions(base) == 1
        phrases = s.meta["phrases"]
        # two turns whenever two targets fit the context (a prefix that fits may end inside the first turn)
        assert questions(s) == 1 if len(phrases) == 1 else questions(s) in (1, 2)
        turns_seen += questions(s) == 2
        slots = ((s.input_ids == ids.seg) | (s.input_ids == ids.rej))
        assert int(slots.sum()) == len(phrases)
        assert (s.labels[slots] == s.input_ids[slots]).all()  # every slot of both answers is supervised
        assert s.gt_masks.shape[0] == int((s.input_ids == ids.seg).sum())
    assert turns_seen > 5
    with pytest.raises(ValueError, match="follow_up_rate"):
        GRESConversationDataset(gref, "train", tokenizer, ids, micro_config(), follow_up_rate=1.5)
