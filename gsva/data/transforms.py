"""Image transforms for SAM and CLIP, written from their definitions (no torchvision).

SAM (segment_anything ``utils/transforms.py`` ResizeLongestSide + ``Sam.preprocess``/``postprocess_masks``):

* resize so the longest side is ``img_size``; new side = ``int(side * scale + 0.5)``; bilinear on a PIL image;
* normalise on the 0-255 scale with ``SAM_PIXEL_MEAN``/``SAM_PIXEL_STD``; zero-pad right/bottom to a square;
* masks: low-res logits -> bilinear (align_corners=False) to ``img_size`` -> crop the resized area -> bilinear to the
  original size.

CLIP (``CLIPImageProcessor``): ``center_crop`` mode resizes the shortest side to ``size`` (bicubic) and takes the
centred ``size`` x ``size`` crop; ``resize`` mode squashes the image to ``size`` x ``size``. Both normalise on the
0-1 scale with the CLIP mean/std.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..constants import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, SAM_PIXEL_MEAN, SAM_PIXEL_STD

__all__ = ["sam_resized_size", "sam_preprocess", "sam_postprocess", "clip_preprocess"]


def sam_resized_size(height: int, width: int, img_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``img_size`` (ResizeLongestSide.get_preprocess_shape)."""
    scale = img_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def sam_preprocess(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 image (H, W, 3) -> (SAM input (3, S, S) float32 normalised, (h', w') resized size), S = img_size."""
    h, w = image.shape[:2]
    new_h, new_w = sam_resized_size(h, w, img_size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(resized).permute(2, 0, 1)
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, img_size - new_w, 0, img_size - new_h))
    return x.contiguous(), (new_h, new_w)


def sam_postprocess(low_res_logits: torch.Tensor, img_size: int, resized_hw: tuple[int, int],
                    original_hw: tuple[int, int]) -> torch.Tensor:
    """Mask logits (N, 1, h, w) at SAM's low resolution -> logits (N, H, W) float32 at the original size."""
    x = F.interpolate(low_res_logits.float(), (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    x = F.interpolate(x, tuple(original_hw), mode="bilinear", align_corners=False)
    return x[:, 0]


def clip_preprocess(image: np.ndarray, size: int, mode: str = "center_crop") -> torch.Tensor:
    """RGB uint8 image (H, W, 3) -> CLIP pixel values (3, size, size) float32, normalised."""
    pil = Image.fromarray(image)
    w, h = pil.size
    if mode == "center_crop":
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
        top, left = (new_h - size) // 2, (new_w - size) // 2  # as transformers' center_crop
        pil = pil.crop((left, top, left + size, top + size))
    elif mode == "resize":
        pil = pil.resize((size, size), Image.BICUBIC)
    else:
        raise ValueError(f"unknown CLIP preprocessing mode {mode!r}")
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()
