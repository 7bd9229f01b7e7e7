"""Synthetic segment-by-example tasks (gsva.data.incontext): deterministic, nested shots, a true ground truth."""

import numpy as np
import pytest

from gsva.data.incontext import KINDS, draw_scene, make_sequence, make_task
from gsva.data.synth import COLORS, SHAPES


def test_tasks_are_deterministic_and_shots_are_nested():
    a, b = make_task(3, 7, shots=3), make_task(3, 7, shots=3)
    one = make_task(3, 7, shots=1)
    assert a.kind == b.kind == one.kind and a.kind in KINDS
    assert (a.image == b.image).all() and (a.mask == b.mask).all() and (a.image == one.image).all()
    assert len(a.examples) == 3 and len(one.examples) == 1
    assert (a.examples[0][0] == one.examples[0][0]).all() and (a.examples[0][1] == one.examples[0][1]).all()
    assert not (a.examples[0][0].shape == a.examples[1][0].shape and (a.examples[0][0] == a.examples[1][0]).all())
    other = make_task(4, 7)
    assert not (other.image.shape == a.image.shape and (other.image == a.image).all())


def test_masks_lie_on_objects_of_the_asked_kind_and_are_never_empty():
    for index in range(12):
        task = make_task(0, index, shots=2)
        shape, color = task.kind
        assert shape in SHAPES and color in COLORS
        assert task.mask.dtype == bool and task.mask.shape == task.image.shape[:2] and task.mask.any()
        # the ground truth is painted in the kind's colour (within the generator's tint and shading)
        mean = task.image[task.mask].astype(float).mean(0)
        assert np.abs(mean - np.array(COLORS[color])).max() < 30
        for image, mask in task.examples:
            assert mask.dtype == bool and mask.shape == image.shape[:2] and mask.any()
            assert np.abs(image[mask].astype(float).mean(0) - np.array(COLORS[color])).max() < 30


def test_objects_keep_most_of_their_area_and_bad_shots_are_refused():
    import random

    rng, nrng = random.Random(1), np.random.default_rng(1)
    specs = [("circle", "red", "large"), ("square", "blue", "large"), ("star", "green", "small")]
    image, visible = draw_scene(rng, nrng, specs)
    assert image.dtype == np.uint8 and image.ndim == 3 and len(visible) == 3
    placed = [v for v in visible if v is not None]
    assert placed and all(v.any() for v in placed)
    assert all(not (a & b).any() for i, a in enumerate(placed) for b in placed[i + 1:])  # visible areas are apart
    with pytest.raises(ValueError, match="shots must be >= 1"):
        make_task(0, 0, shots=0)


def test_sequences_are_deterministic_and_follow_one_moving_object():
    a, b = make_sequence(5, 2), make_sequence(5, 2)
    assert len(a.frames) == len(a.masks) == 8 and a.kind in KINDS
    assert all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert all((x == y).all() for x, y in zip(a.masks, b.masks))
    for index in range(6):
        seq = make_sequence(5, index, frames=5)
        shape, color = seq.kind
        sizes = {f.shape for f in seq.frames}
        assert len(sizes) == 1 and all(m.shape == seq.frames[0].shape[:2] and m.dtype == bool for m in seq.masks)
        for frame, mask in zip(seq.frames, seq.masks):
            assert mask.any()
            assert np.abs(frame[mask].astype(float).mean(0) - np.array(COLORS[color])).max() < 30
        centres = [np.argwhere(m).mean(0) for m in seq.masks]
        areas = [int(m.sum()) for m in seq.masks]
        assert np.linalg.norm(centres[-1] - centres[0]) > 1 or areas[-1] != areas[0]  # it moves or scales
        assert not all((f == seq.frames[0]).all() for f in seq.frames[1:])
    with pytest.raises(ValueError, match="at least 2 frames"):
        make_sequence(0, 0, frames=1)


@pytest.mark.slow
def test_the_probe_benchmark_runs_on_the_default_and_writes_its_figures(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "incontext_probe.py"
    out = tmp_path / "probe.json"
    run = subprocess.run([sys.executable, str(script), "--tasks", "3", "--shots", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tasks"] == 3 and result["shots"] == 2
    assert set(result["miou"]) == {"sam", "patch_words", "objects"}
    assert all(0.0 <= v <= 1.0 for v in result["miou"].values())
    assert "objects: 2-shot mIoU" in run.stdout
