"""decode_image: the card's RGB conversion for every mode, EXIF orientation, one typed error per bad input."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from internvl_batch.media.decode import DecodeConfig, decode_image
from internvl_batch.media.errors import DecodeError, EmptyMedia, NotAnImage, TooLarge, TruncatedImage

CFG = DecodeConfig()


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def card_rgb(data: bytes) -> np.ndarray:
    """What the model card's load_image does before tiling: Image.open(...).convert('RGB')."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: opens lazily, never decodes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


# -- every mode converts exactly as the card does -------------------------------------------------


def _mode_cases(rgb: Image.Image) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    shape = (rgb.height, rgb.width)
    with_transparency = rgb.convert("P")
    with_transparency.info["transparency"] = 3
    return {
        "L/PNG": encode(rgb.convert("L"), "PNG"),
        "LA/PNG": encode(rgb.convert("LA"), "PNG"),
        "P/PNG": encode(rgb.convert("P"), "PNG"),
        "P+tRNS/PNG": encode(with_transparency, "PNG"),
        "P/GIF": encode(rgb.convert("P"), "GIF"),
        "RGBA/PNG": encode(rgb.convert("RGBA"), "PNG"),
        "CMYK/JPEG": encode(rgb.convert("CMYK"), "JPEG"),
        "CMYK/TIFF": encode(rgb.convert("CMYK"), "TIFF"),
        "I;16/PNG": encode(
            Image.frombytes("I;16", rgb.size, rng.integers(0, 65536, shape).astype("<u2").tobytes()), "PNG"
        ),
        "I;16/TIFF": encode(
            Image.frombytes("I;16", rgb.size, rng.integers(0, 65536, shape).astype("<u2").tobytes()), "TIFF"
        ),
        "I/TIFF": encode(Image.fromarray(rng.integers(-5000, 70000, shape).astype(np.int32)), "TIFF"),
        "F/TIFF": encode(Image.fromarray(rng.normal(100, 80, shape).astype(np.float32)), "TIFF"),
        "1/PNG": encode(rgb.convert("1"), "PNG"),
        "LAB/TIFF": encode(rgb.convert("LAB"), "TIFF"),
        "YCbCr/TIFF": encode(rgb.convert("YCbCr"), "TIFF"),
        "RGB/JPEG": encode(rgb, "JPEG"),
        "RGB/WEBP": encode(rgb, "WEBP"),
        "RGB/BMP": encode(rgb, "BMP"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "L/PNG",
        "LA/PNG",
        "P/PNG",
        "P+tRNS/PNG",
        "P/GIF",
        "RGBA/PNG",
        "CMYK/JPEG",
        "CMYK/TIFF",
        "I;16/PNG",
        "I;16/TIFF",
        "I/TIFF",
        "F/TIFF",
        "1/PNG",
        "LAB/TIFF",
        "YCbCr/TIFF",
        "RGB/JPEG",
        "RGB/WEBP",
        "RGB/BMP",
    ],
)
def test_every_mode_decodes_to_the_cards_rgb(rgb, case):
    data = _mode_cases(rgb)[case]
    mode = case.split("/")[0].removesuffix("+tRNS")
    assert Image.open(io.BytesIO(data)).mode == mode  # the case tests the mode it names
    img = decode_image(data, CFG)
    assert img.mode == "RGB" and img.size == rgb.size
    np.testing.assert_array_equal(np.asarray(img), card_rgb(data))


# -- EXIF orientation ---------------------------------------------------------------------------


def _with_orientation(img: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif)


def test_exif_orientation_6_is_applied_to_a_phone_jpeg(rgb):
    data = _with_orientation(rgb, "JPEG", 6)
    img = decode_image(data, CFG)
    assert img.size == (rgb.height, rgb.width)
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise for display.
    np.testing.assert_array_equal(np.asarray(img), np.rot90(card_rgb(data), k=-1))


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientations_exactly(rgb, orientation, expected):
    data = _with_orientation(rgb, "PNG", orientation)
    np.testing.assert_array_equal(np.asarray(decode_image(data, CFG)), expected(np.asarray(rgb)))


def test_exif_orientation_is_ignored_when_disabled(rgb):
    data = _with_orientation(rgb, "JPEG", 6)
    img = decode_image(data, DecodeConfig(exif_transpose=False))
    assert img.size == rgb.size
    np.testing.assert_array_equal(np.asarray(img), card_rgb(data))


# -- one typed error per kind of bad input ------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(EmptyMedia, match="s3://b/empty.jpg: empty file") as info:
        decode_image(b"", CFG, source="s3://b/empty.jpg")
    assert info.value.status == "decode_error"


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"just some text, not a picture\n" * 20,
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
    ids=["random", "text", "svg"],
)
def test_not_an_image(data):
    with pytest.raises(NotAnImage, match="s3://b/x.jpg: not an image"):
        decode_image(data, CFG, source="s3://b/x.jpg")


