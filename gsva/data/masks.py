"""COCO segmentation <-> binary mask conversion through pycocotools.

A COCO ``segmentation`` is a polygon list ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates, x right, y down),
an uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}``, or a compressed RLE (``counts`` a string).
Masks are ``uint8`` arrays (H, W) with values {0, 1}.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import InputError

__all__ = ["decode_segmentation", "encode_rle", "polygon_area_ok"]


def polygon_area_ok(poly: list) -> bool:
    """A polygon needs at least 3 points (6 coordinates) to cover any area (official val drops shorter ones)."""
    return isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation to a (height, width) uint8 {0, 1} mask.

    Raises ValueError for an unknown layout or an RLE whose size differs from (height, width).
    """
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if polygon_area_ok(p)]
        if not polys:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise InputError(f"RLE size {segmentation['size']} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise InputError(f"unknown segmentation layout: {type(segmentation).__name__}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 mask -> compressed COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
