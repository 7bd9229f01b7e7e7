"""The describe-the-scene task mixed into from-scratch training (gsva.data.describe, TrainRecipe.caption_rate)."""

import json

import pytest

from gsva.data.describe import DESCRIBE_QUESTION, describe_answer, describe_texts, instance_phrase
from gsva.data.grefcoco import AnnotationError, GRefCOCO


def _tiny_gref(tmp_path, annotations, categories=({"id": 1, "name": "circle"}, {"id": 2, "name": "apple"})):
    """A one-image gRefCOCO folder with the given instance annotations."""
    seg = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]
    anns = [dict({"id": i + 1, "image_id": 1, "segmentation": seg, "iscrowd": 0}, **a)
            for i, a in enumerate(annotations)]
    inst = {"images": [{"id": 1, "file_name": "a.jpg", "height": 50, "width": 100}], "annotations": anns,
            "categories": list(categories)}
    refs = [{"ref_id": 0, "image_id": 1, "ann_id": [-1], "split": "train", "sentences": [{"sent": "the dog"}]}]
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    (tmp_path / "grefs(unc).json").write_text(json.dumps(refs))
    return GRefCOCO(tmp_path, tmp_path)


def test_objects_listed_left_to_right_with_attributes(tmp_path):
    gref = _tiny_gref(tmp_path, [
        {"category_id": 1, "bbox": [60, 0, 10, 10], "attributes": {"color": "red", "size": "small"}},
        {"category_id": 1, "bbox": [0, 5, 30, 30], "attributes": {"color": "orange", "size": "large"}},
        {"category_id": 2, "bbox": [10, 30, 10, 10]},  # no attributes (real COCO): category name only
        {"category_id": 1, "bbox": [10, 0, 10, 10], "iscrowd": 1},  # crowd: not an instance
    ])
    # box centres x: 65, 15, 15 (tie broken by centre y: 20 before 35)
    assert describe_answer(gref, 1) == " There are 3 objects: a large orange circle, an apple, a small red circle."
    assert instance_phrase(gref.anns[1], gref.categories) == "small red circle"
    assert describe_texts(gref) == [DESCRIBE_QUESTION, describe_answer(gref, 1)]


def test_one_and_no_objects(tmp_path):
    assert describe_answer(_tiny_gref(tmp_path, [{"category_id": 2, "bbox": [1, 1, 2, 2]}]), 1) == \
        " There is 1 object: an apple."
    assert describe_answer(_tiny_gref(tmp_path, []), 1) == " There are no objects."


