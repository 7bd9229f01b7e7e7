"""GSVA checkpoints: ``config.json`` + ``model.safetensors`` + tokenizer files, loaded strictly.

A checkpoint directory holds::

    config.json           GSVAConfig (architecture, LoRA, losses, trainable switches)
    model.safetensors     the complete state dict of GSVAModel (no pickle anywhere)
    tokenizer.json, tokenizer_config.json, ...   the tokenizer, control tokens included

Loading checks that every key of the model is present and no other key is, and that every shape matches; any
difference raises :class:`CheckpointError` naming the keys (the official code's ``strict=False`` silently skipped
them, LISA #56/#103/#116). Writes are atomic: files go to a temporary sibling directory that is renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, GSVAConfig
from .modeling.gsva_model import GSVAModel
from .tokens import add_control_tokens, control_token_ids

__all__ = ["CheckpointError", "save_model", "load_model", "load_tokenizer", "WEIGHTS_NAME", "CONFIG_NAME"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt or does not match its config."""


def save_model(model: GSVAModel, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` atomically (an existing directory is replaced)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.config.save(tmp / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "gsva_config": model.config.name})
        tokenizer.save_pretrained(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes the directory private; give it the usual permissions
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_tokenizer(model_dir: str | Path):
    """Load the tokenizer saved in ``model_dir`` (local files only). Raises :class:`CheckpointError`."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        control_token_ids(tokenizer)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exception on corrupt JSON
        raise CheckpointError(f"{model_dir}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    return tokenizer


def load_model(model_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[GSVAModel, object]:
    """Load ``(model, tokenizer)`` from a checkpoint directory, strictly; the model is in eval mode.

    Raises :class:`CheckpointError` if the directory, config, tokenizer or weights are missing, corrupt, or disagree.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (model_dir / name).is_file():
            raise CheckpointError(f"{model_dir} is not a GSVA checkpoint: {name} is missing")
    try:
        config = GSVAConfig.load(model_dir / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    tokenizer = load_tokenizer(model_dir)
    try:
        state = load_file(str(model_dir / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{model_dir / WEIGHTS_NAME} is corrupt or unreadable ({exc})") from None
    model = GSVAModel(config, add_control_tokens(tokenizer), len(tokenizer))
    check_state_dict(model, state, model_dir / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return model, tokenizer


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{title} keys [{len(items)}]: {', '.join(items[:8])}{more}")
        raise CheckpointError(f"{source} does not match the model in its config: " + "; ".join(parts))
