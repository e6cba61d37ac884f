"""Sample video frames exactly as the model card's `load_video` does, with typed errors and limits."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from internvl_batch.media.errors import EmptyMedia, MediaNotFound, TooLarge, VideoDecodeError

VideoSource = bytes | str | os.PathLike[str] | IO[bytes]


class VideoConfig(BaseModel):
    """How many frames are sampled from a video, and which videos are refused."""

    model_config = ConfigDict(extra="forbid")

    num_segments: int = Field(
        8,
        ge=1,
        description="Frames sampled per video, one from the middle of each of this many equal segments "
        "(the card's example uses 8; its load_video default is 32).",
    )
    max_duration_s: float = Field(
        3600.0,
        gt=0,
        description="Longest video accepted, in seconds (frame count / average fps); longer gives too_large.",
    )
    max_frames_total: int = Field(
        216_000,
        gt=0,
        description="Most frames a video may have (default: one hour at 60 fps); more gives too_large.",
    )
    max_frame_pixels: int = Field(
        7680 * 4320,
        gt=0,
        description="Largest frame (width*height) accepted, 8K UHD by default; larger gives too_large. "
        "Checked on the first sampled frame, before any other is decoded: a few KB of video can "
        "declare frames of hundreds of megapixels, and the sampled frames are held together.",
    )


def get_index(bound: Any, fps: float, max_frame: int, first_idx: int = 0, num_segments: int = 32) -> np.ndarray:
    """The model card's frame indices: the middle of each of `num_segments` equal segments.

    `bound` is an optional (start_s, end_s). Kept operation for operation as in the card
    (Python round, np.round, int truncation), since any change can move a frame.
    """
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)])


def sample_frames(
    source: VideoSource,
    bound: Any = None,
    num_segments: int = 32,
    *,
    limits: VideoConfig | None = None,
    name: str = "",
) -> tuple[np.ndarray, list[int]]:
    """The card's frames for `source`: uint8 RGB array (F, H, W, 3) and the frame indices.

    `source` is the encoded video as bytes, a path, or a binary file-like object. Frames are
    read one by one with `vr[i]`, as the card does; only the sampled frames are decoded.
    `limits`: duration and frame count are checked before any frame is decoded, the frame
    size on the first one (decord tells no size before decoding). `name` (the URL) names the
    item in error messages.
    """
    label = name or _label(source)
    with _video_reader(source, label) as vr:
        num_frames = len(vr)
        if num_frames == 0:
            raise EmptyMedia(f"{label}: video has no frames")
        fps = float(vr.get_avg_fps())
        if limits is not None:
            check_video_limits(num_frames, fps, limits, label)
        indices = [int(i) for i in get_index(bound, fps, num_frames - 1, first_idx=0, num_segments=num_segments)]
        outside = [i for i in indices if not 0 <= i < num_frames]
        if outside:
            # The card would fail on these, or silently wrap negative ones to the end of the video.
            raise VideoDecodeError(
                f"{label}: bound={bound} selects {len(outside)} frame indices outside the video "
                f"(e.g. {outside[0]}; it has {num_frames} frames at {fps:g} fps)"
            )
        frames = _read_frames(vr, indices, limits, label)
    return frames, indices


def _read_frames(vr: Any, indices: list[int], limits: VideoConfig | None, label: str) -> np.ndarray:
    """The frames at `indices` in one preallocated array (a list then np.stack held them twice)."""
    first = _read_frame(vr, indices[0], label)
    height, width = first.shape[:2]
    if limits is not None and height * width > limits.max_frame_pixels:
        raise TooLarge(
            f"{label}: {width}x{height} = {width * height} pixels per frame exceeds "
            f"video.max_frame_pixels={limits.max_frame_pixels}"
        )
    frames = np.empty((len(indices), *first.shape), first.dtype)
    frames[0] = first
    del first
    for k in range(1, len(indices)):
        if indices[k] == indices[k - 1]:
            # Short videos sample one frame several times; decoding is deterministic, so copy it.
            frames[k] = frames[k - 1]
            continue
        # decord scales every frame to the stream's size, so a mid-stream size change still fits.
        frames[k] = _read_frame(vr, indices[k], label)
    return frames


def check_video_limits(num_frames: int, fps: float, limits: VideoConfig, label: str) -> None:
    """Raise TooLarge if a video of `num_frames` at `fps` exceeds `limits`."""
    if num_frames > limits.max_frames_total:
        raise TooLarge(f"{label}: {num_frames} frames exceeds video.max_frames_total={limits.max_frames_total}")
    # A zero or missing frame rate gives no duration; the frame-count limit still holds.
    if fps > 0 and num_frames / fps > limits.max_duration_s:
        raise TooLarge(
            f"{label}: duration {num_frames / fps:.1f} s ({num_frames} frames at {fps:g} fps) "
            f"exceeds video.max_duration_s={limits.max_duration_s:g}"
        )


def _label(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return "<video stream>"


@contextmanager
def _video_reader(source: VideoSource, label: str) -> Iterator[Any]:
    """A decord VideoReader on `source`; in-memory videos go through an unnamed-suffix temp file.

    decord's own in-memory reader (file-like input) is avoided on purpose: on a truncated
    AVI it segfaults the process (decord 0.6.0), and on bad input it dumps the bytes to the
    console. Reading from a file, FFmpeg's own I/O is used, which fails cleanly. The temp
    file has no suffix so FFmpeg probes the content, not a name.
    """
    try:
        from decord import VideoReader, cpu
    except ImportError as exc:
        raise ImportError(
            "decoding video needs decord: pip install decord==0.6.0 (or the project's own dependencies)"
        ) from exc

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError as exc:
            raise MediaNotFound(f"{label}: no such file") from exc
        if size == 0:
            raise EmptyMedia(f"{label}: empty file (0 bytes)")
        yield _open_reader(VideoReader, cpu, path, label)
        return

    data = source if isinstance(source, (bytes, bytearray, memoryview)) else source.read()
    if not data:
        raise EmptyMedia(f"{label}: empty file (0 bytes)")
    with tempfile.NamedTemporaryFile(prefix="internvl-video-") as tmp:
        tmp.write(data)
        tmp.flush()
        yield _open_reader(VideoReader, cpu, tmp.name, label)


def _open_reader(video_reader: Any, cpu: Any, path: str, label: str) -> Any:
    try:
        return video_reader(path, ctx=cpu(0), num_threads=1)
    except MemoryError:
        raise
    except Exception as exc:
        # decord names the file it was given, which for in-memory input is a meaningless temp path.
        detail = _decord_message(exc).replace(path, "input")
        raise VideoDecodeError(f"{label}: cannot open video: {detail}") from exc


def _read_frame(vr: Any, index: int, label: str) -> np.ndarray:
    try:
        return vr[index].asnumpy()
    except MemoryError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"{label}: cannot decode frame {index}: {_decord_message(exc)}") from exc


def _decord_message(exc: Exception) -> str:
    # decord errors carry a C++ stack trace after the first line; the first line says what failed.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
