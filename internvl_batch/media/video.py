"""Sample video frames exactly as the model card's `load_video` does, with typed errors and limits."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from internvl_batch.media.errors import (
    DecodeError,
    EmptyMedia,
    MediaError,
    MediaNotFound,
    TooLarge,
    VideoDecodeError,
)
from internvl_batch.media.loopback import loopback
from internvl_batch.media.ranged import BytesObject, LocalFile, RangedObject

VideoSource = bytes | str | os.PathLike[str] | IO[bytes] | RangedObject | LocalFile
_HEAD_BYTES = 64
_PLAYLISTS = (b"#EXTM3U", b"ffconcat", b"v=0", b"<?xml", b"<MPD")


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
    max_bytes: int = Field(
        16 * 1024**3,
        gt=0,
        description="Largest video object, in bytes (too_large beyond, checked from its size before reading). "
        "Videos are read by range as the decoder seeks (16 MiB of one at most), never whole in memory, so this "
        "can be large; fetch.max_bytes limits images (and videos from a server that ignores Range requests, "
        "which are fetched whole as before).",
    )
    clip_s: float | None = Field(
        None,
        gt=0,
        description="Cut each video row into clips of this many seconds, over the whole video (or the row's "
        "start/end), the last clip cut at the video's end; each clip is sampled as the card samples "
        "bound=(clip start, clip end) and gets its own output rows. A row's own clips column wins. "
        "None: one window per row, as before.",
    )
    clip_stride_s: float | None = Field(
        None,
        gt=0,
        description="Seconds from one clip's start to the next (needs clip_s); None: clip_s, clips back to "
        "back. Smaller than clip_s: overlapping clips.",
    )

    @model_validator(mode="after")
    def _stride_needs_clips(self) -> "VideoConfig":
        if self.clip_stride_s is not None and self.clip_s is None:
            raise ValueError("clip_stride_s is set but clip_s is not: set the clip length too")
        return self


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


class OutsideVideo(VideoDecodeError):
    """A window (bound or clip) that selects frames outside the video."""


class Video:
    """An open video: its frame count and rate (checked against the limits), and the card's
    frames of any window of it. Several windows (clips) share one open reader."""

    def __init__(self, vr: Any, label: str, limits: VideoConfig | None, io_error: Callable[[], MediaError | None]):
        self.vr, self.label, self.limits, self._io_error = vr, label, limits, io_error
        self.check_io()
        self.num_frames = len(vr)
        if self.num_frames == 0:
            raise EmptyMedia(f"{label}: video has no frames")
        self.fps = float(vr.get_avg_fps())
        if limits is not None:
            check_video_limits(self.num_frames, self.fps, limits, label)

    @property
    def duration_s(self) -> float:
        """Frame count / average rate, the time base of the card's bounds (0 without a rate)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def check_io(self) -> None:
        """A storage error behind the decoder's reads wins over whatever it made of the cut
        stream: the row is fetch_error, never frames from a partly read video."""
        error = self._io_error()
        if error is not None:
            raise error

    def indices(self, bound: Any, num_segments: int) -> list[int]:
        """The card's frame indices for `bound` (its get_index); OutsideVideo if any is outside."""
        indices = [int(i) for i in get_index(bound, self.fps, self.num_frames - 1, 0, num_segments)]
        outside = [i for i in indices if not 0 <= i < self.num_frames]
        if outside:
            # The card would fail on these, or silently wrap negative ones to the end of the video.
            raise OutsideVideo(
                f"{self.label}: bound={bound} selects {len(outside)} frame indices outside the video "
                f"(e.g. {outside[0]}; it has {self.num_frames} frames at {self.fps:g} fps)"
            )
        return indices

    def frames(self, indices: list[int]) -> np.ndarray:
        try:
            frames = _read_frames(self.vr, indices, self.limits, self.label)
        except DecodeError:
            self.check_io()
            raise
        self.check_io()
        return frames

    def sample(self, bound: Any, num_segments: int) -> tuple[np.ndarray, list[int]]:
        indices = self.indices(bound, num_segments)
        return self.frames(indices), indices


