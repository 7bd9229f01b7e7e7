"""GSVA chat: upload an image (or click an example), ask for any number of targets, see each mask in its own colour.

    python app/app.py [--model DIR] [--host 127.0.0.1] [--port 7860] [--dtype fp32|bf16|fp16]
                      [--load-in-8bit | --load-in-4bit] [--max-upload-mb 20] [--max-megapixels 16]
                      [--time-limit 60] [--queue-size 16]

Binds to 127.0.0.1 by default, with Gradio analytics off and no share link. The answer streams in; the masks, a
legend (phrase, found / not in the image, P([SEG])) and the downloads (each mask as a 0/255 PNG at the image's size,
and ``result.json`` with COCO RLE masks, the schema of ``gsva predict``: :mod:`gsva.answer_files`) follow when it is
complete. Under the masks, "Refine a mask" takes clicks on the masks image for a chosen target (or a new object):
positive or negative points, or a box from two corner clicks, each one a round of
:meth:`gsva.inference.GSVAPredictor.refine` (issue #15); the overlay, legend and downloads follow, and "Undo last
click" takes the newest round back. One model call runs at a time; further requests wait in a queue of
``--queue-size``. Besides the chat, a
scriptable endpoint ``/segment`` (image, question -> answer text, annotated image) serves ``gradio_client``::

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("photo.jpg"), "the red cup", api_name="/segment")
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from gsva.answer_files import write_answer, write_segment_like  # noqa: E402
from gsva.cli import add_quantization_flags  # noqa: E402
from gsva.errors import UserError  # noqa: E402
from gsva.images import as_rgb_array, load_image  # noqa: E402
from gsva.inference import (MAX_QUESTION_CHARS, Answer, EncodedImage, GSVAPredictor, Target,  # noqa: E402
                            default_model_dir)
from gsva.visualize import draw_clicks, found_colors, overlay_masks  # noqa: E402

EXAMPLES_DIR = default_model_dir().parent / "examples"  # shipped with the package (app/make_examples.py)


class TimeLimitError(UserError):
    """The answer took longer than the app's per-request time limit."""


