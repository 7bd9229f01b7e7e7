"""The Gradio app: its ``/segment`` endpoint on localhost through gradio_client, and its backend's parts (streaming,
limits, downloads, legend, examples) on the micro model. The page itself is driven in a browser by test_browser.py."""

import json
from pathlib import Path

import pytest
from PIL import Image

from gsva.data.synth import make_scene

REPO = Path(__file__).resolve().parents[1]


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


def _app_module():
    import importlib.util

    import sys

    spec = importlib.util.spec_from_file_location("gsva_app", REPO / "app" / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules["gsva_app"] = app  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(app)
    return app


def _answer():
    import numpy as np

    from gsva.inference import Answer, Target

    mask = np.zeros((40, 56), bool)
    mask[10:20, 5:30] = True
    return Answer("Sure, the dog:[SEG], the <b>zebra</b>:[REJ].",
                  [Target("the dog", "seg", 0.9, mask), Target("the <b>zebra</b>", "rej", 0.125)])


def test_chat_text_lists_found_and_rejected_targets():
    text = _app_module().describe(_answer())
    assert text.splitlines() == ["Sure, the dog:[SEG], the <b>zebra</b>:[REJ].", "Found: the dog",
                                 "Not found in the image: the <b>zebra</b>"]


def test_legend_lists_every_target_with_its_colour_status_and_probability():
    from gsva.visualize import PALETTE

    app = _app_module()
    legend = app.legend_html(_answer())
    rows = legend.split("<tr data-status=")[1:]
    assert len(rows) == 2
    assert f"rgb{PALETTE[0]}" in rows[0] and "found" in rows[0] and "90.0 %" in rows[0]
    assert "gsva-none" in rows[1] and "not in the image" in rows[1] and "12.5 %" in rows[1]
    assert "<b>" not in legend and "&lt;b&gt;zebra" in legend  # phrases are escaped, never HTML
    assert "answered in words" in app.legend_html(type(_answer())("It is red.", []))


def test_downloads_are_the_masks_and_a_result_json_with_rle(micro_model, tokenizer):
    import numpy as np
    from pycocotools import mask as mask_utils

    from gsva.inference import GSVAPredictor

    app = _app_module()
    backend = app.ChatBackend(GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0),
                              keep_answers=2)
    answer = _answer()
    image = np.zeros((40, 56, 3), np.uint8)
    folders = []
    for _ in range(3):
        files = backend.save_downloads(image, answer)
        folders.append(Path(files[0]).parent)
    assert [Path(f).name for f in files] == ["result.json", "mask_0.png"]
    record = json.loads(Path(files[0]).read_text())
    assert record["image"] == {"height": 40, "width": 56} and record["answer"] == answer.text
    seg, rej = record["targets"]
    assert (seg["status"], seg["mask"], rej["status"], rej["mask"], rej["segmentation"]) == \
        ("seg", "mask_0.png", "rej", None, None)
    rle = dict(seg["segmentation"], counts=seg["segmentation"]["counts"].encode())
    assert (mask_utils.decode(rle).astype(bool) == answer.targets[0].mask).all()
    png = np.asarray(Image.open(files[1]))
    assert png.shape == (40, 56) and set(np.unique(png)) == {0, 255} and ((png == 255) == answer.targets[0].mask).all()
    assert not folders[0].exists() and folders[1].exists() and folders[2].exists()  # only the newest 2 are kept


def test_an_answer_over_the_time_limit_stops_with_a_clear_error(micro_model, tokenizer):
    import numpy as np

    from gsva.inference import GSVAPredictor

    app = _app_module()
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    history: list = []
    backend = app.ChatBackend(predictor, time_limit_s=0.0)
    with pytest.raises(app.TimeLimitError, match="time limit of 0 s"):
        list(backend.ask_stream(image, history, "the red circle"))
    with pytest.raises(app.TimeLimitError):
        backend.ask(image, history, "the red circle")
    assert history == []  # the conversation is as it was
    answer, new_history, _ = app.ChatBackend(predictor, time_limit_s=None).ask(image, history, "the red circle")
    assert len(new_history) == 1


