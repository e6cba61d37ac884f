"""Our tiling vs the model card's code (`card_reference`), which is the fidelity oracle.

Every comparison is exact: tiles are compared as uint8 arrays, pixel values with
`torch.equal`. The card's tile list is (PIL tiles...) -> np.stack; ours is one array.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from internvl_batch.devtools import card_reference as card
from internvl_batch.media import resample
from internvl_batch.media.tiling import (
    select_grid,
    split_tile_budget,
    tile_image,
)
from tests.support.images import gradient, noise


class _Captured(Exception):
    pass


def card_candidates(monkeypatch: pytest.MonkeyPatch, min_num: int, max_num: int) -> list[tuple[int, int]]:
    """The candidate grids exactly as the card's dynamic_preprocess builds and orders them.

    dynamic_preprocess only reads `image.size` before handing the list to
    find_closest_aspect_ratio, so a stub image and a stub search capture it.
    """

    def capture(aspect_ratio: float, target_ratios: list[tuple[int, int]], *rest: object) -> None:
        raise _Captured(target_ratios)

    class _Size:
        size = (1, 1)

    with monkeypatch.context() as m:
        m.setattr(card, "find_closest_aspect_ratio", capture)
        with pytest.raises(_Captured) as captured:
            card.dynamic_preprocess(_Size(), min_num=min_num, max_num=max_num)
    return captured.value.args[0]


def card_grid(candidates: list[tuple[int, int]], width: int, height: int) -> tuple[int, int]:
    return card.find_closest_aspect_ratio(width / height, candidates, width, height, 448)


def card_tiles(img: Image.Image, max_num: int, min_num: int = 1, use_thumbnail: bool = True) -> np.ndarray:
    tiles = card.dynamic_preprocess(img, min_num=min_num, max_num=max_num, image_size=448, use_thumbnail=use_thumbnail)
    return np.stack([np.asarray(t) for t in tiles])


def assert_same_tiles(img: Image.Image, max_num: int, min_num: int = 1, use_thumbnail: bool = True) -> None:
    ours = tile_image(img, max_num=max_num, min_num=min_num, use_thumbnail=use_thumbnail)
    ref = card_tiles(img, max_num, min_num, use_thumbnail)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = np.argwhere(ours != ref)
    assert diff.size == 0, f"{len(diff)} values differ, first at (tile, y, x, c) = {tuple(diff[0])}"


# ------------------------------------------------------------------------- grid choice

GRID_SIDES = sorted(
    {*range(1, 40), 100, 223, 224, 225, 447, 448, 449, 500, 633, 634, 895, 896, 897, 1000, 1024, 1343, 1344}
    | {768, 1080, 1920, 2000, 3000, 4000, 5000, 10000}
)


@pytest.mark.parametrize("min_num,max_num", [(1, 1), (1, 6), (1, 12), (1, 24), (2, 12), (4, 9)])
def test_select_grid_matches_card_on_size_sweep(monkeypatch: pytest.MonkeyPatch, min_num: int, max_num: int) -> None:
    candidates = card_candidates(monkeypatch, min_num, max_num)
    for w in GRID_SIDES:
        for h in GRID_SIDES:
            assert select_grid(w, h, min_num, max_num) == card_grid(candidates, w, h), (w, h)


@pytest.mark.parametrize("ratio", [(1, 1), (1, 2), (2, 1), (2, 3), (1, 3), (3, 1)])
def test_select_grid_tie_break_matches_card(monkeypatch: pytest.MonkeyPatch, ratio: tuple[int, int]) -> None:
    # Images whose aspect ratio equals several candidates exactly (1:1 = 2:2 = 3:3, ...):
    # the card prefers the bigger grid only above half its pixel count. Sweep across
    # those thresholds.
    candidates = card_candidates(monkeypatch, 1, 12)
    for scale in range(1, 1500, 7):
        w, h = ratio[0] * scale, ratio[1] * scale
        assert select_grid(w, h, 1, 12) == card_grid(candidates, w, h), (w, h)


def test_select_grid_extreme_aspect_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    for max_num in (1, 6, 12, 24):
        candidates = card_candidates(monkeypatch, 1, max_num)
        for n in (1, 2, 3, 7, 50, 448, 449, 4096, 100_000):
            for w, h in ((1, n), (n, 1)):
                assert select_grid(w, h, 1, max_num) == card_grid(candidates, w, h), (w, h, max_num)


# ------------------------------------------------------------------ the resampler alone


def resize_like_pillow(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    out = np.empty((1, height, width, 3), np.uint8)
    resample.resize_into(resample.ArrayRows(pixels), [resample.Target(width, height, out, 1)])
    return out[0]


def test_resampler_matches_pillow_on_random_sizes() -> None:
    # Any size to any size, up and down, including exact ties of Pillow 13's pass-order
    # rule (2 * (W - w) == H - h), which a wrong rule or coefficient would fail.
    rng = np.random.default_rng(3)
    cases = [tuple(int(v) for v in rng.integers(1, 90, 4)) for _ in range(250)]
    cases += [(w_in, h_in, w_in - d, h_in - 2 * d) for w_in, h_in, d in ((40, 60, 5), (30, 50, 10), (60, 40, 3))]
    for w_in, h_in, w, h in cases:
        pixels = np.random.default_rng(w_in * h_in).integers(0, 256, (h_in, w_in, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((w, h)))
        np.testing.assert_array_equal(resize_like_pillow(pixels, w, h), expected, err_msg=f"{(w_in, h_in)} -> {(w, h)}")


# ------------------------------------------------------------------------- tile pixels

SMALL_SIZES = [
    (1, 1), (3, 500), (500, 3), (2, 2), (17, 5), (447, 449), (448, 448), (449, 448), (448, 449),
    (448, 900), (900, 448), (896, 448), (600, 400), (1024, 768), (768, 1024), (1080, 1920), (1920, 1080),
]  # fmt: skip


@pytest.mark.parametrize("max_num", [1, 6, 12, 24])
@pytest.mark.parametrize("content", ["noise", "gradient"])
@pytest.mark.parametrize("size", SMALL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiles_match_card(size: tuple[int, int], content: str, max_num: int) -> None:
    img = noise(*size) if content == "noise" else gradient(*size)
    assert_same_tiles(img, max_num)


# Over 16 MiB as RGBX, so Pillow stores the rows in several blocks and we stream crops;
# the tall ones also take Pillow's vertical-first pass order; 5000x400 is a panorama.
@pytest.mark.parametrize("max_num", [6, 12])
@pytest.mark.parametrize("size", [(4000, 3000), (1500, 4000), (5000, 400), (400, 5000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiles_match_card_on_large_images(size: tuple[int, int], max_num: int) -> None:
    assert_same_tiles(noise(*size, seed=max_num), max_num)


def test_tiles_match_card_when_row_crops_cannot_be_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Crops too big for one Pillow block fall back to np.asarray (packed RGB rows).
    monkeypatch.setattr(resample, "_STREAM_ROWS", 10_000)
    assert_same_tiles(noise(4000, 3000), max_num=12)


def test_tiles_match_card_on_random_sizes() -> None:
    rng = np.random.default_rng(1)
    for i in range(40):
        w, h = (int(v) for v in rng.integers(1, 1400, 2))
        assert_same_tiles(noise(w, h, seed=i), max_num=int(rng.choice([1, 2, 6, 12, 24])))


@pytest.mark.parametrize("min_num,use_thumbnail", [(1, False), (3, True), (4, False)])
def test_tiles_match_card_min_num_and_no_thumbnail(min_num: int, use_thumbnail: bool) -> None:
    for size in ((1024, 768), (100, 700), (448, 448)):
        assert_same_tiles(gradient(*size), max_num=12, min_num=min_num, use_thumbnail=use_thumbnail)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_tiles_match_card_after_rgb_conversion(mode: str) -> None:
    # The card converts whatever it opened with .convert("RGB"); tiling then sees RGB.
    rgba = np.random.default_rng(2).integers(0, 256, (300, 500, 4), dtype=np.uint8)
    if mode == "I;16":
        img = Image.frombytes("I;16", (500, 300), (rgba[..., 0].astype("<u2") * 257).tobytes())
    else:
        img = Image.fromarray(rgba, "RGBA").convert(mode)
    assert img.mode == mode
    assert_same_tiles(img.convert("RGB"), max_num=6)


def test_an_rgb_array_tiles_like_the_image() -> None:
    # An array is read as packed RGB rows (video frames); an image from Pillow's RGBX memory.
    for size in ((160, 120), (400, 5000), (448, 900), (1024, 768)):
        img = noise(*size)
        np.testing.assert_array_equal(tile_image(np.asarray(img), max_num=6), tile_image(img, max_num=6))


def test_tile_image_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        tile_image(Image.new("L", (10, 10)))


def test_tile_counts_include_the_thumbnail_only_for_a_grid() -> None:
    tiles = tile_image(gradient(1024, 768), max_num=12)  # a 4x3 grid + the thumbnail
    assert tiles.dtype == np.uint8 and tiles.shape == (13, 448, 448, 3)
    assert tile_image(gradient(448, 448), max_num=12).shape == (1, 448, 448, 3)  # 1x1: no thumbnail


# ------------------------------------------------------------------ multi-image budget


def test_split_tile_budget() -> None:
    assert split_tile_budget(1, 12) == [12]
    assert split_tile_budget(2, 12) == [6, 6]
    assert split_tile_budget(5, 12) == [2] * 5
    assert split_tile_budget(12, 12) == [1] * 12
    assert split_tile_budget(20, 12) == [1] * 20  # never below one tile per image
    with pytest.raises(ValueError):
        split_tile_budget(0, 12)
    with pytest.raises(ValueError):
        split_tile_budget(2, 0)
