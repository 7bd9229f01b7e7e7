"""Shared fixtures: a micro GSVA config (seconds on CPU), its tokenizer, a small synthetic dataset."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gsva.config import GSVAConfig, LoraSettings, SamConfig, TextConfig, TrainableConfig, VisionConfig  # noqa: E402


def micro_config(lora_rank: int = 0, from_scratch: bool = True) -> GSVAConfig:
    """A GSVA config small enough for unit tests (about 0.3 M parameters, 4 image tokens)."""
    return GSVAConfig(
        name="gsva-micro",
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=16, feature_layer=-1, projector_type="mlp2x_gelu",
                            preprocess="resize"),
        text=TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=400, max_position_embeddings=512),
        sam=SamConfig(img_size=64, patch_size=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                      encoder_global_attn_indexes=[1], encoder_window_size=2, prompt_embed_dim=32,
                      decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
                      mask_in_chans=4),
        lora=LoraSettings(rank=lora_rank),
        trainable=TrainableConfig.from_scratch() if from_scratch else TrainableConfig(),
        max_length=400,
    ).validate()


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A 40-image synthetic gRefCOCO dataset (seed 7)."""
    from gsva.data.synth import write_synthetic_grefcoco

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_grefcoco(root, seed=7, num_images=40)
    return root


@pytest.fixture(scope="session")
def tokenizer(synth_root):
    from gsva.data.grefcoco import GRefCOCO
    from gsva.training.model_setup import tokenizer_corpus
    from gsva.tokenizer_build import train_tokenizer

    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    return train_tokenizer(tokenizer_corpus(gref), vocab_size=400)


@pytest.fixture()
def micro_model(tokenizer):
    from gsva.modeling.gsva_model import GSVAModel
    from gsva.tokens import add_control_tokens

    torch.manual_seed(0)
    return GSVAModel(micro_config(), add_control_tokens(tokenizer), len(tokenizer))


@pytest.fixture(scope="session")
def standins_root(tmp_path_factory):
    """Tiny stand-ins of every pre-training dataset in the official layout (6 images each, 40 gRefCOCO images)."""
    from gsva.data.standins import write_paper_standins

    root = tmp_path_factory.mktemp("standins") / "data"
    write_paper_standins(root, seed=5, images=6, refer_images=40)
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """The chat app (``app/app.py`` on the shipped default) served on a free localhost port for the session."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    app = Path(__file__).resolve().parents[1] / "app" / "app.py"
    proc = subprocess.Popen([sys.executable, str(app), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
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
        raise RuntimeError("app did not start in 180 s")
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def first_like_task():
    """The generator task (:func:`gsva.data.incontext.make_task`) of the app's first segment-by-example row, as
    app/make_examples.py recorded it in gsva/assets/examples/like_examples.json."""
    import json
    from pathlib import Path

    from gsva.data.incontext import make_task

    rows = Path(__file__).resolve().parents[1] / "gsva/assets/examples/like_examples.json"
    generator = json.loads(rows.read_text())[0]["generator"]
    return make_task(generator["seed"], generator["index"])
