"""uint8 tiles -> the model's input: both paths equal the card's ToTensor + Normalize, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from internvl_batch.devtools import card_reference as card
from internvl_batch.media.normalize import normalize_tiles, to_pixel_values
from internvl_batch.media.tiling import tile_image
from tests.support.images import noise


def test_normalize_matches_card_transform_for_every_value() -> None:
    # Every (channel, value) pair, at many positions in the tile (vectorised body and tail).
    values = np.arange(448 * 448 * 3, dtype=np.int64).reshape(448, 448, 3)
    tiles = np.stack([(values + shift) % 256 for shift in (0, 85, 171)]).astype(np.uint8)
    transform = card.build_transform(448)
    ref = torch.stack([transform(Image.fromarray(t)) for t in tiles])
    assert torch.equal(to_pixel_values(tiles), ref)


def test_normalize_matches_card_pipeline_end_to_end() -> None:
    img = noise(1000, 700)
    transform = card.build_transform(448)
    card_tiles = card.dynamic_preprocess(img, image_size=448, use_thumbnail=True, max_num=12)
    ref = torch.stack([transform(t) for t in card_tiles])
    ours = to_pixel_values(tile_image(img, max_num=12))
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)


def test_normalize_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        to_pixel_values(np.zeros((1, 448, 448, 3), np.float32))
    with pytest.raises(ValueError):
        to_pixel_values(np.zeros((448, 448, 3), np.uint8))


def test_engine_side_normalize_equals_the_cpu_lookup() -> None:
    tiles = tile_image(noise(900, 600), max_num=6)
    assert torch.equal(normalize_tiles(torch.from_numpy(tiles)), to_pixel_values(tiles))
