"""Clips: the manifest column's parsing and the fixed windows of video.clip_s."""

import pytest

from internvl_batch.job.clips import MAX_CLIPS, count_fixed_clips, fixed_clips, parse_clips

V = "s3://b/v.mp4"


def test_clip_lists_from_jsonl_parquet_and_csv():
    assert parse_clips([[0, 5], [5.5, 10]], V, None, None) == [[0.0, 5.0], [5.5, 10.0]]
    assert parse_clips(((1, 2),), V, None, None) == [[1.0, 2.0]]
    assert parse_clips("[[0, 2.5]]", V, None, None) == [[0.0, 2.5]]  # a CSV cell
    for none in (None, float("nan"), "", "  "):
        assert parse_clips(none, V, None, None) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("[[0, 1]", "not a JSON list"),
        ([], "non-empty list"),
        ({"a": 1}, "non-empty list"),
        ([[0, 1], [2]], r"clip 1 is \[2\], not a \[start, end\] pair"),
        ([[0, 1], "ab"], "clip 1 is 'ab'"),
        ([[3, 3]], r"clip 0 is \[3, 3\]: it needs 0 <= start < end"),
        ([[-1, 3]], "it needs 0 <= start < end"),
        ([[0, float("inf")]], "it needs 0 <= start < end"),
        ([[0, 1]] * (MAX_CLIPS + 1), f"at most {MAX_CLIPS} per row"),
    ],
)
def test_bad_clip_lists_say_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        parse_clips(value, V, None, None)


def test_clips_need_a_video_and_exclude_start_end():
    with pytest.raises(ValueError, match="without a video"):
        parse_clips([[0, 1]], None, None, None)
    with pytest.raises(ValueError, match="either clips or start/end"):
        parse_clips([[0, 1]], V, 0.0, None)


def test_fixed_clips_cover_the_video_the_last_cut_at_its_end():
    assert fixed_clips(25.0, 10.0, None) == [[0.0, 10.0], [10.0, 20.0], [20.0, 25.0]]
    assert fixed_clips(20.0, 10.0, None) == [[0.0, 10.0], [10.0, 20.0]]  # no empty window at the end
    assert fixed_clips(4.0, 10.0, None) == [[0.0, 4.0]]  # shorter than one clip: one window
    # overlapping: stops at the first window that reaches the end
    assert fixed_clips(25.0, 10.0, 5.0) == [[0.0, 10.0], [5.0, 15.0], [10.0, 20.0], [15.0, 25.0]]
    # gaps: stride longer than the clip
    assert fixed_clips(25.0, 5.0, 10.0) == [[0.0, 5.0], [10.0, 15.0], [20.0, 25.0]]
    # over the row's own start/end only
    assert fixed_clips(100.0, 10.0, None, start=30.0, end=52.0) == [[30.0, 40.0], [40.0, 50.0], [50.0, 52.0]]
    # a start past the end: one window past the end (the stage makes it an invalid_row)
    assert fixed_clips(10.0, 5.0, None, start=20.0) == [[20.0, 10.0]]


def test_fixed_clip_starts_do_not_drift():
    clips = fixed_clips(3600.0, 0.1, None)
    assert len(clips) == 36_000 if MAX_CLIPS >= 36_000 else len(clips) == MAX_CLIPS
    assert clips[-1][0] == pytest.approx((len(clips) - 1) * 0.1, abs=1e-9)


@pytest.mark.parametrize("duration", [0.5, 10.0, 20.0, 25.0, 99.9, 3600.0])
@pytest.mark.parametrize("clip, stride", [(10.0, None), (10.0, 5.0), (5.0, 10.0), (3.0, 3.0)])
def test_the_preflight_count_is_the_windows_cut(duration, clip, stride):
    clips = fixed_clips(duration, clip, stride)
    assert count_fixed_clips(duration, clip, stride) == len(clips)
    assert clips[-1][1] == duration and all(b - a <= clip + 1e-9 for a, b in clips)
