"""Released SAM checkpoints (``sam_vit_{h,l,b}_*.pth``): read safely, hyper-parameters from the tensor shapes.

The official files are plain state dicts of ``segment_anything.modeling.Sam`` (keys ``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``), read here with ``torch.load(weights_only=True)``. Everything that sets a
tensor shape is read from the shapes, so fine-tuned or custom-size SAMs in the same layout load too:

===========================  =========================================================================
``patch_size``, embed width   ``image_encoder.patch_embed.proj.weight`` (W, 3, p, p)
``img_size``                  ``image_encoder.pos_embed`` (1, S/p, S/p, W)
depth                         the number of ``image_encoder.blocks.<i>``
heads                         W / head dim, head dim = ``blocks.<i>.attn.rel_pos_h`` (2 n - 1, W / heads)
global blocks, window size    a block whose ``rel_pos_h`` spans the whole grid (n = S/p) is global; the others
                              have n = window size (``segment_anything/modeling/image_encoder.py``)
``prompt_embed_dim``          ``image_encoder.neck.0.weight`` (C, W, 1, 1)
``mask_in_chans``             ``prompt_encoder.mask_downscaling.3.weight`` (m, m/4, 2, 2)
decoder depth / MLP width     ``mask_decoder.transformer.layers.<i>``, ``...layers.0.mlp.lin1.weight`` (mlp, C)
IoU head width                ``mask_decoder.iou_prediction_head.layers.0.weight``
===========================  =========================================================================

The decoder's head count changes no shape; it is taken from the given config (8 in every release). A file whose
shapes contradict the variant it names (by ``variant`` or by its official file name) is an error.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_pickled_state_dict
from ..config import SamConfig

__all__ = ["SAM_VARIANTS", "SAM_RELEASE_FILES", "read_sam_checkpoint", "sam_config_from_state_dict", "load_sam"]

SAM_VARIANTS: dict[str, dict] = {
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
}
"""``segment_anything/build_sam.py``: the three released image encoders (all 1024 px, patch 16, window 14)."""

SAM_RELEASE_FILES = {"sam_vit_h_4b8939.pth": "vit_h", "sam_vit_l_0b3195.pth": "vit_l", "sam_vit_b_01ec64.pth": "vit_b"}


def read_sam_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a SAM state dict. Raises :class:`CheckpointError` naming the file."""
    return load_pickled_state_dict(path, "SAM checkpoint")


def _count(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if found != set(range(len(found))):
        raise ValueError(f"{prefix}<i> indices are not 0..n-1: {sorted(found)}")
    return len(found)


def sam_config_from_state_dict(state: dict[str, torch.Tensor], base: SamConfig | None = None,
                               where: str = "SAM checkpoint") -> SamConfig:
    """The :class:`SamConfig` whose ``build_sam`` matches ``state``'s shapes (``base`` supplies
    ``decoder_num_heads``). Raises :class:`CheckpointError` for a missing key or an impossible shape."""
    base = base or SamConfig()
    try:
        proj = state["image_encoder.patch_embed.proj.weight"]
        width, patch = int(proj.shape[0]), int(proj.shape[-1])
        grid = int(state["image_encoder.pos_embed"].shape[1])
        depth = _count(state, "image_encoder.blocks.")
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        if width % head_dim:
            raise ValueError(f"embedding width {width} is not a multiple of the head dim {head_dim}")
        sizes = [(int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) + 1) // 2 for i in range(depth)]
        global_idx = [i for i, n in enumerate(sizes) if n == grid]
        windows = sorted({n for n in sizes if n != grid})
        if len(windows) > 1:
            raise ValueError(f"windowed blocks disagree on the window size: {windows}")
        mlp = int(state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
        if mlp != 4 * width:
            raise ValueError(f"MLP width {mlp} is not 4 x {width} (segment_anything builds mlp_ratio 4)")
        tokens = int(state["mask_decoder.mask_tokens.weight"].shape[0])
        if tokens != 4:
            raise ValueError(f"{tokens} mask tokens; released SAMs have 3 multimask outputs + 1")
        cfg = dataclasses.replace(
            base, img_size=grid * patch, patch_size=patch, encoder_embed_dim=width, encoder_depth=depth,
            encoder_num_heads=width // head_dim, encoder_global_attn_indexes=global_idx,
            encoder_window_size=windows[0] if windows else 0,
            prompt_embed_dim=int(state["image_encoder.neck.0.weight"].shape[0]),
            decoder_depth=_count(state, "mask_decoder.transformer.layers."),
            decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
            mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        )
    except KeyError as exc:
        raise CheckpointError(f"{where}: not a SAM state dict (missing {exc.args[0]})") from None
    except (ValueError, IndexError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    cfg.validate()
    return cfg


def load_sam(path: str | Path, variant: str | None = None, base: SamConfig | None = None
             ) -> tuple[SamConfig, dict[str, torch.Tensor]]:
    """Read a SAM checkpoint and its config. ``variant`` ("vit_h"/"vit_l"/"vit_b"; default: implied by an official
    file name, else none) must agree with the shapes. Raises :class:`CheckpointError`."""
    path = Path(path)
    if variant is not None and variant not in SAM_VARIANTS:
        raise CheckpointError(f"unknown SAM variant {variant!r}; known: {', '.join(SAM_VARIANTS)}")
    state = read_sam_checkpoint(path)
    cfg = sam_config_from_state_dict(state, base, str(path))
    variant = variant or SAM_RELEASE_FILES.get(path.name)
    if variant is not None:
        wrong = [f"{k} {getattr(cfg, k)} (expected {v})" for k, v in SAM_VARIANTS[variant].items()
                 if getattr(cfg, k) != v]
        if wrong:
            raise CheckpointError(f"{path}: shapes contradict SAM {variant}: " + ", ".join(wrong))
    return cfg, state