def test_malformed_annotation_is_named(tmp_path):
    gref = _tiny_gref(tmp_path, [{"category_id": 9, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(AnnotationError, match="instances.json: image 1"):
        describe_answer(gref, 1)
    gref = _tiny_gref(tmp_path, [{"category_id": 1}])
    with pytest.raises(AnnotationError, match="bbox"):
        describe_answer(gref, 1)


def test_synthetic_description_matches_the_scene(synth_root):
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    for image_id in sorted(gref.images)[:10]:
        text = describe_answer(gref, image_id)
        n = len(gref.instance_ids(image_id))
        assert text.count(",") == n - 1 and text.endswith(".")
        for a in gref.instance_ids(image_id):
            attrs = gref.anns[a]["attributes"]
            assert f"{attrs['size']} {attrs['color']} {gref.categories[gref.anns[a]['category_id']]}" in text


def test_dataset_mixes_describe_conversations(synth_root, tokenizer):
    from gsva.data.gres_dataset import GRESConversationDataset
    from gsva.tokens import add_control_tokens

    from .conftest import micro_config

    ids = add_control_tokens(tokenizer)
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    ds = GRESConversationDataset(gref, "train", tokenizer, ids, micro_config(), caption_rate=0.5)
    kinds = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            kinds.append(s.meta.get("task") == "describe")
            if kinds[-1]:
                assert ids.seg not in s.input_ids.tolist() and ids.rej not in s.input_ids.tolist()
                assert s.gt_masks.shape[0] == 0
                trained = [t for t, lab in zip(s.input_ids.tolist(), s.labels.tolist()) if lab != -100]
                rec = ds.records[i]
                assert tokenizer.decode(trained[:-1]).strip() == describe_answer(gref, rec.image_id).strip()
                assert trained[-1] == tokenizer.eos_token_id
    assert 0.3 < sum(kinds) / len(kinds) < 0.7
    plain = GRESConversationDataset(gref, "train", tokenizer, ids, micro_config())
    assert not any(plain[i].meta.get("task") == "describe" for i in range(len(plain)))
    with pytest.raises(ValueError, match="caption_rate"):
        GRESConversationDataset(gref, "train", tokenizer, ids, micro_config(), caption_rate=1.0)


def test_recipe_caption_rate_is_validated(tmp_path):
    from gsva.config import ConfigError
    from gsva.training import load_recipe

    (tmp_path / "r.yaml").write_text("caption_rate: 0.3\n")
    assert load_recipe(tmp_path / "r.yaml").caption_rate == 0.3
    with pytest.raises(ConfigError, match="caption_rate"):
        load_recipe(tmp_path / "r.yaml", ["caption_rate=1.5"])


def test_tokenizer_corpus_includes_descriptions(synth_root):
    from gsva.training.model_setup import tokenizer_corpus

    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    assert DESCRIBE_QUESTION not in tokenizer_corpus(gref)
    assert set(describe_texts(gref)) <= set(tokenizer_corpus(gref, describe=True))


def test_model_trains_on_a_describe_only_batch(synth_root, tokenizer, micro_model):
    """A batch without any slot still gives a finite loss with gradients for the language model."""
    from gsva.data.collate import collate
    from gsva.data.gres_dataset import GRESConversationDataset
    from gsva.tokens import add_control_tokens

    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    ds = GRESConversationDataset(gref, "train", tokenizer, add_control_tokens(tokenizer), micro_model.config,
                                 caption_rate=0.99)
    batch = collate([ds[i] for i in range(2)], tokenizer.pad_token_id)
    assert all(m.get("task") == "describe" for m in batch.meta)
    out = micro_model(batch)
    out.loss.total.backward()
    assert out.loss.num_masks == 0 and out.loss.total.isfinite()
    assert micro_model.mllm.lm_head.weight.grad.abs().sum() > 0


def test_too_long_description_falls_back_to_a_gres_conversation(synth_root, tokenizer, monkeypatch):
    from gsva.data import gres_dataset
    from gsva.data.gres_dataset import GRESConversationDataset
    from gsva.tokens import add_control_tokens

    from .conftest import micro_config

    monkeypatch.setattr(gres_dataset, "describe_answer", lambda gref, image_id: " a red circle," * 500)
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    ds = GRESConversationDataset(gref, "train", tokenizer, add_control_tokens(tokenizer), micro_config(),
                                 caption_rate=0.99)
    sample = ds[0]
    assert sample.meta.get("task") != "describe" and sample.meta["phrases"]


def test_attribute_questions_are_answered_in_words_from_the_annotations(synth_root):
    import random

    from gsva.data.describe import attribute_question

    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    kinds = set()
    for image_id in sorted(gref.images)[:20]:
        rng = random.Random(image_id)
        asked = attribute_question(gref, image_id, rng)
        assert asked is not None
        question, answer = asked
        assert "[SEG]" not in answer and answer.startswith(" ") and answer.endswith(".")
        anns = [gref.anns[a] for a in gref.instance_ids(image_id)]
        if question.startswith("What colour is the "):
            kinds.add("colour")
            size, shape = question[len("What colour is the "):-1].split()
            colours = {a["attributes"]["color"] for a in anns
                       if a["attributes"]["size"] == size and gref.categories[a["category_id"]] == shape}
            assert colours and all(c in answer for c in colours)
        else:
            kinds.add("shape")
            size, colour = question[len("What shape is the "):-len(" object?")].split()
            shapes = {gref.categories[a["category_id"]] for a in anns
                      if a["attributes"]["size"] == size and a["attributes"]["color"] == colour}
            assert shapes and all(s in answer for s in shapes)
    assert kinds == {"colour", "shape"}


def test_no_attribute_question_without_attributes(tmp_path):
    import random

    from gsva.data.describe import attribute_question

    gref = _tiny_gref(tmp_path, [{"category_id": 1, "bbox": [0, 0, 4, 4]}])
    assert attribute_question(gref, 1, random.Random(0)) is None
