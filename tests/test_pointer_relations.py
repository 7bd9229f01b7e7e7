"""Stage (d6): the object pointer's slot relations (comparing slots), their stage and the phrase families."""

from __future__ import annotations

import dataclasses
import pytest
import torch

from gsva.config import ConfigError, get_named_config
from gsva.modeling.object_pointer import ObjectPointer, choose_objects, pointer_loss
from gsva.pointer_relations import add_slot_relations, phrase_family, slot_set_accuracy


def _pointer_pair(relation_layers: int = 2):
    torch.manual_seed(0)
    plain = ObjectPointer(hidden_size=8, width=16)
    related = ObjectPointer(hidden_size=8, width=16, relation_layers=relation_layers, relation_width=32)
    related.query.load_state_dict(plain.query.state_dict())
    related.key.load_state_dict(plain.key.state_dict())
    return plain, related


def test_fresh_relations_change_no_logit_and_need_boxes():
    plain, related = _pointer_pair()
    h, s = torch.randn(3, 8), torch.randn(3, 5, 8)
    present = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    boxes = torch.rand(3, 5, 4)
    torch.testing.assert_close(related(h, s, present, boxes), plain(h, s, present))
    with pytest.raises(ValueError, match="need boxes"):
        related(h, s, present)
    with pytest.raises(ValueError, match="need boxes"):
        related(h, s, present, boxes[:, :4])


def _leftmost_task(n: int, generator: torch.Generator, kinds: torch.Tensor, asks: torch.Tensor):
    """Rows of 6 slots, each of kind A or B (state ``kinds[kind]``), at a random x; the query (``asks[side]``) asks
    for the leftmost or the rightmost slot of kind A. A per-slot score cannot tell which A is extreme without seeing
    the others."""
    kind = torch.randint(0, 2, (n, 6), generator=generator)
    kind[:, 0] = 0  # at least two slots of kind A in every row
    kind[:, 1] = 0
    states = kinds[kind] + 0.1 * torch.randn(n, 6, 8, generator=generator)
    x = torch.rand(n, 6, generator=generator)
    boxes = torch.stack([x - 0.05, torch.full_like(x, 0.4), x + 0.05, torch.full_like(x, 0.6)], -1)
    side = torch.randint(0, 2, (n,), generator=generator)  # 0 leftmost, 1 rightmost
    query = asks[side] + 0.1 * torch.randn(n, 8, generator=generator)
    key = torch.where(kind == 0, x, torch.full_like(x, float("nan")))
    pick = torch.where(side == 0, torch.nan_to_num(key, nan=9.0).argmin(1), torch.nan_to_num(key, nan=-9.0).argmax(1))
    targets = torch.zeros(n, 6)
    targets[torch.arange(n), pick] = 1
    return query, states, torch.ones(n, 6, dtype=torch.bool), boxes, targets


def _train(pointer, params, data, steps: int = 150) -> None:
    opt = torch.optim.Adam(params, lr=3e-3)
    q, s, present, boxes, targets = data
    for _ in range(steps):
        loss = pointer_loss(pointer(q, s, present, boxes), targets, present)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _accuracy(pointer, data) -> float:
    q, s, present, boxes, targets = data
    if isinstance(pointer, torch.nn.Module):
        pointer.eval()
    with torch.no_grad():
        chosen = choose_objects(pointer(q, s, present, boxes), present)
    return sum(c == t.nonzero(as_tuple=True)[0].tolist() for c, t in zip(chosen, targets)) / len(targets)


def test_relations_learn_the_extreme_slot_that_a_per_slot_score_misses():
    g = torch.Generator().manual_seed(0)
    kinds, asks = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    train, test = _leftmost_task(512, g, kinds, asks), _leftmost_task(256, g, kinds, asks)
    plain, related = _pointer_pair(relation_layers=2)
    without_boxes = (lambda q, s, p, b: plain(q, s, p))  # the bilinear score takes no box
    _train(without_boxes, plain.parameters(), train)
    plain_acc = _accuracy(without_boxes, test)
    related.query.load_state_dict(plain.query.state_dict())  # stage (d6): the trained bilinear part, frozen
    related.key.load_state_dict(plain.key.state_dict())
    _train(related, related.relations.parameters(), train)
    related_acc = _accuracy(related, test)
    assert plain_acc < 0.5, plain_acc  # measured 0.30
    assert related_acc > 0.85, related_acc  # measured 0.92


def test_config_validates_relation_layers():
    cfg = get_named_config("gsva-smol")
    assert cfg.pointer_relation_layers == 0
    assert dataclasses.replace(cfg, pointer_relation_layers=2).validate().pointer_relation_layers == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="pointer_relation_layers"):
            dataclasses.replace(cfg, pointer_relation_layers=bad).validate()
    with pytest.raises(ConfigError, match="object pointer"):
        dataclasses.replace(get_named_config("gsva-tiny"), pointer_relation_layers=1).validate()


def test_phrase_families_of_the_generator():
    assert phrase_family("the second square from the left") == "ordinal"
    assert phrase_family("the leftmost circle") == "position"
    assert phrase_family("bottom object") == "position"
    assert phrase_family("the heart left of the green hexagon") == "relation"
    assert phrase_family("the star below the small red square") == "relation"
    assert phrase_family("all green objects") == "plural"
    assert phrase_family("hexagons") == "plural"
    assert phrase_family("the purple circles") == "plural"
    assert phrase_family("the large blue circle") == "attribute"
    assert phrase_family("the orange object") == "attribute"
    from gsva.data.synth import FAMILY_WEIGHTS, expression_candidates, make_scene

    expected = {"shape": "attribute", "color_shape": "attribute", "size_color_shape": "attribute",
                "color_object": "attribute", "position": "position", "ordinal": "ordinal", "relation": "relation",
                "all_color": "plural", "plural": "plural", "color_plural": "plural"}
    assert set(expected) == set(FAMILY_WEIGHTS)
    seen = set()
    for i in range(40):  # every phrase the generator can write for these scenes, present and absent
        scene = make_scene(3, i)
        for name, family in expression_candidates(scene.objects, scene.width, scene.height).items():
            for phrase in [p for p, _ in family.present] + family.absent:
                assert phrase_family(phrase) == expected[name], (name, phrase)
                seen.add(name)
    assert seen == set(expected)


def test_slot_set_accuracy_counts_exact_sets_per_family():
    present = torch.ones(3, 3, dtype=torch.bool)
    logits = torch.tensor([[5.0, -5.0, -5.0], [5.0, -5.0, -5.0], [5.0, 5.0, -5.0]])
    inputs = {"present": present, "phrases": ["the leftmost circle", "the red star", "the circles"],
              "targets": torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])}
    m = slot_set_accuracy(logits, inputs)
    assert m["all"] == pytest.approx(2 / 3) and m["all_count"] == 3
    assert m["position"] == 1.0 and m["attribute"] == 0.0 and m["plural"] == 1.0
    assert "relation" not in m


def test_add_slot_relations_refuses_models_without_the_pointer(micro_model):
    with pytest.raises(ConfigError, match="no object pointer"):
        add_slot_relations(micro_model, 2)
