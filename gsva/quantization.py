"""8-bit and 4-bit inference of the language model through bitsandbytes (``pip install '.[quant]'``).

As LISA's ``--load_in_8bit`` / ``--load_in_4bit`` (dvlab-research/LISA at 3cb2d43, ``chat.py``, ``main``: NF4 with
double quantisation, SAM kept in 16/32-bit), but applied to an already loaded, strictly checked model: every
``nn.Linear`` of the LLaMA decoder layers becomes a bitsandbytes layer — ``Linear8bitLt`` (LLM.int8(), outlier threshold
6.0, the transformers default) or ``Linear4bit`` (NF4, double quantisation, computing in the model's dtype). Embeddings,
``lm_head``, the CLIP tower, the projectors and SAM keep their precision. LoRA adapters are merged first (exact, in the
original precision). bitsandbytes 0.45+ has a CPU backend, so this runs here too; on CUDA move the model to the GPU
before quantising.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .errors import InputError

__all__ = ["QUANTIZATION_MODES", "quantize_language_model"]

logger = logging.getLogger(__name__)

QUANTIZATION_MODES = ("8bit", "4bit")


def _bnb():
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # harmless "kernels" notice on some CPUs
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise InputError("8-bit/4-bit inference needs bitsandbytes: pip install '.[quant]'") from None
    return bnb


def _quantized_linear(linear: nn.Linear, mode: str, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    bnb = _bnb()
    weight = linear.weight.data.to(torch.float32 if device.type == "cpu" else torch.float16)
    bias = None if linear.bias is None else nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    if mode == "8bit":
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                has_fp16_weights=False, threshold=6.0)
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                              compute_dtype=compute_dtype, quant_type="nf4", compress_statistics=True)
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
    if bias is not None:
        q.bias = bias
    return q.to(device)  # bitsandbytes quantises when the parameters are moved to the device


def quantize_language_model(model, mode: str) -> int:
    """Quantise the decoder layers of ``model`` (a :class:`~gsva.modeling.gsva_model.GSVAModel`, in eval use) in
    place. Returns the number of replaced Linear layers. Raises ValueError for an unknown mode and RuntimeError when
    bitsandbytes is missing."""
    if mode not in QUANTIZATION_MODES:
        raise InputError(f"quantization must be one of {QUANTIZATION_MODES}, got {mode!r}")
    _bnb()
    from .trainable import merge_lora

    if merge_lora(model):
        logger.info("merged LoRA before quantising")
    layers = model.mllm.model.language_model.layers
    device, dtype = model.device, model.dtype
    replaced = 0
    for name, module in list(layers.named_modules()):
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = layers.get_submodule(parent_name) if parent_name else layers
            setattr(parent, child, _quantized_linear(module, mode, dtype, device))
            replaced += 1
    model.quantization = mode
    return replaced