def test_images_above_the_apps_pixel_limit_are_refused(micro_model, tokenizer, tmp_path):
    import numpy as np

    from gsva.images import ImageError
    from gsva.inference import GSVAPredictor

    app = _app_module()
    backend = app.ChatBackend(GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0),
                              max_pixels=1000)
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="at most"):
        backend.encoded(str(tmp_path / "big.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="not a readable image"):
        backend.encoded(str(tmp_path / "broken.png"))


def test_the_example_gallery_is_what_its_script_draws(tmp_path):
    """The shipped gallery is reproducible from app/make_examples.py, and every example names present and absent
    targets of its own scene."""
    import subprocess
    import sys

    shipped = REPO / "gsva" / "assets" / "examples"
    subprocess.run([sys.executable, str(REPO / "app" / "make_examples.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    assert (tmp_path / "examples.json").read_text() == (shipped / "examples.json").read_text()
    items = json.loads((shipped / "examples.json").read_text())
    for item in items:
        assert (Image.open(tmp_path / item["image"]).tobytes() == Image.open(shipped / item["image"]).tobytes())
    rows = _app_module().load_examples(shipped)
    assert len(rows) == sum(len(item["questions"]) for item in items) >= 8
    assert [Path(p).name for p, _ in rows[:len(items)]] == [item["image"] for item in items]
    assert all(q.startswith("What are ") for _, q in rows[:len(items)])  # the first page: multi-target questions
    like = _app_module().load_like_examples(shipped)
    assert len(like) == 2 and (tmp_path / "like_examples.json").read_text() == (shipped / "like_examples.json").read_text()
    for row in like:
        for path in row:
            assert Image.open(tmp_path / Path(path).name).tobytes() == Image.open(path).tobytes()


def test_the_model_panel_names_the_model_and_what_it_knows(micro_model, tokenizer, tmp_path):
    from gsva.inference import GSVAPredictor, default_model_dir

    app = _app_module()
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0)
    text = app.model_panel(predictor, tmp_path, "fp32")
    assert micro_model.config.name in text and "no README.md" in text
    shipped = app.model_panel(predictor, default_model_dir(), "fp32")
    assert "Does not know" in shipped and "# gsva-smol" not in shipped


@pytest.mark.slow
def test_the_chat_streams_the_answer_then_gives_the_masks(micro_model, tokenizer):
    """The app's backend yields the growing answer text, then the answer whose text it ended on; an error of the
    model call reaches the caller."""
    import numpy as np

    from gsva.inference import GSVAPredictor, QuestionError

    app = _app_module()
    backend = app.ChatBackend(GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    events = list(backend.ask_stream(image, [], "the red circle"))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"text"} and len(kinds) > 2
    answer, history, enc = events[-1][1]
    assert events[-2][1] == answer.text and len(history) == 1 and enc.image.shape == (40, 56, 3)
    with pytest.raises(QuestionError):
        list(backend.ask_stream(image, [], "   "))


def test_clicks_refine_the_selected_target_and_undo_takes_them_back(micro_model, tokenizer, tmp_path):
    """The app's refinement (issue #15): positive / negative clicks and a two-corner box on the chosen target, the
    overlay marking them, the downloads holding the refined mask, undo restoring the previous round."""
    import numpy as np

    from gsva.inference import Answer, GSVAPredictor
    from gsva.visualize import NEGATIVE_CLICK, POSITIVE_CLICK

    app = _app_module()
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=8, draft_tokens=0)
    backend = app.ChatBackend(predictor, time_limit_s=None)
    image = np.full((48, 64, 3), 90, np.uint8)
    enc = predictor.encode_image(image)
    found = predictor.refine(None, points=[(20, 20)], encoded=enc)  # a target with a decoded mask, as answers have
    found = app.replace(found, phrase="the dog")  # its click at (20, 20) carries over into every round
    answer = Answer("Sure, the dog:[SEG], the cat:[REJ].", [found, app.Target("the cat", "rej", 0.1)])
    session = app.RefineSession(enc, answer)
    assert session.choices() == [("1: the dog", 0), (app.NEW_OBJECT, 2)]  # the rejected cat has no mask to refine
    with pytest.raises(app.UserError, match="choose the target"):
        session.click(backend, 5, 5, app.CLICK_MODES[0])

    session.selected = 0
    session.click(backend, 40.5, 30.5, app.CLICK_MODES[1])  # negative
    session.click(backend, 10.5, 12.5, app.CLICK_MODES[0])  # positive
    dog = session.current().targets[0]
    assert dog.refine_state.points == ((20, 20), (40.5, 30.5), (10.5, 12.5)) and dog.refine_state.labels == (1, 0, 1)
    assert "2 positive, 1 negative" in session.status()
    overlay = session.overlay()
    assert tuple(overlay[30, 40]) == NEGATIVE_CLICK and tuple(overlay[12, 10]) == POSITIVE_CLICK
    files = backend.save_downloads(enc.image, session.current())
    png = np.asarray(Image.open(files[1])) == 255
    assert (png == dog.mask).all()

    session.click(backend, 2.5, 3.5, app.CLICK_MODES[2])  # a box's first corner: no model call yet
    assert len(session.rounds[0]) == 2 and session.corner == (2.5, 3.5) and "opposite corner" in session.status()
    session.click(backend, 30.5, 25.5, app.CLICK_MODES[2])
    assert session.corner is None and session.latest(0).refine_state.box == (2.5, 3.5, 30.5, 25.5)
    assert session.undo() and session.latest(0).refine_state.box is None
    assert session.undo() and session.latest(0).refine_state.labels == (1, 0)
    assert session.undo() and session.latest(0) is found and session.undo() is False

    session.selected = session.new_index  # a new object from clicks alone joins the answer last
    session.click(backend, 50.5, 40.5, app.CLICK_MODES[0])
    current = session.current()
    assert [t.phrase for t in current.targets] == ["the dog", "the cat", app.CLICKED_PHRASE]
    assert current.targets[2].status == "seg" and current.targets[2].mask.shape == (48, 64)
    with pytest.raises(app.UserError, match="outside"):
        session.click(backend, 99.5, 5.5, app.CLICK_MODES[0])
    assert len(session.rounds[session.new_index]) == 1  # a refused click loses nothing


def test_small_images_are_shown_enlarged_and_clicks_map_back_to_their_pixels():
    import numpy as np

    app = _app_module()
    assert app.display_size(240, 180) == (360, 270) and app.display_size(900, 1200) == (900, 1200)
    image = np.zeros((240, 180, 3), np.uint8)
    image[100, 50] = 255
    shown = app.enlarge(image)
    assert shown.shape == (360, 270, 3) and shown[150, 75].tolist() == [255, 255, 255]  # pixel (50, 100) x 1.5
    x, y = app.to_image_pixels([75, 150], 240, 180)  # the shown pixel's centre, in original pixels
    assert np.allclose((x, y), (75.5 / 1.5, 150.5 / 1.5)) and (int(x), int(y)) == (50, 100)
    assert app.to_image_pixels([10, 20], 900, 1200) == (10.5, 20.5)  # a large image is shown as it is


@pytest.mark.slow
def test_segment_by_example_in_the_app_finds_the_kind_and_offers_its_files(tmp_path, first_like_task):
    import numpy as np

    from gsva.errors import UserError
    from gsva.inference import GSVAPredictor
    from gsva.scoring.davis import region_similarity

    app = _app_module()
    backend = app.ChatBackend(GSVAPredictor.from_pretrained(None))
    example, mask, target = app.load_like_examples()[0]
    image, result = backend.segment_like(example, mask, target)
    task = first_like_task  # what app/make_examples.py drew
    assert (image == task.image).all() and region_similarity(result.mask, task.mask) > 0.5
    assert "like the example" in app.describe_like(result)
    files = backend.save_like_downloads(image, result)
    record = json.loads(Path(files[0]).read_text())
    assert record["kind"] == "segment_like" and Path(files[1]).name == "mask.png"
    assert (np.asarray(Image.open(files[1])) > 127).sum() == int(result.mask.sum())
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(blank)
    with pytest.raises(UserError, match="mask"):
        backend.segment_like(example, str(blank), target)
