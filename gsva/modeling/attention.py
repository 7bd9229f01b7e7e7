"""The language model's attention: transformers' SDPA attention, except that on CPU grouped-query attention (GQA)
keeps its shared key/value heads unrepeated when a mask is given.

transformers' ``sdpa_attention_forward`` (transformers 5, ``integrations/sdpa_attention.py``) passes
``enable_gqa=True`` to ``torch.nn.functional.scaled_dot_product_attention`` only without an attention mask (its
``use_gqa_in_sdpa``: on CUDA a mask would send GQA to the slow math kernel); with a mask it copies every key/value
head ``num_key_value_groups`` times (``repeat_kv``). Batched decoding always passes a mask (padding, and the draft
columns a row rejected: :mod:`gsva.generation`), so on CPU those copies were about 14 % of a batch-32 evaluation pass
of gsva-smol (9 query heads, 3 key/value heads). PyTorch's CPU SDPA takes ``enable_gqa`` with a mask: measured here
(2026-12-03, torch 2.13, batch 32, 16 queries, 150 keys, head_dim 64) 5.3 ms instead of 16.0 ms, with equal outputs.

Use :func:`use_gsva_attention` on a transformers model; everything else (CUDA, no mask, no GQA, position biases,
paged caches) goes to transformers' own function unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["ATTENTION_NAME", "gsva_sdpa_attention_forward", "use_gsva_attention"]

ATTENTION_NAME = "gsva_sdpa"


def gsva_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of one layer; the signature of transformers' attention functions.

    Args:
        query: (B, Hq, Lq, d); key, value: (B, Hkv, Lk, d) with Hq = Hkv x ``module.num_key_value_groups``.
        attention_mask: (B, 1, Lq, Lk) additive float (0 or the dtype's minimum) or bool (True = attend), or None.
        dropout: attention dropout probability. scaling: the softmax scale (default d ** -0.5).

    Returns ((B, Lq, Hq, d) attention output, None).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("position_bias") is None and kwargs.get("cache") is None and not kwargs.get("softcap")
    if query.device.type != "cpu" or attention_mask is None or groups == 1 or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=False,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, gsva_sdpa_attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the masks transformers builds for SDPA


def use_gsva_attention(model: PreTrainedModel) -> None:
    """Switch ``model`` (and its sub-models) to :func:`gsva_sdpa_attention_forward`."""
    model.set_attn_implementation(ATTENTION_NAME)
