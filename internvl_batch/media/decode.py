"""Decode image bytes into the RGB `PIL.Image` the model card's `load_image` would produce."""

import io

from PIL import ExifTags, Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, field_validator

from internvl_batch.media.errors import DecodeError, EmptyMedia, NotAnImage, TooLarge, TruncatedImage

# Pillow's still-image readers that decode in-process, i.e. Image.OPEN minus EPS (runs
# Ghostscript on untrusted PostScript), WMF, the BUFR/GRIB/HDF5 stubs and MPEG (identify
# only). The same list vLLM accepts for multimodal inputs.
SAFE_IMAGE_FORMATS: tuple[str, ...] = (
    "AVIF",
    "BLP",
    "BMP",
    "CUR",
    "DCX",
    "DDS",
    "DIB",
    "FITS",
    "FLI",
    "FTEX",
    "GBR",
    "GIF",
    "ICNS",
    "ICO",
    "IM",
    "IMT",
    "IPTC",
    "JPEG",
    "JPEG2000",
    "MCIDAS",
    "MSP",
    "PCD",
    "PCX",
    "PIXAR",
    "PNG",
    "PPM",
    "PSD",
    "QOI",
    "SGI",
    "SPIDER",
    "SUN",
    "TGA",
    "TIFF",
    "WEBP",
    "XBM",
    "XPM",
    "XVTHUMB",
)


class DecodeConfig(BaseModel):
    """How image bytes are decoded."""

    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(
        100_000_000,
        gt=0,
        description="Largest width*height decoded, checked from the header before any pixel is decoded "
        "(decompression bombs give status too_large). Pillow's process-wide bomb check "
        "(2 * PIL.Image.MAX_IMAGE_PIXELS, 179 MP by default) still applies above this; it is "
        "never changed here.",
    )
    exif_transpose: bool = Field(
        True,
        description="Rotate/flip by the EXIF Orientation tag, as phone cameras need and as vLLM's own image "
        "loader does. The model card's load_image does not; set false to match it exactly "
        "for images that carry an orientation.",
    )
    formats: tuple[str, ...] = Field(
        SAFE_IMAGE_FORMATS,
        description="Pillow format names that may be opened; bytes in any other format give NotAnImage.",
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        formats = tuple(f.upper() for f in formats)
        Image.init()  # registers every plugin, so Image.OPEN lists all readable formats
        unknown = [f for f in formats if f not in Image.OPEN]
        if unknown:
            raise ValueError(f"not formats Pillow can open: {unknown}; known: {sorted(Image.OPEN)}")
        return formats


def decode_image(data: bytes, cfg: DecodeConfig, *, source: str = "") -> Image.Image:
    """An RGB image, converted as the card does (`img.convert('RGB')`, no alpha compositing).

    Raises EmptyMedia, NotAnImage, TruncatedImage, TooLarge or DecodeError; `source` (the
    URL) names the item in their messages.
    """
    name = source or "<bytes>"
    if not data:
        raise EmptyMedia(f"{name}: empty file (0 bytes)")
    try:
        # Lazy: reads the header only, so the size is known before any pixel is decoded.
        img = Image.open(io.BytesIO(data), formats=list(cfg.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only under a warnings filter set to "error".
        raise TooLarge(f"{name}: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise NotAnImage(f"{name}: not an image in an allowed format ({len(data)} bytes)") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise DecodeError(f"{name}: cannot read image header: {type(exc).__name__}: {exc}") from exc

    width, height = img.size
    if width * height > cfg.max_pixels:
        raise TooLarge(f"{name}: {width}x{height} = {width * height} pixels exceeds decode.max_pixels={cfg.max_pixels}")
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Some plugins (GIF, ICO, ICNS, TIFF, WebP, ...) check the size of what they load again.
        raise TooLarge(f"{name}: {exc}") from exc
    except MemoryError:
        raise
    except OSError as exc:
        if "truncated" in str(exc):
            raise TruncatedImage(f"{name}: {img.format} image is truncated: {exc}") from exc
        raise DecodeError(f"{name}: cannot decode {img.format} image: {exc}") from exc
    except Exception as exc:
        raise DecodeError(f"{name}: cannot decode {img.format} image: {type(exc).__name__}: {exc}") from exc

    if cfg.exif_transpose:
        img = _exif_transposed(img)
    return img.convert("RGB")


def _exif_transposed(img: Image.Image) -> Image.Image:
    try:
        # Checked first because exif_transpose copies even an upright image.
        if img.getexif().get(ExifTags.Base.Orientation) not in range(2, 9):
            return img
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception:
        # Malformed EXIF must not cost the image: keep it as stored (vLLM does the same).
        return img
