"""Clips: the windows of one video row that each get their own answers.

A row asks for clips with its manifest column (`input.clips_column`: a list of
[start, end] seconds, or that list as JSON text in a CSV), or every video row is cut into
fixed windows by `preprocess.video.clip_s` / `clip_stride_s`. Each clip is sampled as the
model card samples a bounded window (`bound=(start, end)`, num_segments frames) and
becomes its own output rows, keyed (id, clip, task).
"""

from __future__ import annotations

import json
import math
from typing import Any

# More would make one manifest row a job of its own; split such videos into several rows.
MAX_CLIPS = 10_000


def parse_clips(value: Any, video: str | None, start: float | None, end: float | None) -> list[list[float]] | None:
    """A row's clips column as [[start, end], ...] seconds, or None when the row has none.
    Raises ValueError, naming what is wrong, for anything else (the row is invalid_row)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"clips={value[:80]!r} is not a JSON list of [start, end] pairs") from None
    if not video:
        raise ValueError("clips are given for a row without a video")
    if start is not None or end is not None:
        raise ValueError("a row has either clips or start/end, not both")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("clips must be a non-empty list of [start, end] pairs in seconds")
    if len(value) > MAX_CLIPS:
        raise ValueError(f"{len(value)} clips: at most {MAX_CLIPS} per row")
    clips = []
    for i, pair in enumerate(value):
        try:
            lo, hi = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise ValueError(f"clip {i} is {pair!r}, not a [start, end] pair of seconds") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi <= lo:
            raise ValueError(f"clip {i} is [{lo:g}, {hi:g}]: it needs 0 <= start < end")
        clips.append([lo, hi])
    return clips


def fixed_clips(duration_s: float, clip_s: float, stride_s: float | None, start: float | None = None,
                end: float | None = None) -> list[list[float]]:  # fmt: skip
    """Windows of `clip_s` every `stride_s` (default: back to back) over [start, end] of a
    video of `duration_s`, the last one cut at the end; the first window that reaches the
    end is the last. At least one window."""
    stride = stride_s or clip_s
    lo = max(0.0, start or 0.0)
    hi = duration_s if end is None else min(end, duration_s)
    clips = []
    t = lo
    while True:
        clips.append([t, min(t + clip_s, hi)])
        if t + clip_s >= hi or len(clips) >= MAX_CLIPS:
            return clips
        # From the first start, not by summing strides: no drift over thousands of clips.
        t = lo + len(clips) * stride


def count_fixed_clips(duration_s: float, clip_s: float, stride_s: float | None) -> int:
    """How many windows `fixed_clips` cuts from a whole video of `duration_s` (pre-flight)."""
    stride = stride_s or clip_s
    if duration_s <= clip_s:
        return 1
    return min(MAX_CLIPS, math.ceil((duration_s - clip_s) / stride - 1e-9) + 1)
