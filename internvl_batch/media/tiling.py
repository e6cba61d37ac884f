"""InternVL2.5 dynamic tiling, bit-exact to the model card's `dynamic_preprocess`, but fast.

The card picks a grid of 448x448 tiles whose aspect ratio is closest to the image's,
resizes the image onto that grid with Pillow's default filter (bicubic), crops the tiles
row-major and appends a 448x448 thumbnail resized from the original image. A model fed
slightly different pixels answers slightly differently, silently, so every pixel here is
bit-equal to the card's; the tests check that against `card_reference`.

Speed comes from three things:
  * Pillow's fixed-point bicubic resampler is ported exactly to numba kernels that
    vectorise (`resample`, which also says why `pillow` is pinned).
  * The grid resize and the thumbnail read the source once: their horizontal passes share
    one transposed block of source rows. Pixels are read from Pillow's own memory through
    the Arrow C interface (zero-copy; images over one 16 MiB Pillow block are streamed as
    128-row crops) instead of `np.asarray`, which repacks every pixel.
  * Tiles are written in place into one (T, 448, 448, 3) uint8 array (no crops, no
    float tensors); `media.normalize` turns that into the model's float input.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from internvl_batch.media.resample import ArrayRows, PillowRows, Rows, Target, resize_into

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SIZE = 448


# --------------------------------------------------------------------------- grid choice


@functools.lru_cache(maxsize=64)
def _target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    # Built exactly as the card builds it (set, then a stable sort by area): the order of
    # equal-area candidates decides ties in the search below.
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return tuple(sorted(ratios, key=lambda x: x[0] * x[1]))


def select_grid(
    width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = IMAGE_SIZE
) -> tuple[int, int]:
    """The card's tile grid (cols, rows) for an image: its `find_closest_aspect_ratio`.

    Closest aspect ratio wins; on an exact tie the later (larger-area) candidate wins only
    if the image has more than half of that grid's pixels. Same float ops as the card.
    """
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for ratio in _target_ratios(min_num, max_num):
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def split_tile_budget(n_images: int, max_num_total: int) -> list[int]:
    """Per-image `max_num` when one sample holds several images.

    InternVL's rule for multi-image samples: the tile budget is shared evenly,
    `max(1, max_num_total // n_images)` per image (each image may still add a thumbnail).
    Returned per image so a task can later weight images differently.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if max_num_total < 1:
        raise ValueError(f"max_num_total must be >= 1, got {max_num_total}")
    return [max(1, max_num_total // n_images)] * n_images


# ------------------------------------------------------------------ public tiling entry


def tile_image(
    img: Image.Image | np.ndarray,
    *,
    image_size: int = IMAGE_SIZE,
    max_num: int = 12,
    min_num: int = 1,
    use_thumbnail: bool = True,
) -> np.ndarray:
    """The card's `dynamic_preprocess(img, ...)` as one uint8 (T, S, S, 3) array.

    `img` is an RGB Pillow image (the card converts before tiling; so do our callers) or
    an (H, W, 3) uint8 RGB array, e.g. a decoded video frame.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 pixels, got {img.dtype} {img.shape}")
        src: Rows = ArrayRows(np.ascontiguousarray(img))
    elif img.mode != "RGB":
        raise ValueError(f"tiling expects an RGB image, got mode {img.mode!r}")
    else:
        src = PillowRows(img)
    return _tile(src, image_size, max_num, min_num, use_thumbnail)


# ------------------------------------------------------------------------ orchestration


def _tile(src: Rows, size: int, max_num: int, min_num: int, use_thumbnail: bool) -> np.ndarray:
    cols, rows = select_grid(src.width, src.height, min_num, max_num, size)
    n = cols * rows
    with_thumb = use_thumbnail and n != 1
    tiles = np.empty((n + with_thumb, size, size, 3), np.uint8)
    targets = [Target(cols * size, rows * size, tiles[:n], cols)]
    if with_thumb:
        targets.append(Target(size, size, tiles[n:], 1))
    resize_into(src, targets)
    return tiles
