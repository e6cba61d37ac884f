"""sample_frames/get_index against the model card's load_video (card_reference), plus errors and limits."""

import io
import itertools
import sys

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from internvl_batch.devtools import card_reference as card
from internvl_batch.media.errors import EmptyMedia, MediaNotFound, TooLarge, VideoDecodeError
from internvl_batch.media.video import VideoConfig, get_index, sample_frames

WIDTH, HEIGHT, BITS = 160, 120, 8


def frame_with_number(n: int) -> np.ndarray:
    """A BGR frame showing n as BITS black/white vertical stripes: survives lossy codecs."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stripe = WIDTH // BITS
    for bit in range(BITS):
        if n >> bit & 1:
            frame[:, bit * stripe : (bit + 1) * stripe] = 255
    return frame


def number_in_frame(frame: np.ndarray) -> int:
    stripe = WIDTH // BITS
    centres = frame[HEIGHT // 2, stripe // 2 :: stripe, 0][:BITS]
    return sum(1 << bit for bit, value in enumerate(centres) if value > 127)


def write_video(path, fourcc: str, fps: float, num_frames: int) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (WIDTH, HEIGHT))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for n in range(num_frames):
        writer.write(frame_with_number(n))
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4v-30fps": write_video(root / "a.mp4", "mp4v", 30.0, 90),
        "mjpg-ntsc": write_video(root / "b.avi", "MJPG", 30000 / 1001, 75),
        "mp4v-1fps-60s": write_video(root / "c.mp4", "mp4v", 1.0, 60),
    }


def card_frames(path: str, bound, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """The card's load_video up to the frames it tiles: its own get_index, then vr[i] one by one."""
    from decord import VideoReader, cpu

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    max_frame = len(vr) - 1
    fps = float(vr.get_avg_fps())
    frame_indices = card.get_index(bound, fps, max_frame, first_idx=0, num_segments=num_segments)
    return np.stack([vr[frame_index].asnumpy() for frame_index in frame_indices]), frame_indices


# -- get_index ----------------------------------------------------------------------------------


def test_get_index_matches_the_card():
    fps_values = [1.0, 23.976023976023978, 24.0, 25.0, 29.97002997002997, 30.0, 59.94, 60.0, 0.5]
    max_frames = [0, 1, 7, 89, 1000, 54321]
    bounds = [None, (), (0, 1), (0.5, 2.5), (1.234, 100.0), (0, 0), (3.3, 3.4), (10, 5), (-2, 1.5)]
    segments = [1, 2, 3, 8, 16, 32, 64]
    for fps, max_frame, bound, num_segments in itertools.product(fps_values, max_frames, bounds, segments):
        ours = get_index(bound, fps, max_frame, first_idx=0, num_segments=num_segments)
        theirs = card.get_index(bound, fps, max_frame, first_idx=0, num_segments=num_segments)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), (fps, max_frame, bound, num_segments)
    assert np.array_equal(
        get_index(None, 30.0, 89, first_idx=5, num_segments=4),
        card.get_index(None, 30.0, 89, first_idx=5, num_segments=4),
    )


# -- sample_frames is the card's load_video -----------------------------------------------------


@pytest.mark.parametrize("name", ["mp4v-30fps", "mjpg-ntsc", "mp4v-1fps-60s"])
@pytest.mark.parametrize("bound, num_segments", [(None, 8), (None, 32), (None, 1), ((0.5, 2.0), 8), ((1.0, 1.1), 4)])
def test_sample_frames_equals_the_cards_frames(videos, name, bound, num_segments):
    path = videos[name]
    expected, expected_indices = card_frames(path, bound, num_segments)
    frames, indices = sample_frames(path, bound, num_segments)
    assert frames.dtype == np.uint8 and frames.shape == (num_segments, HEIGHT, WIDTH, 3)
    assert indices == expected_indices.tolist() and all(type(i) is int for i in indices)
    np.testing.assert_array_equal(frames, expected)
    # ...and those are the frames with those numbers, not merely the same wrong ones.
    assert [number_in_frame(f) for f in frames] == indices


def test_bytes_path_and_file_object_give_the_same_frames(videos):
    path = videos["mp4v-30fps"]
    data = open(path, "rb").read()
    from_path = sample_frames(path, None, 8)
    for source in (data, io.BytesIO(data)):
        frames, indices = sample_frames(source, None, 8)
        assert indices == from_path[1]
        np.testing.assert_array_equal(frames, from_path[0])


# -- errors -------------------------------------------------------------------------------------


