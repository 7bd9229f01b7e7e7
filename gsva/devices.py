"""Where training runs: the recipe key ``device`` ("auto", "cpu", "cuda" or "cuda:N") and the autocast that goes
with it.

``auto`` takes the first CUDA device when torch sees one, else the CPU. Autocast follows the device's type
(``torch.autocast("cuda", ...)`` on a GPU, ``"cpu"`` on the CPU); ``precision: fp32`` runs without autocast.
Under DeepSpeed the engine places the model on its own accelerator (``LOCAL_RANK``), so these helpers serve the
plain-PyTorch path.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DEVICE_CHOICES", "check_device_name", "resolve_device", "autocast_for", "to_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Accepted values of a recipe's ``device`` (plus ``cuda:N`` for a given GPU)."""


def check_device_name(name: str) -> str:
    """Return ``name`` if it is one of :data:`DEVICE_CHOICES` or ``cuda:N``; else raise
    :class:`gsva.config.ConfigError`. Does not look at the hardware (a recipe is valid on any machine)."""
    from .config import ConfigError

    if isinstance(name, str) and (name in DEVICE_CHOICES or (name.startswith("cuda:") and name[5:].isdigit())):
        return name
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


def resolve_device(name: str) -> torch.device:
    """The torch device a recipe's ``device`` names on this machine.

    Raises :class:`gsva.config.ConfigError` when a CUDA device is asked for and torch sees none (or not that one).
    """
    from .config import ConfigError

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: torch sees no CUDA device here (torch {torch.__version__}); "
                              "use device: auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def autocast_for(device: torch.device, precision: str):
    """The forward pass's precision context: bf16 autocast for ``device``'s type when ``precision`` is "bf16",
    else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch, device: torch.device):
    """``batch`` with every tensor in it (directly, or inside tuples and lists) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch
