"""The object-word projector of gsva-smol: patch grouping, crops, position code and the token layout."""

from __future__ import annotations

import math

import pytest
import torch

from gsva.modeling.object_projector import (CROP_SIZE, ObjectWordProjector, object_crops, patch_components,
                                            position_code)

BG = 9


def test_patch_components_join_touching_patches_of_one_word():
    grid = torch.tensor([[1, 1, BG, 2],
                         [BG, 1, BG, 2],
                         [3, BG, 1, BG],
                         [3, 3, BG, BG]]).flatten()
    comps = patch_components(grid, BG)
    # the lone 1 at (2, 2) touches the first 1s only diagonally: a separate object
    assert comps == [[0, 1, 5], [3, 7], [8, 12, 13], [10]]
    assert patch_components(torch.full((16,), BG), BG) == []
    with pytest.raises(ValueError, match="square"):
        patch_components(torch.zeros(12, dtype=torch.long), BG)


def test_position_code_has_the_asked_rms_and_separates_places():
    xy = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    code = position_code(xy, 64, 0.05)
    assert code.shape == (4, 64)
    assert math.isclose(float(code.pow(2).mean().sqrt()), 0.05, rel_tol=1e-4)
    dist = torch.cdist(code, code)
    assert float(dist[~torch.eye(4, dtype=torch.bool)].min()) > 0.01
    with pytest.raises(ValueError):
        position_code(xy, 30, 0.05)


def test_object_crops_are_squares_around_the_patch_box():
    pixels = torch.zeros(3, 160, 160)
    pixels[:, 40:80, 100:120] = 1.0  # an object on patches rows 2-3, column 5 (20-pixel patches, 8 x 8 grid)
    crops, extents = object_crops(pixels, [[21, 29]], side=8)
    assert crops.shape == (1, 3, CROP_SIZE, CROP_SIZE)
    torch.testing.assert_close(extents, torch.tensor([[1 / 8, 2 / 8]]))
    # square of side 3 patches (60 px) around the box centre (y 60, x 110): y 30..90, x 80..140
    assert float(crops[0, 0, CROP_SIZE // 2, CROP_SIZE // 2]) == 1.0
    assert float(crops[0, 0, 0, 0]) == 0.0 and float(crops[0, 0, -1, -1]) == 0.0
    edge, _ = object_crops(pixels, [[0]], side=8)  # a corner object: the square is shifted inside the image
    assert edge.shape == (1, 3, CROP_SIZE, CROP_SIZE)
    none, no_extents = object_crops(pixels, [], side=8)
    assert none.shape == (0, 3, CROP_SIZE, CROP_SIZE) and no_extents.shape == (0, 2)


def _projector(monkeypatch, patch_words: list[list[int]], max_objects: int = 3, scale: float = 0.0):
    """A 2 x 2-patch projector whose tower reads ``patch_words`` (P lists of G word indices)."""
    sizes = [2, 3]  # group 0: (a, bg); group 1, the object group: (x, y, bg)
    proj = ObjectWordProjector(4, 8, num_patches=4, group_sizes=sizes, max_objects=max_objects, object_group=1,
                               position_scale=scale)
    proj.set_word_embeddings(torch.arange(6, dtype=torch.float32)[:, None].expand(6, 8) * 1.0)

    def logits(features):
        out = []
        for g, k in enumerate(sizes):
            lg = torch.full((1, 4, k), -10.0)
            for p, words in enumerate(patch_words):
                lg[0, p, words[g]] = 10.0
            out.append(lg)
        return out

    monkeypatch.setattr(proj, "word_logits", logits)
    return proj


def test_objects_are_written_left_to_right_with_separators_and_free_slots(monkeypatch):
    # patches (row-major, 2 x 2): top-right reads (a, x); bottom-left and bottom-right read (a, y) and touch
    proj = _projector(monkeypatch, [[1, 2], [0, 0], [0, 1], [0, 1]])
    tokens = proj(torch.zeros(1, 4, 4))
    assert tokens.shape == (1, 3 * 3, 8)
    rows = tokens[0, :, 0].tolist()
    # rows: group 0 words 0-1, group 1 words 2-4, separator 5; object y (centre x 0.5) before object x (x 0.75)
    assert rows == [0, 3, 5, 0, 2, 5, 1, 4, 5]
    objects = proj.read_objects(torch.zeros(1, 4, 4))[0]
    assert [o["patches"] for o in objects] == [[2, 3], [1]]
    assert objects[0]["center"] == (0.5, 0.75) and objects[1]["center"] == (0.75, 0.25)
    for o in objects:  # each group's word probabilities: a distribution whose most likely word is the object's
        assert [int(q.argmax()) for q in o["probs"]] == o["words"]
        assert all(abs(float(q.sum()) - 1) < 1e-5 and (q >= 0).all() for q in o["probs"])


def test_only_present_objects_carry_the_position_code(monkeypatch):
    proj = _projector(monkeypatch, [[0, 0], [1, 2], [1, 2], [1, 2]], max_objects=2, scale=0.05)
    tokens = proj(torch.zeros(1, 4, 4))[0]
    code = position_code(torch.tensor([[0.25, 0.25]]), 8, 0.05)[0]
    torch.testing.assert_close(tokens[:3], torch.tensor([0.0, 2.0, 5.0])[:, None] + code)
    torch.testing.assert_close(tokens[3:], torch.tensor([1.0, 4.0, 5.0])[:, None].expand(3, 8))


def test_the_largest_objects_fill_the_slots(monkeypatch):
    proj = _projector(monkeypatch, [[0, 0], [0, 1], [1, 2], [0, 1]], max_objects=1)  # patches 1 and 3 touch
    assert proj(torch.zeros(1, 4, 4))[0, :, 0].tolist() == [0, 3, 5]  # the 2-patch (a, y) object, not (a, x)


def test_with_pixels_the_crop_reader_names_the_objects(monkeypatch):
    proj = _projector(monkeypatch, [[0, 0], [1, 2], [1, 2], [1, 2]])
    seen = {}

    def crop_reader(crops, extents):
        seen["shape"], seen["extents"] = tuple(crops.shape), extents.tolist()
        return [torch.tensor([[-5.0, 5.0]]), torch.tensor([[-5.0, 5.0, 50.0]])]  # bg logits are never chosen

    monkeypatch.setattr(proj.crop_reader, "forward", crop_reader)
    tokens = proj(torch.zeros(1, 4, 4), torch.zeros(1, 3, 40, 40))
    assert seen["shape"] == (1, 3, CROP_SIZE, CROP_SIZE) and seen["extents"] == [[0.5, 0.5]]
    # crop reader: group 0 word 1 is background, so word 0 (a); group 1: word 1 (y) -> rows 0, 3
    assert tokens[0, :3, 0].tolist() == [0.0, 3.0, 5.0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        ObjectWordProjector(4, 8, 5, [2, 3], 2, 1, 0.0)  # 5 patches: not a square
    with pytest.raises(ValueError):
        ObjectWordProjector(4, 8, 4, [2, 3], 0, 1, 0.0)
    with pytest.raises(ValueError):
        ObjectWordProjector(4, 8, 4, [2, 3], 2, 2, 0.0)
