"""GSVA chat: upload an image, ask for any number of targets, see each mask in its own colour.

    python app/app.py [--model DIR] [--host 127.0.0.1] [--port 7860] [--dtype fp32|bf16|fp16]
                      [--load-in-8bit | --load-in-4bit]

Binds to 127.0.0.1 by default, with Gradio analytics off and no share link. Besides the chat, a scriptable
endpoint ``/segment`` (image, question -> answer text, annotated image) serves ``gradio_client``::

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("photo.jpg"), "the red cup", api_name="/segment")
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import sys
import threading
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from gsva.cli import add_quantization_flags  # noqa: E402
from gsva.images import ImageError, as_rgb_array  # noqa: E402
from gsva.inference import Answer, EncodedImage, GSVAPredictor, QuestionError  # noqa: E402
from gsva.visualize import overlay_masks  # noqa: E402


class ChatBackend:
    """Shared model + a small LRU of encoded images, so each image is encoded once per session of questions."""

    def __init__(self, predictor: GSVAPredictor, cache_size: int = 4) -> None:
        self.predictor = predictor
        self.cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()  # guards the cache
        self.model_lock = threading.Lock()  # one model call at a time (chat and /segment share the model)

    def encoded(self, image) -> EncodedImage:
        arr = as_rgb_array(image)
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
        """Answer in the conversation ``history``; model calls are serialised across the app's events."""
        with self.model_lock:
            enc = self.encoded(image)
            answer, history = self.predictor.answer(enc, history, question)
        return answer, history, enc


    def ask_stream(self, image, history: list, question: str):
        """:meth:`ask`, streamed: yields ``("text", answer text so far)`` while the answer is generated, then
        ``("done", (answer, history, encoded image))`` once its masks are decoded. Errors of the model call are
        raised here."""
        pieces: queue.Queue = queue.Queue()
        result: dict = {}

        def work() -> None:
            try:
                with self.model_lock:
                    enc = self.encoded(image)
                    answer, new_history = self.predictor.answer(enc, history, question, on_text=pieces.put)
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


def annotations(answer: Answer) -> list[tuple[np.ndarray, str]]:
    """(mask, label) pairs for ``gr.AnnotatedImage``, one per found target."""
    return [(t.mask.astype(np.float32), t.phrase or f"[SEG] {k}")
            for k, t in enumerate(t for t in answer.targets if t.status == "seg" and t.mask is not None)]


def build_demo(backend: ChatBackend):
    """The Gradio Blocks app (nothing is launched here)."""
    import gradio as gr

    def on_ask(image, question, chat, history):
        if image is None:
            raise gr.Error("Upload an image first.")
        chat = list(chat or []) + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        try:
            for kind, value in backend.ask_stream(image, history or [], question):
                if kind == "text":  # the answer streams in; the masks come with the last update
                    chat[-1] = {"role": "assistant", "content": value}
                    yield chat, gr.skip(), gr.skip(), gr.skip()
                else:
                    answer, history, enc = value
        except (ImageError, QuestionError) as exc:
            raise gr.Error(str(exc)) from None
        chat[-1] = {"role": "assistant", "content": describe(answer)}
        yield chat, (enc.image, annotations(answer)), "", history

    def on_new_image(_image):
        return [], None, []

    def segment(image, question):
        if image is None:
            raise gr.Error("an image is required")
        try:
            answer, _, enc = backend.ask(image, [], question)
        except (ImageError, QuestionError) as exc:
            raise gr.Error(str(exc)) from None
        return describe(answer), overlay_masks(enc.image, answer)

    with gr.Blocks(title="GSVA chat", analytics_enabled=False) as demo:
        gr.Markdown("## GSVA — ask for several targets at once; absent ones are rejected with `[REJ]`")
        history = gr.State([])
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", label="Image", sources=["upload", "clipboard"])
                question = gr.Textbox(label="Question", placeholder="What are the red circle, the blue star in this "
                                                                    "image?")
                with gr.Row():
                    send = gr.Button("Ask", variant="primary")
                    clear = gr.Button("New conversation")
            with gr.Column():
                result = gr.AnnotatedImage(label="Masks")
                chat = gr.Chatbot(label="Conversation", height=320)
        send.click(on_ask, [image, question, chat, history], [chat, result, question, history], api_name=False)
        question.submit(on_ask, [image, question, chat, history], [chat, result, question, history], api_name=False)
        image.change(on_new_image, [image], [chat, result, history], api_name=False)
        clear.click(lambda: ([], None, []), None, [chat, result, history], api_name=False)
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
    args = parser.parse_args(argv)
    import torch

    from gsva.errors import USER_ERRORS

    try:
        quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
        predictor = GSVAPredictor.from_pretrained(
            args.model, dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype]),
            quantization=quantization)
    except USER_ERRORS as exc:  # a bad checkpoint, bitsandbytes missing for 8/4-bit, an unreadable file
        sys.stderr.write(f"error: {exc}\n")
        return 2
    demo = build_demo(ChatBackend(predictor))
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                   show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
