"""``gsva chat``: a terminal conversation about one image (on the small shipped gsva-tiny: the command, not the
model, is under test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gsva.data.synth import make_scene
from gsva.inference import default_model_dir

TINY = default_model_dir().parent / "gsva-tiny"


@pytest.mark.slow
def test_chat_answers_each_question_writes_its_masks_and_survives_a_bad_one(tmp_path):
    Image.fromarray(make_scene(2024, 0).image).save(tmp_path / "scene.png")
    questions = "the red circle\n\n" + "x" * 3000 + "\n/new\nWhat are the blue star, the green square in this image?\n"
    proc = subprocess.run([sys.executable, "-m", "gsva.cli", "chat", "--image", str(tmp_path / "scene.png"),
                           "--model", str(TINY), "--out", str(tmp_path / "chat")], input=questions,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3000 characters" in errors[0]
    assert "(new conversation)" in proc.stdout
    turns = sorted(p.name for p in (tmp_path / "chat").iterdir())
    assert turns == ["turn_001", "turn_002"]
    for turn in turns:
        result = json.loads((tmp_path / "chat" / turn / "result.json").read_text())
        assert result["answer"] and result["answer"] in proc.stdout
        assert (tmp_path / "chat" / turn / "overlay.png").exists()
        for t in result["targets"]:
            if t["mask"]:
                assert Image.open(tmp_path / "chat" / turn / t["mask"]).size == (make_scene(2024, 0).image.shape[1],
                                                                                  make_scene(2024, 0).image.shape[0])


def test_chat_reports_a_missing_image_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gsva.cli", "chat", "--image", str(tmp_path / "none.png")],
                          input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and len(proc.stderr.splitlines()) == 1
