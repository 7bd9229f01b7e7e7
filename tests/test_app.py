"""The Gradio app on localhost, driven through gradio_client's ``/segment`` endpoint."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from gsva.data.synth import make_scene

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "app" / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("app exited: " + proc.stdout.read())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_segment_endpoint(app_url, tmp_path):
    from gradio_client import Client, handle_file

    from .test_default_model import held_out_case

    scene, present, absent, _ = held_out_case()
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    client = Client(app_url, verbose=False)
    assert "/segment" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    text, overlay = client.predict(handle_file(str(tmp_path / "scene.png")), f"{present[0]}, {absent}",
                                   api_name="/segment")
    assert text.strip() and ("[SEG]" in text or "[REJ]" in text or "no [SEG] or [REJ]" in text)
    assert Image.open(overlay).size == (scene.width, scene.height)


@pytest.mark.slow
def test_segment_endpoint_reports_bad_input(app_url, tmp_path):
    from gradio_client import Client, handle_file

    Image.fromarray(make_scene(5, 0).image).save(tmp_path / "scene.png")
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="empty"):
        client.predict(handle_file(str(tmp_path / "scene.png")), "  ", api_name="/segment")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(Exception, match="1x1"):
        client.predict(handle_file(str(tmp_path / "one.png")), "the cup", api_name="/segment")


def test_chat_text_lists_found_and_rejected_targets():
    import importlib.util

    import numpy as np

    from gsva.inference import Answer, Target

    spec = importlib.util.spec_from_file_location("gsva_app", REPO / "app" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    answer = Answer("Sure, the dog:[SEG], the zebra:[REJ].",
                    [Target("the dog", "seg", 0.9, mask), Target("the zebra", "rej", 0.1)])
    text = app.describe(answer)
    assert text.splitlines() == ["Sure, the dog:[SEG], the zebra:[REJ].", "Found: the dog",
                                 "Not found in the image: the zebra"]
    (m, label), = app.annotations(answer)
    assert label == "the dog" and m.dtype == np.float32 and m.sum() == 1


def test_the_chat_streams_the_answer_then_gives_the_masks(micro_model, tokenizer):
    """The app's backend yields the growing answer text, then the answer whose text it ended on; an error of the
    model call reaches the caller."""
    import importlib.util

    import numpy as np

    from gsva.inference import GSVAPredictor, QuestionError

    spec = importlib.util.spec_from_file_location("gsva_app", REPO / "app" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    backend = app.ChatBackend(GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    events = list(backend.ask_stream(image, [], "the red circle"))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"text"} and len(kinds) > 2
    answer, history, enc = events[-1][1]
    assert events[-2][1] == answer.text and len(history) == 1 and enc.image.shape == (40, 56, 3)
    with pytest.raises(QuestionError):
        list(backend.ask_stream(image, [], "   "))
