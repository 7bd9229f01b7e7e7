"""GSVA checkpoints: ``config.json`` + ``model.safetensors`` + tokenizer files, loaded strictly.

A checkpoint directory holds::

    config.json           GSVAConfig (architecture, LoRA, losses, trainable switches)
    model.safetensors     the complete state dict of GSVAModel (no pickle anywhere), or, for large models,
    model-00001-of-0000N.safetensors ... + model.safetensors.index.json   the same in shards (transformers' layout:
                          the index's "weight_map" names the shard of every key)
    tokenizer.json, tokenizer_config.json, ...   the tokenizer, control tokens included

Loading checks that every key of the model is present and no other key is, and that every shape matches; any
difference raises :class:`CheckpointError` naming the keys (the official code's ``strict=False`` silently skipped
them, LISA #56/#103/#116). Writes are atomic: files go to a temporary sibling directory that is renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, GSVAConfig
from .errors import UserError
from .legacy_tokenization import SENTENCEPIECE_FILE, LegacyTokenizerError, legacy_sentencepiece_of, prepare_tokenizer
from .modeling.gsva_model import GSVAModel
from .tokens import add_control_tokens, control_token_ids

__all__ = ["CheckpointError", "save_model", "load_model", "load_tokenizer", "load_weights", "load_pickled_state_dict",
           "WEIGHTS_NAME", "INDEX_NAME", "CONFIG_NAME"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt or does not match its config."""


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split ``state`` (in key order) into groups of at most ``max_bytes`` (a larger single tensor gets its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    return shards


def save_model(model: GSVAModel, tokenizer, out_dir: str | Path, max_shard_bytes: int | None = None,
               state_dict: dict[str, torch.Tensor] | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` atomically (an existing directory is replaced).

    With ``max_shard_bytes``, weights larger than that are split into shards plus ``model.safetensors.index.json``.
    ``state_dict``: the weights to write instead of ``model.state_dict()`` (e.g. gathered from ZeRO-3 partitions;
    same keys). ``extra_files``: {file name: text} written into the directory before it appears.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.config.save(tmp / CONFIG_NAME)
        based = model.config.text.base is not None
        if based:  # only what training changed; the base comes from its own file at load time
            from .modeling.base_weights import own_state_dict

            source = own_state_dict(model, state_dict)
        else:
            source = model.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        meta = {"format": "pt", "gsva_config": model.config.name}
        shards = _shards(state, max_shard_bytes) if max_shard_bytes else [state]
        if len(shards) == 1:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata=meta)
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in state.values())
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=1) + "\n")
        if not based:  # a based model's tokenizer is the base's plus the control tokens, rebuilt at load time
            tokenizer.save_pretrained(str(tmp))
            legacy = legacy_sentencepiece_of(tokenizer)
            if legacy is not None:  # the exact file the prompts are encoded with (text.tokenization)
                shutil.copyfile(legacy.path, tmp / SENTENCEPIECE_FILE)
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
               dtype: torch.dtype = torch.float32, base_path: str | Path | None = None) -> tuple[GSVAModel, object]:
    """Load ``(model, tokenizer)`` from a checkpoint directory, strictly; the model is in eval mode.

    A config with ``text.base`` (``gsva-smol``) is built on its base model first (:mod:`gsva.base_models`; the GGUF
    at ``base_path``, default: the installed file) and the checkpoint must then hold exactly the model's own weights
    (:func:`gsva.modeling.base_weights.own_state_dict`), with the same shapes.
    Raises :class:`CheckpointError` if the directory, config, tokenizer or weights are missing, corrupt, or disagree,
    and :class:`gsva.base_models.BaseModelError` if the base file is missing or not the expected one.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist")
    if not (model_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{model_dir} is not a GSVA checkpoint: {CONFIG_NAME} is missing")
    if not (model_dir / WEIGHTS_NAME).is_file() and not (model_dir / INDEX_NAME).is_file():
        raise CheckpointError(f"{model_dir} is not a GSVA checkpoint: {WEIGHTS_NAME} is missing "
                              f"(and there is no {INDEX_NAME})")
    try:
        config = GSVAConfig.load(model_dir / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    if config.text.base is not None:
        state, source = load_weights(model_dir)
        model, tokenizer = load_based_weights(config, state, source, base_path)
        model.to(device=device, dtype=dtype).eval()
        return model, tokenizer
    tokenizer = load_tokenizer(model_dir)
    try:
        prepare_tokenizer(tokenizer, config.text.tokenization, model_dir)
    except LegacyTokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    state, source = load_weights(model_dir)
    model = GSVAModel(config, add_control_tokens(tokenizer), len(tokenizer))
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return model, tokenizer


def load_based_weights(config: GSVAConfig, state: dict[str, torch.Tensor], source: Path | str,
                       base_path: str | Path | None = None) -> tuple[GSVAModel, object]:
    """Build ``config`` on its base and copy ``state`` (exactly the own weights) in. Raises :class:`CheckpointError`."""
    from .base_models import build_based_model
    from .modeling.base_weights import ADDED_ROWS_KEY, own_state_dict

    from .base_models import BaseModelError
    from .tokens import TokenizerError

    try:
        model, tokenizer = build_based_model(config, base_path)
    except (BaseModelError, TokenizerError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build its base model: {exc}") from None
    expected = own_state_dict(model)
    _check_keys(expected, state, source)
    with torch.no_grad():
        live = model.state_dict()
        for key, value in state.items():
            target = model.mllm.get_input_embeddings().weight[config.text.vocab_size:] if key == ADDED_ROWS_KEY \
                else live[key]
            target.copy_(value)
    return model, tokenizer


def load_pickled_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A released ``.pth``/``.bin`` state dict, read with ``torch.load(weights_only=True)`` (no code runs).

    Raises :class:`CheckpointError` naming the file (and ``what`` it should be) when it is missing, unreadable,
    names anything but tensors and containers, or is not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_weights(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a checkpoint directory (single file or shards + index) and the file they are reported under.

    Raises :class:`CheckpointError` for an unreadable file, a shard the index names but that is missing, a key the
    index places in a shard that lacks it, or a shard holding keys the index does not place there.
    """
    model_dir = Path(model_dir)
    single, index_path = model_dir / WEIGHTS_NAME, model_dir / INDEX_NAME

    def read(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing (named by {index_path.name})") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is corrupt or unreadable ({exc})") from None

    if single.is_file():
        return read(single), single
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v and v.endswith(
                ".safetensors") for v in weight_map.values()):
            raise ValueError("'weight_map' must map keys to shard file names in the same directory")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a valid shard index ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = read(model_dir / shard)
        placed = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != placed:
            extra, lacking = sorted(set(tensors) - placed), sorted(placed - set(tensors))
            raise CheckpointError(f"{model_dir / shard} disagrees with {index_path.name}: "
                                  f"lacks {lacking[:8]}, holds unlisted {extra[:8]}")
        state.update(tensors)
    return state, index_path


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    _check_keys(model.state_dict(), state, source)


def _check_keys(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Path | str) -> None:
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
