"""SAM and CLIP preprocessing against their definitions."""

import numpy as np
import pytest
import torch
from PIL import Image

from gsva.constants import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from gsva.data.transforms import clip_preprocess, sam_postprocess, sam_preprocess, sam_resized_size


@pytest.mark.parametrize("h,w,expected", [(480, 640, (768, 1024)), (640, 480, (1024, 768)), (333, 500, (682, 1024)),
                                          (1, 1, (1024, 1024)), (1024, 1024, (1024, 1024))])
def test_resized_size_is_int_x_scale_plus_half(h, w, expected):
    assert sam_resized_size(h, w, 1024) == expected


def test_sam_preprocess_normalises_resizes_and_pads():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    x, (nh, nw) = sam_preprocess(image, 64)
    assert (nh, nw) == (38, 64) and x.shape == (3, 64, 64)
    ref = np.asarray(Image.fromarray(image).resize((64, 38), Image.BILINEAR), np.float32)
    ref = (ref - np.array(SAM_PIXEL_MEAN)) / np.array(SAM_PIXEL_STD)
    np.testing.assert_allclose(x[:, :38, :].permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)
    assert (x[:, 38:, :] == 0).all()


def test_sam_postprocess_crops_the_padding_and_restores_size():
    # low-res logits: +5 on the left half of the valid (resized) area, -5 elsewhere, padding area +9
    low = torch.full((1, 1, 16, 16), -5.0)
    low[..., :8, :4] = 5.0  # valid area is 8 rows (32 px of 64) x 16 cols
    low[..., 8:, :] = 9.0  # padding: must be cropped away
    out = sam_postprocess(low, 64, (32, 64), (50, 100))
    assert out.shape == (1, 50, 100) and out.dtype == torch.float32
    fg = out[0] > 0
    assert fg[:, :20].float().mean() > 0.95 and fg[:, 30:].float().mean() < 0.05
    # the +9 padding is cropped away; only bilinear bleed at the last rows remains (as in SAM's postprocess_masks)
    assert not fg[:44, 60:].any() and fg[-1, 60:].all()


def test_clip_center_crop_matches_transformers():
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = proc(images=Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
    ours = clip_preprocess(image, 32, "center_crop")
    assert ours.shape == ref.shape == (3, 32, 32)
    assert (ours - ref).abs().max() < 0.05  # resampling-filter rounding differs by at most ~1 grey level


def test_clip_resize_keeps_the_whole_image():
    image = np.zeros((20, 80, 3), np.uint8)
    image[:, :4] = 255  # a white stripe at the far left survives "resize" but not "center_crop"
    assert clip_preprocess(image, 16, "resize")[:, :, 0].mean() > 1.0
    assert clip_preprocess(image, 16, "center_crop")[:, :, 0].mean() < 0