def test_formats_outside_the_allowlist_are_not_images():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # Pillow alone would run Ghostscript on it
    with pytest.raises(NotAnImage):
        decode_image(eps, CFG)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated_image(rgb, fmt):
    data = encode(rgb, fmt)
    with pytest.raises(TruncatedImage, match=f"s3://b/cut: {fmt} image is truncated"):
        decode_image(data[: len(data) // 2], CFG, source="s3://b/cut")


def test_corrupt_pixel_data_is_a_decode_error(rgb):
    data = bytearray(encode(rgb, "PNG"))
    data[data.index(b"IDAT") + 20] ^= 0xFF
    with pytest.raises(DecodeError, match="broken data stream") as info:
        decode_image(bytes(data), CFG)
    assert type(info.value) is DecodeError


def test_too_many_pixels_from_a_real_image():
    img = Image.new("L", (1000, 1000))
    data = encode(img, "PNG")
    with pytest.raises(TooLarge) as info:
        decode_image(data, DecodeConfig(max_pixels=999_999), source="s3://b/big.png")
    assert str(info.value) == "s3://b/big.png: 1000x1000 = 1000000 pixels exceeds decode.max_pixels=999999"
    assert info.value.status == "too_large"
    assert decode_image(data, DecodeConfig(max_pixels=1_000_000)).size == (1000, 1000)


def test_header_over_max_pixels_is_refused_before_decoding():
    # 108 MP: over our default limit, under Pillow's own error threshold (2 * 89.5 MP).
    data = png_claiming(12_000, 9_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(TooLarge, match="12000x9000 = 108000000 pixels exceeds decode.max_pixels=100000000"):
            decode_image(data, CFG)


def test_decompression_bomb_error_is_too_large():
    with pytest.raises(TooLarge, match="decompression bomb"):
        decode_image(png_claiming(100_000, 100_000), DecodeConfig(max_pixels=10**11))


def test_decompression_bomb_warning_raised_as_error_is_too_large():
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(TooLarge, match="decompression bomb"):
            decode_image(png_claiming(12_000, 9_000), DecodeConfig(max_pixels=10**9))


def test_pil_global_limit_is_left_alone(rgb):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(TooLarge):
        decode_image(encode(rgb, "PNG"), DecodeConfig(max_pixels=10))
    assert before == Image.MAX_IMAGE_PIXELS


def test_config_rejects_typos():
    with pytest.raises(ValidationError, match="max_pixel"):
        DecodeConfig(max_pixel=10)
    with pytest.raises(ValidationError, match="NOPE"):
        DecodeConfig(formats=["png", "nope"])
    assert DecodeConfig(formats=["png"]).formats == ("PNG",)


# -- unusual but valid inputs: the card's first frame, every orientation on every mode ------------


def _frames(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(9)
    return [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "MPO"])
def test_animated_and_multi_picture_images_give_the_cards_first_frame(fmt):
    first, *rest = _frames(3)
    data = encode(first, fmt, save_all=True, append_images=rest)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    img = decode_image(data, CFG)
    assert img.size == first.size
    np.testing.assert_array_equal(np.asarray(img), card_rgb(data))


def test_48_bit_png_matches_the_card():
    from tests.support.hostile import rgb48_png

    data = rgb48_png()
    np.testing.assert_array_equal(np.asarray(decode_image(data, CFG)), card_rgb(data))


def _i16(size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(2).integers(0, 65536, (size[1], size[0])).astype("<u2")
    return Image.frombytes("I;16", size, pixels.tobytes())


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("I;16", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGB", "WEBP")])
def test_exif_orientation_applies_to_every_mode(rgb, mode, fmt):
    img = _i16(rgb.size) if mode == "I;16" else rgb.convert(mode)
    data = _with_orientation(img, fmt, 8)
    assert Image.open(io.BytesIO(data)).mode == mode
    np.testing.assert_array_equal(np.asarray(decode_image(data, CFG)), np.rot90(card_rgb(data), 1))
    np.testing.assert_array_equal(np.asarray(decode_image(data, DecodeConfig(exif_transpose=False))), card_rgb(data))


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
def test_tiff_orientation_is_applied_once(rgb, mode):
    # Pillow's TIFF reader applies the Orientation tag itself (the card's pixels are turned
    # too): decoding must not turn them a second time, whatever exif_transpose says.
    img = _i16(rgb.size) if mode == "I;16" else rgb.convert(mode)
    data = _with_orientation(img, "TIFF", 8)
    turned = np.rot90(np.asarray(img.convert("RGB")), 1)
    for cfg in (CFG, DecodeConfig(exif_transpose=False)):
        decoded = np.asarray(decode_image(data, cfg))
        np.testing.assert_array_equal(decoded, card_rgb(data))
        if mode != "I;16":  # I;16 -> RGB clips; the orientation check above is enough there
            np.testing.assert_array_equal(decoded, turned)
