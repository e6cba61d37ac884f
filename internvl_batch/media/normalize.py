"""uint8 tiles -> the model's float input, bit-equal to torchvision's ToTensor + Normalize.

Tiles travel as uint8 (4x smaller than float32) and are normalised where it is cheapest:
`normalize_tiles` on the engine's device (torch ops), `to_pixel_values` on a CPU (one
lookup pass, for the card's `load_image`). Both give the model card's exact values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32, on the tiles' device.

    The ops and their order are torchvision's own (`to(float32)`, `div(255)`, `sub(mean)`,
    `div(std)`, all in float32), so the result is bit-identical on any device.
    """
    import torch

    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) tiles, got {tiles.dtype} {tuple(tiles.shape)}")
    x = tiles.permute(0, 3, 1, 2).contiguous().to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def to_pixel_values(tiles: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 on the CPU, bit-equal to `normalize_tiles`.

    Every output value depends only on its channel and uint8 value, so the 3x256 possible
    values are computed once by `normalize_tiles` and then looked up: one pass, no float
    temporaries.
    """
    import torch

    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) tiles, got {tiles.dtype} {tiles.shape}")
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), np.float32)
    _lookup_planar()(np.ascontiguousarray(tiles), _normalize_lut(), out)
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def _normalize_lut() -> np.ndarray:
    import torch

    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3)
    return normalize_tiles(values.contiguous())[0, :, 0, :].numpy().copy()  # (3, 256)


@functools.lru_cache(maxsize=1)
def _lookup_planar() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    """Compile (or load from numba's on-disk cache) the lookup kernel, once per process.

    Defined lazily so importing this module does not import numba. The index is cast to
    unsigned so the loop vectorises (see `resample._kernels`).
    """
    import numba

    U = numba.uintp

    @numba.njit(cache=True, nogil=True)
    def lookup_planar(tiles, lut, out):
        """out[t, c, y, x] = lut[c, tiles[t, y, x, c]]: interleaved uint8 -> planar float32."""
        n, hh, ww, _ = tiles.shape
        for t in range(n):
            for y in range(hh):
                row = tiles[t, y]
                for ch in range(3):
                    o = out[t, ch, y]
                    lc = lut[ch]
                    for x in range(U(ww)):
                        o[x] = lc[row[x, ch]]

    return lookup_planar
