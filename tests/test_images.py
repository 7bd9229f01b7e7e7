"""Bad images and questions give clear errors; huge images never decode at full size."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gsva.images import ImageError, as_rgb_array, load_image
from gsva.inference import MAX_QUESTION_CHARS, QuestionError, validate_question


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries one tiny IDAT (never decodable at that size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_corrupt_and_non_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (tmp_path / "b.png").write_text("hello")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good, "JPEG")
    (tmp_path / "c.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])  # truncated
    for name in ("a.jpg", "b.png", "c.jpg"):
        with pytest.raises(ImageError, match="not a readable image"):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="cannot open"):
        load_image(tmp_path / "missing.png")


def test_tiny_images_are_refused_with_a_reason(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match="1x1"):
        load_image(tmp_path / "one.png")


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ImageError, match="aspect ratio"):
        as_rgb_array(np.zeros((2, 20000, 3), np.uint8))


def test_huge_png_is_refused_before_decoding():
    with pytest.raises(ImageError, match="20000x20000"):
        load_image(_png_header_only(20000, 20000))


@pytest.mark.slow
def test_huge_jpeg_is_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (20000, 20000), 128).save(path, quality=50)
    image = load_image(path)
    assert image.shape[2] == 3 and image.shape[0] * image.shape[1] <= 50_000_000
    assert image.shape[0] == image.shape[1] >= 2500


def test_arrays_are_converted_or_refused():
    assert as_rgb_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_array(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_array(np.ones((4, 5, 3), np.float32)).max() == 255
    with pytest.raises(ImageError):
        as_rgb_array(np.zeros((4, 5, 3), np.int64) + 300)
    with pytest.raises(ImageError):
        as_rgb_array("not an image")


def test_questions_are_validated():
    assert validate_question("  the   red cup ") == "the red cup"
    for bad in ("", "   \n", None):
        with pytest.raises(QuestionError):
            validate_question(bad)
    with pytest.raises(QuestionError, match=str(MAX_QUESTION_CHARS)):
        validate_question("x" * 100_000)


def test_masks_load_from_white_alpha_or_zero_one_files(tmp_path):
    import io

    from gsva.images import load_mask

    truth = np.zeros((20, 30), bool)
    truth[5:12, 8:20] = True
    white = tmp_path / "white.png"
    Image.fromarray(truth.astype(np.uint8) * 255).save(white)
    ones = tmp_path / "ones.png"
    Image.fromarray(truth.astype(np.uint8)).save(ones)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200  # a uniform colour: only the alpha channel says where the object is
    rgba[..., 3] = truth * 255
    alpha = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(alpha)
    for source in (white, ones, alpha, str(white), white.read_bytes(), truth.astype(np.uint8) * 255, truth):
        assert (load_mask(source, (20, 30)) == truth).all()
    half = io.BytesIO()
    Image.fromarray(truth[::2, ::2].astype(np.uint8) * 255).save(half, format="PNG")
    assert load_mask(half.getvalue(), (20, 30)).shape == (20, 30)  # same aspect ratio: resized


def test_bad_masks_are_refused_with_a_clear_message(tmp_path):
    from gsva.images import ImageError, load_mask

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    full = np.full((20, 20), 255, np.uint8)
    for source, words in ((tmp_path / "empty.png", "empty"), (tmp_path / "junk.png", "not a readable mask"),
                          (tmp_path / "missing.png", "not a readable mask"), (full, "is 20x20 but"),
                          (np.ones((20, 30, 2, 2), np.uint8), "single-channel")):
        with pytest.raises(ImageError, match=words):
            load_mask(source, (20, 30))


def test_a_huge_mask_file_is_refused_before_decoding():
    from gsva.images import load_mask

    with pytest.raises(ImageError, match="too large for a mask"):
        load_mask(_png_header_only(30000, 30000), (20, 30))
