"""Drop-in, fast replacements for the model card's `load_image` and `load_video`.

Same signatures, same outputs (`torch.equal`, tested against `media.card_reference`),
several times faster: tiling runs on uint8 through `media.tiling` and normalisation is
a single lookup pass. Module import stays light (no torch, numba or decord until used).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from os import PathLike

    import torch
    from PIL import Image

    ImageSource = str | PathLike[str] | IO[bytes] | Image.Image
    VideoSource = str | PathLike[str] | IO[bytes]


def load_image(source: ImageSource, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    """The card's `load_image`: (N, 3, input_size, input_size) float32 pixel values.

    `source` is a path, a binary file object or a PIL image. Like the card, the image is
    converted with `.convert('RGB')` and nothing else (no EXIF orientation).
    """
    from PIL import Image

    from internvl_batch.media.normalize import to_pixel_values
    from internvl_batch.media.tiling import tile_image

    image = source if isinstance(source, Image.Image) else Image.open(source)
    # convert('RGB') of an RGB image is a plain copy; skipping it changes no pixel.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return to_pixel_values(tile_image(rgb, image_size=input_size, max_num=max_num))


def load_video(
    source: VideoSource,
    bound: tuple[float, float] | None = None,
    input_size: int = 448,
    max_num: int = 1,
    num_segments: int = 32,
) -> tuple[torch.Tensor, list[int]]:
    """The card's `load_video`: (pixel_values, num_patches_list) for `num_segments` frames.

    Frames are sampled at the card's `get_index` positions (only those are decoded) and
    each is tiled like an image with `max_num` tiles.
    """
    import numpy as np

    from internvl_batch.media.normalize import to_pixel_values
    from internvl_batch.media.tiling import tile_image
    from internvl_batch.media.video import sample_frames

    frames, _ = sample_frames(source, bound=bound, num_segments=num_segments)
    tiles = [tile_image(frame, image_size=input_size, max_num=max_num) for frame in frames]
    return to_pixel_values(np.concatenate(tiles)), [len(t) for t in tiles]