class ChatBackend:
    """The shared model, a small LRU of encoded images (each image is encoded once for all questions about it),
    the per-request limits, and the folders of the answers' downloads.

    ``max_pixels``: images above it are refused (:class:`gsva.images.ImageError`). ``time_limit_s``: an answer
    still generating after this many seconds is stopped with :class:`TimeLimitError` (checked after every forward
    pass; None: no limit). ``keep_answers``: how many answers' download folders are kept on disk.
    """

    def __init__(self, predictor: GSVAPredictor, cache_size: int = 4, max_pixels: int = 16_000_000,
                 time_limit_s: float | None = 60.0, keep_answers: int = 64) -> None:
        self.predictor = predictor
        self.cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self.cache_size = cache_size
        self.max_pixels = max_pixels
        self.time_limit_s = time_limit_s
        self.lock = threading.Lock()  # guards the cache
        self.model_lock = threading.Lock()  # one model call at a time (chat and /segment share the model)
        self.downloads_root = Path(tempfile.mkdtemp(prefix="gsva_app_"))
        self.downloads: deque[Path] = deque()
        self.keep_answers = keep_answers

    def image_array(self, image) -> np.ndarray:
        """An uploaded image (a file path, as the app's image box gives it, or an array) as RGB uint8 (H, W, 3).
        Raises :class:`gsva.images.ImageError`."""
        if isinstance(image, (str, Path)):
            return load_image(image, max_pixels=self.max_pixels)
        return as_rgb_array(image, max_pixels=self.max_pixels)

    def encoded(self, image) -> EncodedImage:
        arr = self.image_array(image)
        key = hashlib.sha1(arr.tobytes()).hexdigest() + str(arr.shape)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        enc = self.predictor.encode_image(arr)
        with self.lock:
            self.cache[key] = enc
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return enc

    def ask(self, image, history: list, question: str) -> tuple[Answer, list, EncodedImage]:
        """:meth:`ask_stream` without the stream: (answer, history with this turn, encoded image)."""
        for _kind, value in self.ask_stream(image, history, question):
            pass
        return value

    def _deadline(self):
        """An ``on_text`` callback that stops the answer once the time limit has passed (None: no limit)."""
        if self.time_limit_s is None:
            return None
        start = time.monotonic()

        def check(_text: str) -> None:
            if time.monotonic() - start > self.time_limit_s:
                raise TimeLimitError(f"the answer took longer than the time limit of {self.time_limit_s:g} s")
        return check

    def ask_stream(self, image, history: list, question: str):
        """:meth:`ask`, streamed: yields ``("text", answer text so far)`` while the answer is generated, then
        ``("done", (answer, history, encoded image))`` once its masks are decoded. Errors of the model call
        (:class:`gsva.images.ImageError`, :class:`gsva.inference.QuestionError`, :class:`TimeLimitError`, bugs) are
        raised here; the conversation ``history`` given is never changed."""
        pieces: queue.Queue = queue.Queue()
        result: dict = {}
        deadline = self._deadline()

        def on_text(text: str) -> None:
            if deadline is not None:
                deadline(text)
            pieces.put(text)

        def work() -> None:
            try:
                with self.model_lock:
                    enc = self.encoded(image)
                    answer, new_history = self.predictor.answer(enc, history, question, on_text=on_text)
                result["done"] = (answer, new_history, enc)
            except BaseException as exc:  # handed to the caller's thread
                result["error"] = exc
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        while (text := pieces.get()) is not None:
            yield "text", text
        if "error" in result:
            raise result["error"]
        yield "done", result["done"]

    def refine(self, enc: EncodedImage, target: Target | None, point=None, label: int = 1, box=None) -> Target:
        """:meth:`gsva.inference.GSVAPredictor.refine` of ``target`` (None: start from nothing) with one click
        ``point`` (x, y) pixels of label 1 (positive) or 0 (negative), or a ``box`` (x0, y0, x1, y1) pixels, under
        the model lock. Raises :class:`gsva.inference.InputError` for clicks outside the image."""
        with self.model_lock:
            if box is not None:
                return self.predictor.refine(target, box=box, encoded=enc)
            return self.predictor.refine(target, points=[point], point_labels=[label], encoded=enc)

    def segment_like(self, example, example_mask, target) -> tuple[np.ndarray, object]:
        """Segment by example in the app: ``example`` and ``target`` images as :meth:`image_array` takes them,
        ``example_mask`` a mask image (path or array; white or opaque = the object, :func:`gsva.images.load_mask`).
        Returns (the target as RGB uint8, :class:`gsva.incontext.SegmentLikeResult`), under the model lock. Raises
        :class:`gsva.errors.UserError` subclasses for bad images or masks."""
        example_arr, target_arr = self.image_array(example), self.image_array(target)
        mask = example_mask if isinstance(example_mask, np.ndarray) else str(example_mask)
        with self.model_lock:
            return target_arr, self.predictor.segment_like([(example_arr, mask)], target_arr)

    def save_like_downloads(self, image: np.ndarray, result) -> list[str]:
        """Write a segment-by-example result's files (:func:`gsva.answer_files.write_segment_like`) to a new
        folder; returns ``result.json`` and, when the mask is not empty, ``mask.png``."""
        folder = Path(tempfile.mkdtemp(dir=self.downloads_root, prefix="like_"))
        record = write_segment_like(image, result, folder)
        with self.lock:
            self.downloads.append(folder)
            while len(self.downloads) > self.keep_answers:
                shutil.rmtree(self.downloads.popleft(), ignore_errors=True)
        return [str(folder / "result.json")] + ([str(folder / "mask.png")] if record["mask"] else [])

    def save_downloads(self, image: np.ndarray, answer: Answer) -> list[str]:
        """Write the answer's files (:func:`gsva.answer_files.write_answer`) to a new folder; returns the paths to
        offer for download: ``result.json``, then ``mask_<k>.png`` per found target. Only the newest
        ``keep_answers`` folders are kept."""
        folder = Path(tempfile.mkdtemp(dir=self.downloads_root, prefix="answer_"))
        record = write_answer(image, answer, folder)
        with self.lock:
            self.downloads.append(folder)
            while len(self.downloads) > self.keep_answers:
                shutil.rmtree(self.downloads.popleft(), ignore_errors=True)
        return [str(folder / "result.json")] + [str(folder / t["mask"]) for t in record["targets"] if t["mask"]]


