"""uint8 tiles -> the model's float input, bit-equal to torchvision's ToTensor + Normalize.

Tiles travel as uint8 (4x smaller than float32) and are normalised where it is cheapest:
on the engine's device. The ops and their order are torchvision's own (`to(float32)`,
`div(255)`, `sub(mean)`, `div(std)`, all in float32), so the result is bit-identical to
the model card's transform on any device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32, on the tiles' device."""
    import torch

    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) tiles, got {tiles.dtype} {tuple(tiles.shape)}")
    x = tiles.permute(0, 3, 1, 2).contiguous().to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)
