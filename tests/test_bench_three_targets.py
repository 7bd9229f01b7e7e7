"""benchmarks/three_targets.py: the cases it asks and a run of the script on the shipped gsva-tiny."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script(path: Path):
    """The module of a benchmark script (benchmarks/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


three_target_case = _load_script(REPO / "benchmarks" / "three_targets.py").three_target_case


def test_cases_ask_two_present_and_one_absent_expression_of_the_scene():
    from gsva.data.synth import scene_expressions

    found = 0
    for index in range(12):
        case = three_target_case(2025, index)
        if case is None:
            continue
        found += 1
        scene, asked = case
        assert sorted(bool(objects) for _, objects in asked) == [False, True, True]
        valid = dict((p, o) for p, o in scene_expressions(scene, 2025, index))
        assert all(valid[p] == o for p, o in asked)
        assert three_target_case(2025, index)[1] == asked  # deterministic
    assert found >= 6


@pytest.mark.slow
def test_the_script_reports_every_figure(tmp_path):
    out = tmp_path / "three.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "three_targets.py"), "--model",
                           str(REPO / "gsva" / "assets" / "gsva-tiny"), "--scenes", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["scenes"] == 2
    for key in ("phrase_equal", "present_mean_iou", "absent_rejected"):
        assert 0.0 <= result[key] <= 1.0
    assert result["passes_median"] >= 2 and result["question_median_s"] > 0


@pytest.mark.slow
def test_seg_placement_counts_every_question(tmp_path):
    out = tmp_path / "placement.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "seg_placement.py"), "--model",
                           str(REPO / "gsva" / "assets" / "gsva-tiny"), "--scenes", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["asked"] >= 1
    assert result["asked"] == result["rejected_or_empty"] + result["on_target"] + result["on_other"]
    if result["on_target"] + result["on_other"]:
        assert 0.0 <= result["iou_target"] <= 1.0 and 0.0 <= result["iou_best_other"] <= 1.0
