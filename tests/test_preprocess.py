"""`internvl_batch.preprocess` vs the model card's `load_image` / `load_video`, exactly."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvl_batch import preprocess
from internvl_batch.devtools import card_reference as card

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"

# Real photographs (and a few other images) shipped inside scikit-image's wheel.
PHOTOS = [
    "astronaut.png",  # RGB 512x512
    "chelsea.png",  # RGB 451x300
    "coffee.png",  # RGB 600x400
    "rocket.jpg",  # RGB JPEG 640x427
    "hubble_deep_field.jpg",  # RGB JPEG 1000x872
    "retina.jpg",  # RGB JPEG 1411x1411
    "motorcycle_left.png",  # RGB 741x500
    "camera.png",  # L 512x512
    "text.png",  # L 448x172
    "horse.png",  # RGBA 400x328
    "logo.png",  # RGBA 500x500
]


def photo(name: str) -> Path:
    path = SKIMAGE_DATA / name
    assert path.is_file(), f"{name} is not in this scikit-image wheel"
    return path


@pytest.mark.parametrize("max_num", [12, 6])
@pytest.mark.parametrize("name", PHOTOS)
def test_load_image_matches_card_on_photos(name: str, max_num: int) -> None:
    path = photo(name)
    ours = preprocess.load_image(path, max_num=max_num)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, card.load_image(path, max_num=max_num))


def test_load_image_accepts_path_file_object_and_pil_image() -> None:
    path = photo("coffee.png")
    expected = card.load_image(str(path))
    assert torch.equal(preprocess.load_image(str(path)), expected)
    assert torch.equal(preprocess.load_image(path), expected)
    with path.open("rb") as f:
        assert torch.equal(preprocess.load_image(f), expected)
    assert torch.equal(preprocess.load_image(io.BytesIO(path.read_bytes())), expected)
    with Image.open(path) as img:
        assert torch.equal(preprocess.load_image(img), expected)


def test_load_image_other_input_size() -> None:
    path = photo("rocket.jpg")
    ours = preprocess.load_image(path, input_size=224, max_num=6)
    assert torch.equal(ours, card.load_image(path, input_size=224, max_num=6))


@pytest.mark.parametrize("size", [(1024, 768), (4000, 3000), (5000, 400), (300, 2000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_load_image_matches_card_on_resized_jpegs(tmp_path: Path, size: tuple[int, int]) -> None:
    # Photo content at typical camera and panorama sizes, through the JPEG decoder.
    path = tmp_path / "photo.jpg"
    Image.open(photo("astronaut.png")).resize(size).save(path, quality=90)
    assert torch.equal(preprocess.load_image(path), card.load_image(path))


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG")],
)
def test_load_image_matches_card_on_modes(tmp_path: Path, mode: str, fmt: str) -> None:
    src = Image.open(photo("chelsea.png")).convert("RGBA")
    if mode == "I;16":
        img = Image.frombytes("I;16", src.size, (np.asarray(src.convert("L")).astype("<u2") * 257).tobytes())
    else:
        img = src.convert(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    img.save(path, fmt)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
    assert torch.equal(preprocess.load_image(path, max_num=6), card.load_image(path, max_num=6))


# ------------------------------------------------------------------------------- video

VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 64, (160, 120), 30.0


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 frames of 160x120 at 30 fps (mp4v): a moving gradient with noise, every frame distinct."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    w, h = VIDEO_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    for i in range(VIDEO_FRAMES):
        frame = np.stack([(x * 2 + i * 4) % 256, (y * 2 + i * 3) % 256, (x + y + i * 8) % 256], axis=-1)
        frame = np.clip(frame + rng.integers(-8, 9, frame.shape), 0, 255).astype(np.uint8)
        writer.write(frame)
    writer.release()
    return path


def _video_module_missing() -> bool:
    return importlib.util.find_spec("internvl_batch.media.video") is None


@pytest.mark.xfail(
    _video_module_missing(), reason="internvl_batch/media/video.py (sample_frames) is not written yet", strict=True
)
@pytest.mark.parametrize(
    "num_segments,max_num,bound",
    [(8, 1, None), (32, 1, None), (8, 6, None), (8, 1, (0.5, 1.5)), (4, 2, (0.0, 10.0))],
)
def test_load_video_matches_card(
    tiny_video: Path, num_segments: int, max_num: int, bound: tuple[float, float] | None
) -> None:
    args = dict(bound=bound, max_num=max_num, num_segments=num_segments)
    ours, ours_patches = preprocess.load_video(str(tiny_video), **args)
    ref, ref_patches = card.load_video(str(tiny_video), **args)
    assert ours_patches == ref_patches
    assert torch.equal(ours, ref)