def sample_frames(
    source: VideoSource,
    bound: Any = None,
    num_segments: int = 32,
    *,
    limits: VideoConfig | None = None,
    name: str = "",
) -> tuple[np.ndarray, list[int]]:
    """The card's frames for `source`: uint8 RGB array (F, H, W, 3) and the frame indices.

    `source` is the encoded video as bytes, a path, a binary file-like object, or a ranged
    object (media/ranged.py). Frames are read one by one with `vr[i]`, as the card does;
    only the sampled frames are decoded. `limits`: duration and frame count are checked
    before any frame is decoded, the frame size on the first one (decord tells no size
    before decoding). `name` (the URL) names the item in error messages.
    """
    with open_video(source, name=name, limits=limits) as video:
        return video.sample(bound, num_segments)


@contextmanager
def open_video(source: VideoSource, *, name: str = "", limits: VideoConfig | None = None) -> Iterator[Video]:
    """An open `Video` on `source`. A local path is decoded from the file; anything else is
    served to decord by range from this process (media/loopback.py), so a remote video is
    never held whole in memory and an in-memory one is not written anywhere."""
    label = name or _label(source)
    video_reader, cpu = _decord()
    if isinstance(source, LocalFile):
        label, source = name or source.label, source.path
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(_HEAD_BYTES)
        except FileNotFoundError as exc:
            raise MediaNotFound(f"{label}: no such file") from exc
        if size == 0:
            raise EmptyMedia(f"{label}: empty file (0 bytes)")
        _refuse_playlists(head, label)
        video = Video(_open_reader(video_reader, cpu, path, label), label, limits, lambda: None)
        try:
            yield video
        finally:
            video.vr = None
        return
    if hasattr(source, "read") and not hasattr(source, "size"):
        source = source.read()
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise EmptyMedia(f"{label}: empty file (0 bytes)")
        source = BytesObject(bytes(source), label)
    with loopback().serve(source) as served:
        try:
            _refuse_playlists(served.reader.read(0, _HEAD_BYTES), label)
            video = Video(_open_reader(video_reader, cpu, served.url, label), label, limits, lambda: served.error)
        except DecodeError:
            if served.error is not None:
                raise served.error from None
            raise
        try:
            yield video
        finally:
            video.vr = None  # decord closes its connection before the URL goes away


def _refuse_playlists(head: bytes, label: str) -> None:
    """FFmpeg follows what playlists and stream descriptions name (HLS, concat, DASH; an SDP
    description, which it recognises by any "c=IN IP" line, makes it open RTP/UDP): a
    "video" that is one would make the decoder reach past the fetch policy. Real video
    containers are binary from their first bytes, so text is refused (the one text-headed
    format, YUV4MPEG2, excepted)."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text.startswith(_PLAYLISTS) or (_is_text(head) and not text.startswith(b"YUV4MPEG2 ")):
        raise VideoDecodeError(
            f"{label}: cannot open video: it is text ({text[:12]!r}...), not a video file; a playlist or stream "
            "description would make the decoder open the URLs it names"
        )


def _is_text(head: bytes) -> bool:
    """UTF-8 without control characters (but tab and line ends): no container's first bytes."""
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not merely a character cut at the end
            return False
        decoded = head[: e.start].decode("utf-8")
    return bool(decoded) and not any(ord(c) < 32 and c not in "\t\r\n" or ord(c) == 127 for c in decoded)


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
    return getattr(source, "label", None) or "<video stream>"


def _decord() -> tuple[Any, Any]:
    try:
        from decord import VideoReader, cpu
    except ImportError as exc:
        raise ImportError(
            "decoding video needs decord: pip install decord==0.6.0 (or the project's own dependencies)"
        ) from exc
    return VideoReader, cpu


def _open_reader(video_reader: Any, cpu: Any, path: str, label: str) -> Any:
    """decord on a path or a loopback URL. Never decord's file-object input: it reads the
    object whole into memory, and on a truncated AVI it segfaults the process (0.6.0)."""
    try:
        return video_reader(path, ctx=cpu(0), num_threads=1)
    except MemoryError:
        raise
    except Exception as exc:
        # decord names the file it was given: for anything but a local path, a loopback URL.
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