def test_empty_input(tmp_path):
    with pytest.raises(EmptyMedia, match="s3://b/v.mp4: empty file"):
        sample_frames(b"", name="s3://b/v.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMedia):
        sample_frames(str(empty))


def test_missing_path(tmp_path):
    with pytest.raises(MediaNotFound, match="no such file"):
        sample_frames(str(tmp_path / "nope.mp4"))


@pytest.mark.parametrize("kind", ["random", "text", "truncated-mp4", "image"])
def test_undecodable_video(videos, kind):
    mp4 = open(videos["mp4v-30fps"], "rb").read()
    data = {
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text": b"hello world\n" * 100,
        "truncated-mp4": mp4[: len(mp4) // 2],  # OpenCV writes the index (moov) last: nothing is left
        "image": cv2.imencode(".png", frame_with_number(3))[1].tobytes(),
    }[kind]
    with pytest.raises(VideoDecodeError, match="s3://b/v.mp4: cannot open video") as info:
        sample_frames(data, name="s3://b/v.mp4")
    assert info.value.status == "decode_error"
    assert "internvl-video-" not in str(info.value)  # the temp file is not what the user gave


def test_truncated_avi_from_bytes_does_not_crash(videos):
    # decord's in-memory reader segfaults on this input; sample_frames must not use it.
    avi = open(videos["mjpg-ntsc"], "rb").read()
    frames, indices = sample_frames(avi[: len(avi) // 2], None, 8)
    assert frames.shape[0] == 8 and max(indices) < 75


def test_bound_outside_the_video(videos):
    with pytest.raises(VideoDecodeError, match=r"bound=\(100, 200\) selects 8 frame indices outside the video"):
        sample_frames(videos["mp4v-30fps"], (100, 200), 8)


# -- limits ---------------------------------------------------------------------------------------


def test_too_long_video(videos):
    path = videos["mp4v-1fps-60s"]
    expected = r"duration 60.0 s \(60 frames at 1 fps\) exceeds video.max_duration_s=30"
    with pytest.raises(TooLarge, match=expected) as info:
        sample_frames(path, None, 8, limits=VideoConfig(max_duration_s=30))
    assert info.value.status == "too_large"
    with pytest.raises(TooLarge, match="60 frames exceeds video.max_frames_total=59"):
        sample_frames(path, None, 8, limits=VideoConfig(max_frames_total=59))
    frames, _ = sample_frames(path, None, 8, limits=VideoConfig(max_duration_s=60, max_frames_total=60))
    assert len(frames) == 8


def test_video_config():
    assert VideoConfig().num_segments == 8
    with pytest.raises(ValidationError, match="num_segment"):
        VideoConfig(num_segment=4)


def test_missing_decord_says_what_to_install(monkeypatch, videos):
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(ImportError, match="pip install decord"):
        sample_frames(videos["mp4v-30fps"])


# -- hostile videos -------------------------------------------------------------------------------


@pytest.mark.parametrize("fourcc, name", [("mp4v", "one.mp4"), ("MJPG", "one.avi")])
def test_one_frame_video_gives_that_frame_num_segments_times(tmp_path, fourcc, name):
    path = write_video(tmp_path / name, fourcc, 30.0, 1)
    expected, expected_indices = card_frames(path, None, 8)
    frames, indices = sample_frames(open(path, "rb").read(), None, 8, limits=VideoConfig())
    assert indices == expected_indices.tolist() == [0] * 8
    np.testing.assert_array_equal(frames, expected)


def test_frames_over_max_frame_pixels_are_too_large_before_the_rest_are_decoded(videos, monkeypatch):
    path = videos["mp4v-30fps"]
    limit = WIDTH * HEIGHT
    with pytest.raises(TooLarge, match=rf"160x120 = 19200 pixels per frame exceeds video.max_frame_pixels={limit - 1}"):
        sample_frames(path, None, 8, limits=VideoConfig(max_frame_pixels=limit - 1))
    from decord import VideoReader

    decoded = []
    real_getitem = VideoReader.__getitem__
    # Spies on decord to count decoded frames; the decoding itself is real.
    monkeypatch.setattr(VideoReader, "__getitem__", lambda vr, i: decoded.append(i) or real_getitem(vr, i))
    with pytest.raises(TooLarge):
        sample_frames(path, None, 8, limits=VideoConfig(max_frame_pixels=limit - 1))
    assert len(decoded) == 1
    frames, _ = sample_frames(path, None, 8, limits=VideoConfig(max_frame_pixels=limit))
    assert frames.shape == (8, HEIGHT, WIDTH, 3)


def test_a_tiny_file_declaring_huge_frames_is_refused_after_one_frame(tmp_path):
    # 4000x4000 black MJPEG: ~200 KB on disk, 384 MB as 8 sampled RGB frames before this limit.
    path = write_video_sized(tmp_path / "huge.avi", 4000, 4000, frames=2)
    assert (tmp_path / "huge.avi").stat().st_size < 1024**2
    with pytest.raises(TooLarge, match="4000x4000 = 16000000 pixels per frame exceeds video.max_frame_pixels=8294400"):
        sample_frames(open(path, "rb").read(), None, 8, limits=VideoConfig(max_frame_pixels=3840 * 2160))


def write_video_sized(path, width: int, height: int, frames: int) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1.0, (width, height))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(np.zeros((height, width, 3), np.uint8))
    writer.release()
    return str(path)
