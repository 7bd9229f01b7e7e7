"""Safe image loading: every failure is an :class:`ImageError` with a message fit for a user.

Decoded images are RGB ``uint8`` arrays of shape (H, W, 3). Images above ``MAX_IMAGE_PIXELS`` are never decoded at
full size: JPEGs are decoded at a reduced scale (libjpeg DCT scaling, 1/2 .. 1/8), other formats are refused, so a
20000 x 20000 upload cannot exhaust memory.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_IMAGE_PIXELS
from .errors import UserError

__all__ = ["ImageError", "load_image", "as_rgb_array", "load_mask"]

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 2
"""Smaller images carry no segmentable content; a 1 x 1 image is refused with a clear message."""
MAX_ASPECT_RATIO = 50
"""Longer/shorter side above this is refused: the shorter side would vanish in SAM's 1024-px resize."""


class ImageError(UserError, ValueError):
    """An input image is unreadable, corrupt, empty, too small or too large."""


def load_image(source: str | Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file (path or bytes) to an RGB uint8 array (H, W, 3), EXIF orientation applied.

    Raises :class:`ImageError` for a missing/unreadable/corrupt file, a non-image, a too small image, or a non-JPEG
    image above ``max_pixels`` pixels.
    """
    name = "image" if isinstance(source, bytes) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageError(f"cannot open {name}: {exc.strerror or exc}") from None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit below, before decoding pixels
        try:
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                if img.format != "JPEG":
                    raise ImageError(f"{name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP); "
                                     f"at most {max_pixels / 1e6:.0f} MP are accepted for {img.format} images")
                # draft() picks the smallest DCT scale whose size is >= the request; asking for half the
                # admissible side guarantees the decoded image fits (when 1/8 is enough)
                scale = (max_pixels / (w * h)) ** 0.5 / 2
                img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
                logger.info("decoding %s at reduced size %s (original %dx%d)", name, img.size, w, h)
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = np.asarray(img.convert("RGB"))
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    if arr.shape[0] * arr.shape[1] > max_pixels:  # draft could only reduce by 1/8
        raise ImageError(f"{name} is too large even at 1/8 scale ({arr.shape[1]}x{arr.shape[0]})")
    return as_rgb_array(arr, name)


def as_rgb_array(image: np.ndarray | Image.Image, name: str = "image",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Validate/convert an in-memory image to RGB uint8 (H, W, 3).

    Accepts a PIL image or an array (H, W), (H, W, 1|3|4) of uint8, or float in [0, 1]. Raises :class:`ImageError`.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name} must be an image array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name} has shape {tuple(image.shape)}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.shape[0] < MIN_IMAGE_SIDE or arr.shape[1] < MIN_IMAGE_SIDE:
        raise ImageError(f"{name} is {arr.shape[1]}x{arr.shape[0]} pixels; at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed")
    if max(arr.shape[:2]) > MAX_ASPECT_RATIO * min(arr.shape[:2]):
        raise ImageError(f"{name} is {arr.shape[1]}x{arr.shape[0]} pixels; the aspect ratio exceeds "
                         f"{MAX_ASPECT_RATIO}:1")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageError(f"{name} has {arr.shape[0] * arr.shape[1] / 1e6:.0f} MP; at most {max_pixels / 1e6:.0f} MP")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            arr = (arr * 255.0 + 0.5).astype(np.uint8)
        else:
            raise ImageError(f"{name} has dtype {arr.dtype}; expected uint8, or float in [0, 1]")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def load_mask(source: str | Path | bytes | np.ndarray, hw: tuple[int, int], name: str = "mask") -> np.ndarray:
    """A binary mask for an image of ``hw`` (H, W): a file (path or bytes; PNG or any image :func:`load_image`
    reads) or an array. The foreground: where the alpha channel is > 127 when the image has one that is not
    uniformly opaque, else the grey level (ITU-R 601 luma) > 127, or > 0 for masks whose values are only 0 and 1.
    A mask of another size with the image's aspect ratio (within 1 %) is resized (nearest neighbour), as happens
    when a large JPEG is decoded at reduced size. Returns (H, W) bool. Raises :class:`ImageError` for an unreadable
    file, another aspect ratio or an empty mask."""
    if isinstance(source, np.ndarray):
        arr = source
        grey = arr.max(-1) if arr.ndim == 3 else arr
        grey = grey.astype(np.float32)
        fg = grey > (0 if grey.max() <= 1 else 127)
    else:
        label = name if isinstance(source, bytes) else f"{name} ({source})"
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, before decoding pixels
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                if img.size[0] * img.size[1] > 4 * MAX_IMAGE_PIXELS:
                    raise ImageError(f"{label} is {img.size[0]}x{img.size[1]} pixels, too large for a mask")
                img.load()
                alpha = np.asarray(img.getchannel("A")) if "A" in img.getbands() else None
                grey = np.asarray(img.convert("L"))
        except ImageError:
            raise
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{label} is not a readable mask image ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
        if alpha is not None and alpha.min() < 255:
            fg = alpha > 127
        else:
            fg = grey > (0 if grey.max() <= 1 else 127)
        name = label
    if fg.ndim != 2:
        raise ImageError(f"{name} must be a single-channel (H, W) mask, got shape {fg.shape}")
    h, w = hw
    if fg.shape != (h, w):
        mh, mw = fg.shape
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise ImageError(f"{name} is {mw}x{mh} but its image is {w}x{h}")
        fg = np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    if not fg.any():
        raise ImageError(f"{name} is empty: it must mark the object to look for")
    return fg
