"""Synthetic test images with every pixel value in play (noise) or smooth ramps (gradient)."""

import numpy as np
from PIL import Image


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(width - 1, 1)
    g = y * 255 // max(height - 1, 1)
    b = (x + 2 * y) % 256
    return Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8))
