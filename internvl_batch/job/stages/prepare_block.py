"""One block of rows through the CPU stage: every fetch is started up front (the worker's
FetchPool runs up to fetch.concurrency of them), and images are decoded and tiled in the
order they arrive, so a slow object delays its own row only. Rows leave as soon as they
are complete, each with its position in the block.

A row's first failing image, in image order, decides its status, as when images were
fetched one after another: a later image's outcome is not even decoded once an earlier
one failed. A video is opened in a fetch slot too (by range: nothing of it is read whole)
and then decoded here, clip by clip; its clips share the one open video.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from internvl_batch.job.clips import fixed_clips
from internvl_batch.media.decode import decode_image
from internvl_batch.media.errors import MediaError, TooLarge
from internvl_batch.media.pool import Fetched
from internvl_batch.media.ranged import BytesObject, open_ranged
from internvl_batch.media.tiling import split_tile_budget, tile_image
from internvl_batch.media.video import OutsideVideo, open_video
from internvl_batch.records import CLIP_COLUMNS, tiles_to_bytes
from internvl_batch.status import Status

if TYPE_CHECKING:
    from internvl_batch.job.stages.prepare import PrepareStage

_NO_CLIP = dict.fromkeys(CLIP_COLUMNS)


@dataclass
class _ImageRow:
    rec: dict[str, Any]
    budgets: list[int]
    names: list[str]
    tiles: list[np.ndarray | None]
    errors: dict[int, MediaError] = field(default_factory=dict)
    pending: int = 0
    ms: float = 0.0  # its slowest fetch plus its own decoding and tiling


class BlockRun:
    def __init__(self, stage: PrepareStage, rows: list[dict[str, Any]]):
        self.stage, self.cfg, self.timer = stage, stage.cfg, stage.timer_for_run()
        self.rows = rows
        self.images: dict[int, _ImageRow] = {}  # image rows whose images are still arriving
        self.arrivals: queue.Queue = queue.Queue()
        self.outstanding = 0
        self._closed = False  # the block's generator ended: later arrivals only give their bytes back
        self._lock = threading.Lock()
        self.video_bytes_read = 0

    # -- output rows ----------------------------------------------------------------------------
    def _out(self, rec: dict[str, Any], **fields: Any) -> dict[str, Any]:
        base = {"tiles": None, "tiles_per_image": [], "preprocess_ms": 0.0, **_NO_CLIP}
        # Embedded bytes are tiles now: they need not travel on to the engine stage.
        return {**rec, "image_bytes": None, "video_bytes": None, **base, **fields}

    def _failed(self, rec: dict[str, Any], error: MediaError, ms: float = 0.0, **clip: Any) -> dict[str, Any]:
        return self._out(rec, status=error.status, error=str(error), preprocess_ms=ms, **clip)

    # -- the block ------------------------------------------------------------------------------
    def run(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position in the block, prepared row): every row once, or once per clip."""
        settled = []
        for pos, rec in enumerate(self.rows):  # every fetch starts before any row leaves
            if rec["status"] != Status.OK:
                settled.append(pos)
            elif rec["media"] == "video":
                self._open_video(pos, rec)
            else:
                self._start_images(pos, rec)
        try:
            for pos in settled:
                yield pos, self._out(self.rows[pos])
            while self.outstanding:
                pos, index, arrived = self.arrivals.get()
                self.outstanding -= 1
                if index is None:
                    yield from self._video(pos, arrived)
                else:
                    row = self._image(pos, index, arrived)
                    if row is not None:
                        yield pos, row
        finally:
            self._close()

    def _arrive(self, pos: int, index: int | None) -> Any:
        self.outstanding += 1

        def done(fetched: Fetched) -> None:
            with self._lock:
                if not self._closed:
                    self.arrivals.put((pos, index, fetched))
                    return
            fetched.release()

        return done

    def _close(self) -> None:
        """A block that ends early (an error Ray will retry, or its consumer gone) gives back
        the bytes of what arrived and of what is still to arrive: the worker's budget is shared."""
        with self._lock:
            self._closed = True
        while not self.arrivals.empty():
            self.arrivals.get_nowait()[2].release()

    # -- images ---------------------------------------------------------------------------------
    def _start_images(self, pos: int, rec: dict[str, Any]) -> None:
        urls = rec["images"]
        budgets = [self.cfg.max_num] if len(urls) == 1 else split_tile_budget(len(urls), self.cfg.multi_image_max_num)
        self.images[pos] = _ImageRow(rec, budgets, urls, [None] * len(urls), pending=len(urls))
        embedded = rec.get("image_bytes") or [None] * len(urls)
        limit = self.cfg.fetch.max_bytes
        for j, (url, data) in enumerate(zip(urls, embedded)):
            done = self._arrive(pos, j)
            if data is None:
                self.stage.pool.submit(url, done)
            elif len(data) > limit:  # the same limit and status as a fetched image, nothing counted
                done(Fetched(url, None, TooLarge(f"{url}: {len(data)} bytes exceeds fetch.max_bytes={limit}"), 0.0))
            else:
                done(Fetched(url, data, None, 0.0))

    def _image(self, pos: int, j: int, arrived: Fetched) -> dict[str, Any] | None:
        row = self.images[pos]
        row.pending -= 1
        row.ms = max(row.ms, arrived.ms)
        if arrived.ms:  # not for embedded bytes: nothing was fetched
            self.timer.add("fetch", arrived.ms)
        try:
            if arrived.error is not None:
                row.errors[j] = arrived.error
            elif not any(k < j for k in row.errors):  # an earlier image failed: this one decides nothing
                with self.stage.cpu:
                    start = time.perf_counter()  # its own work, not the wait for the worker's CPU
                    try:
                        with self.timer("decode"):
                            img = decode_image(arrived.data, self.cfg.decode, source=row.names[j])
                        arrived.release()  # the encoded bytes: decoded now
                        with self.timer("tile"):
                            tiles = tile_image(img, max_num=row.budgets[j], use_thumbnail=self.cfg.use_thumbnail)
                        row.tiles[j] = tiles
                    finally:
                        row.ms += (time.perf_counter() - start) * 1000
        except MediaError as e:
            row.errors[j] = e
        finally:
            arrived.release()
        if row.pending:
            return None
        del self.images[pos]
        if row.errors:
            return self._failed(row.rec, row.errors[min(row.errors)], row.ms)
        tiles = [t for t in row.tiles if t is not None]
        return self._out(row.rec, tiles=tiles_to_bytes(np.concatenate(tiles)), tiles_per_image=[len(t) for t in tiles],
                         preprocess_ms=row.ms)  # fmt: skip

    # -- videos ---------------------------------------------------------------------------------
    def _open_video(self, pos: int, rec: dict[str, Any]) -> None:
        done, url, data = self._arrive(pos, None), rec["video"], rec.get("video_bytes")
        if data is not None:
            limit = self.cfg.video.max_bytes
            error = TooLarge(f"{url}: {len(data)} bytes exceeds video.max_bytes={limit}") if len(data) > limit else None
            done(Fetched(url, BytesObject(data, url) if error is None else None, error, 0.0))
            return
        fetcher, limit = self.stage.fetcher, self.cfg.video.max_bytes
        self.stage.pool.submit(url, done, work=lambda host: open_ranged(fetcher, url, limit, host))

    def _video(self, pos: int, opened: Fetched) -> Iterator[tuple[int, dict[str, Any]]]:
        rec = self.rows[pos]
        self.timer.add("fetch", opened.ms)
        if opened.error is not None:
            yield pos, self._failed(rec, opened.error, opened.ms)
            return
        video_cfg, n = self.cfg.video, self.cfg.video.num_segments
        start = time.perf_counter()
        try:
            with open_video(opened.data, name=rec["video"], limits=video_cfg) as video:
                opened_ms = opened.ms + (time.perf_counter() - start) * 1000
                clips = rec.get("clips")
                if clips is None and video_cfg.clip_s is not None:
                    clips = fixed_clips(
                        video.duration_s, video_cfg.clip_s, video_cfg.clip_stride_s, rec["start"], rec["end"]
                    )
                if clips is None:
                    yield pos, self._window(rec, video, _bound(rec), n, opened_ms, {})
                    return
                for k, (lo, hi) in enumerate(clips):
                    clip = {"clip": k, "clip_start": lo, "clip_end": hi, "num_clips": len(clips)}
                    yield pos, self._window(rec, video, (lo, hi), n, opened_ms if k == 0 else 0.0, clip)
        except MediaError as e:  # the video as a whole: not found, too large, cannot be opened
            yield pos, self._failed(rec, e, opened.ms + (time.perf_counter() - start) * 1000)
        finally:
            self.video_bytes_read += getattr(opened.data, "bytes_read", 0)

    def _window(self, rec: dict[str, Any], video: Any, bound: Any, n: int, ms: float, clip: dict) -> dict[str, Any]:
        """One window's row: the card's frames for `bound`, one 448px tile each (load_video's max_num=1)."""
        start = time.perf_counter()
        try:
            with self.stage.cpu:
                start = time.perf_counter()  # its own work, not the wait for the worker's CPU
                with self.timer("decode"):
                    if clip:
                        try:
                            indices = video.indices(bound, n)
                        except OutsideVideo:
                            raise OutsideVideo(
                                f"{rec['video']}: clip {clip['clip']} [{bound[0]:g}, {bound[1]:g}] s is past the "
                                f"video's end ({video.duration_s:.3f} s, {video.num_frames} frames at {video.fps:g} fps)"
                            ) from None
                        frames = video.frames(indices)
                    else:
                        frames, _ = video.sample(bound, n)
                with self.timer("tile"):
                    tiles = [tile_image(f, max_num=1, use_thumbnail=self.cfg.use_thumbnail) for f in frames]
        except OutsideVideo as e:
            if not clip:
                raise
            return self._out(rec, status=Status.INVALID_ROW, error=str(e), **clip)
        except MediaError as e:
            if not clip:
                raise
            return self._failed(rec, e, ms + (time.perf_counter() - start) * 1000, **clip)
        ms += (time.perf_counter() - start) * 1000
        return self._out(rec, tiles=tiles_to_bytes(np.concatenate(tiles)), tiles_per_image=[len(t) for t in tiles],
                         preprocess_ms=ms, **clip)  # fmt: skip


def _bound(rec: dict[str, Any]) -> tuple[float, float] | None:
    start, end = rec["start"], rec["end"]
    if start is None and end is None:
        return None
    # the card's own defaults for an open end
    return (-100000 if start is None else float(start), 100000 if end is None else float(end))