DISPLAY_PIXELS = 360  # the masks' image box height; smaller images are shown enlarged to it


def display_size(height: int, width: int, box: int = DISPLAY_PIXELS) -> tuple[int, int]:
    """(height, width) in pixels an image is shown at: enlarged so that its longer side is ``box`` pixels when it
    is smaller, else as it is. Gradio's image box never enlarges an image itself and reports a click in the shown
    image's pixels, so the app enlarges small images and maps clicks back (:func:`to_image_pixels`)."""
    longer = max(height, width, 1)
    if longer >= box:
        return height, width
    return max(1, round(height * box / longer)), max(1, round(width * box / longer))


def enlarge(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the :func:`display_size` of it, nearest neighbour (no blur)."""
    h, w = display_size(*image.shape[:2])
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.NEAREST))


def to_image_pixels(index, height: int, width: int) -> tuple[float, float]:
    """A click on the shown image (gradio's ``SelectData.index``: integer (x, y) pixel of the enlarged image) ->
    (x, y) in pixels of the original ``height`` x ``width`` image, the centre of the clicked pixel."""
    shown_h, shown_w = display_size(height, width)
    return (float(index[0]) + 0.5) * width / shown_w, (float(index[1]) + 0.5) * height / shown_h


NEW_OBJECT = "a new object (from clicks only)"
CLICK_MODES = ("positive click", "negative click", "box (click two corners)")
CLICKED_PHRASE = "object from clicks"


@dataclass
class RefineSession:
    """The click refinement of one answer in the app (issue #15).

    ``answer`` as the model gave it; ``rounds[k]`` the refined versions of target k, newest last (each a
    :class:`gsva.inference.Target` whose ``refine_state`` holds all its clicks so far, so undo is dropping the
    newest); key ``len(answer.targets)`` is a new object started from clicks. ``selected`` the target clicks go to;
    ``corner`` the first corner (x, y) of a box whose second corner is awaited. Coordinates are pixels of the
    original image, (x, y), origin top-left.
    """

    enc: EncodedImage
    answer: Answer
    rounds: dict[int, list[Target]] = field(default_factory=dict)
    selected: int | None = None
    corner: tuple[float, float] | None = None

    @property
    def new_index(self) -> int:
        return len(self.answer.targets)

    def choices(self) -> list[tuple[str, int]]:
        """(label, target index) of what can be refined: each found target of the answer, then a new object."""
        found = [(f"{k + 1}: {t.phrase or '[SEG]'}", k) for k, t in enumerate(self.answer.targets)
                 if t.status == "seg" and t.refine_state is not None]
        return found + [(NEW_OBJECT, self.new_index)]

    def latest(self, k: int) -> Target | None:
        """Target k as refined so far (None: a new object without a click yet)."""
        if self.rounds.get(k):
            return self.rounds[k][-1]
        return self.answer.targets[k] if k < self.new_index else None

    def current(self) -> Answer:
        """The answer with every refined target in its latest version; a new object comes last, phrase
        "object from clicks". The overlay, legend and downloads show this."""
        targets = [self.latest(k) for k in range(self.new_index)]
        if self.rounds.get(self.new_index):
            targets.append(replace(self.rounds[self.new_index][-1], phrase=CLICKED_PHRASE))
        return Answer(text=self.answer.text, targets=targets)

    def click(self, backend: ChatBackend, x: float, y: float, mode: str) -> None:
        """One click at (x, y) on the selected target: a positive or negative point, or a box corner (the second
        corner refines with the box). Raises UserError when no target is selected."""
        if self.selected is None:
            raise UserError("choose the target to refine first")
        if mode not in CLICK_MODES:
            raise UserError(f"unknown click mode {mode!r}")
        if mode == CLICK_MODES[2] and self.corner is None:
            self.corner = (x, y)
            return
        base = self.latest(self.selected)
        if mode == CLICK_MODES[2]:
            (ax, ay), self.corner = self.corner, None
            refined = backend.refine(self.enc, base, box=(min(ax, x), min(ay, y), max(ax, x), max(ay, y)))
        else:
            refined = backend.refine(self.enc, base, point=(x, y), label=int(mode == CLICK_MODES[0]))
        self.rounds.setdefault(self.selected, []).append(refined)

    def undo(self) -> bool:
        """Take back the selected target's last click (or a box's pending first corner). False: nothing to undo."""
        if self.corner is not None:
            self.corner = None
            return True
        if self.selected is not None and self.rounds.get(self.selected):
            self.rounds[self.selected].pop()
            return True
        return False

    def clicks(self):
        """The selected target's latest :class:`gsva.refinement.RefineState` (all its clicks and box), or None when
        it has no click yet."""
        if self.selected is None or not self.rounds.get(self.selected):
            return None
        return self.rounds[self.selected][-1].refine_state

    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8: the current masks, with the selected target's clicks, box and pending corner."""
        image = overlay_masks(self.enc.image, self.current())
        state = self.clicks()
        points, labels, box = (state.points, state.labels, state.box) if state is not None else ((), (), None)
        return draw_clicks(image, points, labels, box, self.corner)

    def status(self) -> str:
        """One line on the selected target: its clicks so far and its mask's area, in pixels."""
        if self.selected is None:
            return ""
        name = NEW_OBJECT if self.selected == self.new_index else (self.answer.targets[self.selected].phrase
                                                                   or "[SEG]")
        target = self.latest(self.selected)
        state = self.clicks()
        pos = sum(state.labels) if state is not None else 0
        neg = len(state.labels) - pos if state is not None else 0
        box = ", a box" if state is not None and state.box is not None else ""
        area = int(target.mask.sum()) if target is not None and target.mask is not None else 0
        pending = "; box: now click the opposite corner" if self.corner is not None else ""
        return (f"Refining **{html.escape(name)}**: {pos} positive, {neg} negative click(s){box}; "
                f"mask {area} px{pending}")


def describe(answer: Answer) -> str:
    """Chat text: the model's answer plus a line listing the targets it rejected."""
    lines = [answer.text or "(no answer)"]
    found = [t.phrase or "[SEG]" for t in answer.targets if t.status == "seg"]
    missing = [t.phrase or "[REJ]" for t in answer.targets if t.status == "rej"]
    if found:
        lines.append("Found: " + "; ".join(found))
    if missing:
        lines.append("Not found in the image: " + "; ".join(missing))
    if not answer.targets:
        lines.append("(the answer contains no [SEG] or [REJ] slot)")
    return "\n".join(lines)


def legend_html(answer: Answer | None) -> str:
    """The legend: one row per target of the answer, in order: its colour in the overlay (none when not found),
    its phrase, its status, and P([SEG]) / (P([SEG]) + P([REJ])) at its slot, in percent."""
    if answer is None:
        return ""
    if not answer.targets:
        return "<p class='gsva-legend-empty'>No targets in this answer (it is answered in words).</p>"
    rows = []
    for target, color in zip(answer.targets, found_colors(answer)):
        swatch = (f"<span class='gsva-swatch' style='background: rgb{tuple(color)}'></span>" if color
                  else "<span class='gsva-swatch gsva-none'></span>")
        status = "found" if color else ("found, empty mask" if target.status == "seg" else "not in the image")
        rows.append(f"<tr data-status='{target.status}'><td>{swatch}</td><td>{html.escape(target.phrase or '')}</td>"
                    f"<td>{status}</td><td>{100 * target.score:.1f} %</td></tr>")
    return ("<table class='gsva-legend'><thead><tr><th></th><th>target</th><th>status</th><th>P([SEG])</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def model_panel(predictor: GSVAPredictor, model_dir: Path, dtype: str) -> str:
    """Markdown saying which model is loaded and what it knows (the model folder's README.md, when it has one)."""
    config = predictor.model.config
    text = config.text
    base = f"base `{text.base}`, " if getattr(text, "base", None) else ""
    where = "the default shipped with the package" if Path(model_dir).resolve() == default_model_dir() else f"`{model_dir}`"
    lines = [(f"**Model:** `{config.name}`, {where} ({dtype}); language model: {base}"
              f"{text.num_hidden_layers} layers, hidden size {text.hidden_size}; vision tower "
              f"{config.vision.num_hidden_layers} layers at {config.vision.image_size} px; "
              f"{config.num_image_tokens} image tokens.")]
    card = model_dir / "README.md"
    if card.is_file():
        body = card.read_text(encoding="utf-8").split("\n", 1)[-1].strip()  # without the card's title line
        lines.append(body)
    else:
        lines.append("This model folder has no README.md saying what it was trained on.")
    return "\n\n".join(lines)


def load_examples(folder: Path = EXAMPLES_DIR) -> list[list[str]]:
    """[image path, question] rows of the example gallery (``examples.json`` of ``app/make_examples.py``): every
    scene's first question, then every scene's second, and so on (a page of the gallery shows one kind)."""
    index = folder / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text())
    rounds = max(len(item["questions"]) for item in items)
    return [[str(folder / item["image"]), item["questions"][k]] for k in range(rounds) for item in items
            if k < len(item["questions"])]


def load_like_examples(folder: Path = EXAMPLES_DIR) -> list[list[str]]:
    """[example image, example mask, target image] rows of the "Segment by example" gallery
    (``like_examples.json`` of ``app/make_examples.py``)."""
    index = folder / "like_examples.json"
    if not index.is_file():
        return []
    return [[str(folder / item[k]) for k in ("example", "mask", "target")] for item in json.loads(index.read_text())]


def describe_like(result) -> str:
    """One line about a segment-by-example result, for the tab's status."""
    if not result.mask.any():
        return "Nothing like the example was found in the image."
    parts = len(result.prompts)
    area = int(result.mask.sum())
    return (f"Found {parts} region{'s' if parts != 1 else ''} like the example ({area} pixels, "
            f"{100 * area / result.mask.size:.1f} % of the image); match score {result.score:.2f}; "
            f"method: {result.method.replace('_', '-')}.")


CSS = """
.gsva-legend { border-collapse: collapse; width: 100%; }
.gsva-legend th, .gsva-legend td { padding: 4px 8px; text-align: left; border-bottom: 1px solid #8884; }
.gsva-swatch { display: inline-block; width: 18px; height: 18px; border-radius: 3px; vertical-align: middle; }
.gsva-none { border: 1px dashed #888; }
"""


def build_demo(backend: ChatBackend, model_info: str = "", examples: list[list[str]] | None = None,
               examples_per_page: int = 4, like_examples: list[list[str]] | None = None):
    """The Gradio Blocks app (nothing is launched here)."""
    import gradio as gr

    def on_ask(image, question, chat, history):
        if image is None:
            raise gr.Error("Upload an image first, or click an example.")
        chat = list(chat or []) + [{"role": "user", "content": question}, {"role": "assistant", "content": "…"}]
        started = False
        try:
            for kind, value in backend.ask_stream(image, history or [], question):
                if kind == "text":  # the answer streams in; the masks come with the last update
                    chat[-1] = {"role": "assistant", "content": value}
                    started = True
                    yield (chat,) + (gr.skip(),) * 8
                else:
                    answer, history, enc = value
        except UserError as exc:  # a bad image or question, or the time limit: the conversation stays as it was
            if started:  # the partial answer is marked as stopped; it is not part of the conversation
                chat[-1] = {"role": "assistant", "content": f"{chat[-1]['content']} … (stopped: {exc})"}
                yield (chat,) + (gr.skip(),) * 8
            raise gr.Error(str(exc)) from None
        chat[-1] = {"role": "assistant", "content": describe(answer)}
        files = backend.save_downloads(enc.image, answer)
        session = RefineSession(enc, answer)
        choices = session.choices()
        session.selected = choices[0][1]
        shown = enlarge(overlay_masks(enc.image, answer))
        yield (chat, shown, legend_html(answer), files, "", history, session,
               gr.update(choices=choices, value=session.selected), session.status())

    def refined_view(session: RefineSession):
        answer = session.current()
        shown = enlarge(session.overlay())
        return shown, legend_html(answer), backend.save_downloads(session.enc.image, answer), session, session.status()

    def on_click(session, mode, evt: gr.SelectData):
        if session is None:
            raise gr.Error("Ask about the image first: clicks refine the masks of an answer.")
        x, y = to_image_pixels(evt.index, *session.enc.image.shape[:2])
        try:
            session.click(backend, x, y, mode)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return refined_view(session)

    # gradio finds the SelectData argument by its annotation; postponed annotations are strings, and ``gr`` is
    # not a module global here
    on_click.__annotations__["evt"] = gr.SelectData

    def on_select_target(session, k):
        if session is None or k is None:
            return gr.skip(), gr.skip(), gr.skip(), session, ""
        session.selected, session.corner = int(k), None
        return refined_view(session)

    def on_undo(session):
        if session is None or not session.undo():
            gr.Info("No click to undo.")
            return (gr.skip(),) * 3 + (session, session.status() if session else "")
        return refined_view(session)

    def on_segment_like(example, example_mask, target):
        if example is None or example_mask is None or target is None:
            raise gr.Error("Give an example image, its mask (white = the object) and the image to segment, or "
                           "click an example row.")
        try:
            image, result = backend.segment_like(example, example_mask, target)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        shown = Answer(text="", targets=[Target(phrase="like the example", status="seg" if result.mask.any()
                                                else "rej", score=result.score, mask=result.mask)])
        return enlarge(overlay_masks(image, shown)), describe_like(result), backend.save_like_downloads(image, result)

    def segment(image, question):
        if image is None:
            raise gr.Error("an image is required")
        try:
            answer, _, enc = backend.ask(image, [], question)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return describe(answer), overlay_masks(enc.image, answer)

    # chat, overlay, legend, downloads, history, refinement, refine target, refine status
    new_conversation = ([], None, "", None, [], None, gr.update(choices=[], value=None), "")
    with gr.Blocks(title="GSVA chat", analytics_enabled=False) as demo:
        gr.Markdown("## GSVA chat — name several targets at once; each comes back as a mask (`[SEG]`) or is "
                    "rejected (`[REJ]`)")
        history = gr.State([])
        if model_info:
            with gr.Accordion("About the model", open=True):
                gr.Markdown(model_info, elem_id="gsva-model")
        with gr.Tab("Chat", elem_id="gsva-chat-tab"):
            with gr.Row():
                with gr.Column():
                    # the uploaded file as it is (image_mode None): gsva.images.load_image decodes it under our limits
                    image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"],
                                     height=360, elem_id="gsva-image")
                    question = gr.Textbox(label="Question", max_length=MAX_QUESTION_CHARS, elem_id="gsva-question",
                                          placeholder="What are the red circle, the blue star in this image?")
                    with gr.Row():
                        send = gr.Button("Ask", variant="primary", elem_id="gsva-ask")
                        clear = gr.Button("New conversation", elem_id="gsva-new")
                    if examples:
                        gr.Examples(examples, [image, question], label="Examples: click one, then Ask",
                                    examples_per_page=examples_per_page, elem_id="gsva-examples")
                with gr.Column():
                    result = gr.Image(type="numpy", label="Masks (click to refine)", interactive=False, format="png",
                                      height=DISPLAY_PIXELS, elem_id="gsva-overlay")
                    legend = gr.HTML(elem_id="gsva-legend")
                    with gr.Accordion("Refine a mask: choose a target, then click on the masks above", open=True):
                        with gr.Row():
                            refine_target = gr.Dropdown(choices=[], label="Target to refine", interactive=True,
                                                        elem_id="gsva-refine-target")
                            click_mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click adds",
                                                  elem_id="gsva-click-mode")
                        with gr.Row():
                            undo = gr.Button("Undo last click", elem_id="gsva-undo")
                            refine_status = gr.Markdown(elem_id="gsva-refine-status")
                    chat = gr.Chatbot(label="Conversation", height=300, elem_id="gsva-chat")
                    downloads = gr.File(label="Downloads: result.json (COCO RLE masks) and one PNG per mask",
                                        file_count="multiple", interactive=False, elem_id="gsva-downloads")
            limit = f"{backend.time_limit_s:g} s per answer, " if backend.time_limit_s else ""
            gr.Markdown(f"Limits: images up to {backend.max_pixels / 1e6:g} MP, questions up to {MAX_QUESTION_CHARS} "
                        f"characters, {limit}one answer at a time (others wait in the queue). A new image starts a new "
                        "conversation.")
        with gr.Tab("Segment by example", elem_id="gsva-like-tab"):
            gr.Markdown("Give one example image and a mask of an object in it (white or opaque = the object); "
                        "the app segments the things like it in another image (colour and shape, as the tower "
                        "reads them). More examples: `gsva segment-like` or `GSVAPredictor.segment_like`.")
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        like_example = gr.Image(type="filepath", image_mode=None, label="Example image",
                                                sources=["upload", "clipboard"], height=220,
                                                elem_id="gsva-like-example")
                        like_mask = gr.Image(type="filepath", image_mode=None, label="Its mask (white = the object)",
                                             sources=["upload", "clipboard"], height=220, elem_id="gsva-like-mask")
                    like_target = gr.Image(type="filepath", image_mode=None, label="Image to segment",
                                           sources=["upload", "clipboard"], height=260, elem_id="gsva-like-target")
                    like_button = gr.Button("Segment like the example", variant="primary", elem_id="gsva-like-run")
                    if like_examples:
                        gr.Examples(like_examples, [like_example, like_mask, like_target],
                                    label="Examples: click one, then Segment", elem_id="gsva-like-examples")
                with gr.Column():
                    like_result = gr.Image(type="numpy", label="Things like the example", interactive=False,
                                           format="png", height=DISPLAY_PIXELS, elem_id="gsva-like-overlay")
                    like_status = gr.Markdown(elem_id="gsva-like-status")
                    like_downloads = gr.File(label="Downloads: result.json (COCO RLE mask) and mask.png",
                                             file_count="multiple", interactive=False, elem_id="gsva-like-downloads")
            like_button.click(on_segment_like, [like_example, like_mask, like_target],
                              [like_result, like_status, like_downloads], api_name=False)
        refinement = gr.State(None)
        outputs = [chat, result, legend, downloads, question, history, refinement, refine_target, refine_status]
        send.click(on_ask, [image, question, chat, history], outputs, api_name=False)
        question.submit(on_ask, [image, question, chat, history], outputs, api_name=False)
        reset = [chat, result, legend, downloads, history, refinement, refine_target, refine_status]
        image.change(lambda _image: new_conversation, [image], reset, api_name=False)
        clear.click(lambda: new_conversation, None, reset, api_name=False)
        refined = [result, legend, downloads, refinement, refine_status]
        result.select(on_click, [refinement, click_mode], refined, api_name=False)
        refine_target.input(on_select_target, [refinement, refine_target], refined, api_name=False)
        undo.click(on_undo, [refinement], refined, api_name=False)
        # scriptable endpoint: gradio_client ... api_name="/segment"
        api_image = gr.Image(type="numpy", visible=False)
        api_question = gr.Textbox(visible=False)
        api_text = gr.Textbox(visible=False)
        api_overlay = gr.Image(type="numpy", visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(segment, [api_image, api_question], [api_text, api_overlay], api_name="segment")
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: the shipped gsva-smol)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="fp16 only where the device supports it (CUDA)")
    add_quantization_flags(parser)
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MB")
    parser.add_argument("--max-megapixels", type=float, default=16.0, help="largest image accepted, in megapixels")
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="seconds an answer may take before it is stopped (0: no limit)")
    parser.add_argument("--queue-size", type=int, default=16, help="requests that may wait for the model")
    args = parser.parse_args(argv)
    import torch

    from gsva.errors import USER_ERRORS

    for name in ("max_upload_mb", "max_megapixels", "queue_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")  # exits 2
    if args.time_limit < 0:
        parser.error("--time-limit must be 0 or more")
    try:
        quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
        predictor = GSVAPredictor.from_pretrained(
            args.model, dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype]),
            quantization=quantization)
    except USER_ERRORS as exc:  # a bad checkpoint, bitsandbytes missing for 8/4-bit, an unreadable file
        sys.stderr.write(f"error: {exc}\n")
        return 2
    backend = ChatBackend(predictor, max_pixels=int(args.max_megapixels * 1e6),
                          time_limit_s=args.time_limit or None)
    demo = build_demo(backend, model_panel(predictor, args.model or default_model_dir(), args.dtype),
                      load_examples(), like_examples=load_like_examples())
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size).launch(
        server_name=args.host, server_port=args.port, share=False, show_error=True,
        max_file_size=f"{args.max_upload_mb:g}mb", css=CSS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
