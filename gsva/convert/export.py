"""Export a checkpoint as a self-contained directory: config + safetensors (sharded when large) + tokenizer, with
LoRA optionally merged into the base weights.

The official code has no working merge ("merge-lora always fails", a comment in LeapLabTHU/GSVA at 618dc79, ``main.py``,
``main``). Here each peft LoRA layer is folded into its ``nn.Linear`` (W <- W + (alpha / r) B A) and replaced by it; the
exported config says ``lora.rank = 0``, so the result loads as a plain model with the same outputs (tested).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_model, save_model
from ..errors import InputError
from ..trainable import merge_lora

__all__ = ["export_model", "parse_size", "replace_weights"]

logger = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """"5GB", "500MB", "2GiB", "1048576" -> bytes. Raises ValueError for anything else or a size below 1 byte."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise InputError(f"cannot read the size {text!r} (use e.g. 5GB, 500MB, 2GiB or a byte count)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1:
        raise InputError(f"size {text!r} is below one byte")
    return size


def replace_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Overwrite some of ``model``'s weights with those of a safetensors file (a stage's output, e.g. stage (a2)'s
    ``crop_reader.safetensors``). Every key of the file must be a key of ``model.state_dict()`` with the same shape;
    the values are cast to the model's dtype. Returns the number of tensors replaced.

    Raises :class:`CheckpointError` for an unreadable file, an empty one, an unknown key or a shape mismatch
    (nothing is changed then)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from None
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} key(s) the model does not have, e.g. {unknown[0]}")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, the model's is {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return len(state)


def export_model(model_dir: str | Path, out_dir: str | Path, merge: bool = False, max_shard_bytes: int | None = None,
                 dtype: torch.dtype | None = None, replace: list[str | Path] | None = None) -> dict:
    """Load ``model_dir`` strictly and write it to ``out_dir``. Returns a summary dict (merged layers, shards,
    replaced tensors).

    ``replace``: safetensors files whose tensors overwrite the model's (:func:`replace_weights`), in order, before
    any merge or cast.
    ``merge``: fold LoRA into the base weights (raises :class:`CheckpointError` when the model has no LoRA).
    ``dtype``: cast the weights (e.g. ``torch.bfloat16``) before writing. ``out_dir`` must differ from
    ``model_dir``.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise CheckpointError(f"export would overwrite its source {model_dir}; choose another --out")
    model, tokenizer = load_model(model_dir)
    replaced = 0
    for path in replace or []:
        replaced += replace_weights(model, path)
        logger.info("replaced the weights in %s", path)
    merged = 0
    if merge:
        if model.config.lora.rank == 0:
            raise CheckpointError(f"{model_dir} has no LoRA to merge (lora.rank is 0)")
        if model.config.text.base is not None:
            raise CheckpointError(f"{model_dir} is built on the base model {model.config.text.base}, whose layers its "
                                  "checkpoints never hold: merging LoRA into them would drop the training; export "
                                  "without --merge-lora")
        merged = merge_lora(model)
        model.config = dataclasses.replace(model.config, lora=dataclasses.replace(model.config.lora, rank=0))
        logger.info("merged %d LoRA layers", merged)
    if dtype is not None:
        model.to(dtype)
    save_model(model, tokenizer, out_dir, max_shard_bytes=max_shard_bytes)
    shards = sorted(p.name for p in out_dir.glob("model*.safetensors"))
    return {"merged_lora_layers": merged, "weight_files": shards, "out": str(out_dir), "replaced_tensors": replaced}
