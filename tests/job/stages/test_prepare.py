"""The CPU stage on real servers: fetches overlap across a block's rows, embedded bytes are
media like fetched ones, videos are read by range (one open for all clips, bounded memory
whatever their size) and every clip's frames are the card's frames for its window."""

import time

import cv2
import numpy as np
import pyarrow as pa
import pytest

from internvl_batch.config import PreprocessConfig
from internvl_batch.devtools.sample_media import write_large_video
from internvl_batch.job.stages.prepare import PrepareStage
from internvl_batch.media.tiling import tile_image
from internvl_batch.records import item_schema, tiles_from_bytes
from internvl_batch.status import Status
from tests.job.test_prepare_hostile import PeakRSS
from tests.media.httpserver import MediaHTTPServer
from tests.media.test_video import card_frames, write_video

LOOPBACK = ["127.0.0.0/8"]


def _jpeg(seed: int, size=(96, 64)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def item(i: int, **media) -> dict:
    row = {f.name: None for f in item_schema()}
    return {**row, "shard": "s", "row": i, "id": f"r{i}", "tasks": ["caption"], "status": Status.OK,
            "media": "video" if media.get("video") else "image", **media}  # fmt: skip


def run(stage: PrepareStage, rows: list[dict]) -> list[dict]:
    return stage.process(pa.Table.from_pylist(rows, schema=item_schema())).to_pylist()


def stage(**preprocess) -> PrepareStage:
    fetch = {"allowed_private_hosts": LOOPBACK, **preprocess.pop("fetch", {})}
    return PrepareStage(PreprocessConfig.model_validate({"max_num": 1, "fetch": fetch, **preprocess}))


@pytest.fixture(scope="module")
def http_server():
    with MediaHTTPServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(http_server):
    http_server.reset()


# -- overlap -----------------------------------------------------------------------------------------


def test_a_blocks_fetches_overlap_and_rows_keep_their_order(http_server):
    k, delay = 16, 0.3
    for i in range(k):
        http_server.files[f"/{i}.jpg"] = _jpeg(i)
    http_server.delays["*"] = delay
    rows = [item(i, images=[f"{http_server.url}/{i}.jpg"]) for i in range(k)]
    rows.insert(5, {**item(99, images=["x"]), "status": Status.INVALID_ROW, "error": "no id"})
    s = stage(fetch={"concurrency": 8, "per_host": 8})
    run(s, rows[:1])  # warm: the tiling kernels compile on first use, the session opens
    started = time.monotonic()
    out = run(s, rows)
    elapsed = time.monotonic() - started
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["status"] for r in out].count(Status.OK) == k and out[5]["status"] == Status.INVALID_ROW
    assert elapsed < k * delay / 2, elapsed  # one at a time: 4.8 s; 8 at a time: ~0.6 s
    assert http_server.peak_active == 8
    # A row's preprocess_ms is its own fetch, decode and tile, not the queue before it.
    assert all(delay * 1000 <= r["preprocess_ms"] < delay * 1000 * 3 for r in out if r["status"] == Status.OK)


def test_rows_stream_out_as_they_are_ready(http_server):
    for i in range(6):
        http_server.files[f"/{i}.jpg"] = _jpeg(i)
    http_server.delays["/0.jpg"] = 1.0  # the first row is the slowest
    rows = [item(i, images=[f"{http_server.url}/{i}.jpg"]) for i in range(6)]
    s = stage()
    first = next(iter(s(pa.Table.from_pylist(rows, schema=item_schema()))))
    assert "r0" not in first["id"].to_pylist()  # later rows did not wait for it


def test_a_multi_image_rows_first_failing_image_decides(http_server):
    http_server.files["/ok.jpg"] = _jpeg(1)
    http_server.files["/bad.jpg"] = b"not an image"
    http_server.delays["/bad.jpg"] = 0.3  # arrives last, yet it comes first in the row
    u = http_server.url
    out = run(stage(), [item(0, images=[f"{u}/bad.jpg", f"{u}/missing.jpg", f"{u}/ok.jpg"])])
    assert out[0]["status"] == Status.DECODE_ERROR and f"{u}/bad.jpg" in out[0]["error"]


# -- embedded bytes ----------------------------------------------------------------------------------


def test_embedded_image_bytes_are_media_like_fetched_ones(http_server):
    a, b = _jpeg(1, (640, 480)), _jpeg(2, (300, 900))
    http_server.files["/a.jpg"], http_server.files["/b.jpg"] = a, b
    u = http_server.url
    s = stage(max_num=4, multi_image_max_num=4, fetch={"max_bytes": 50_000})
    fetched = run(s, [item(0, images=[f"{u}/a.jpg", f"{u}/b.jpg"])])[0]
    before = s.fetcher.stats.fetches
    embedded, mixed, big, broken = run(s, [
        item(1, images=["a.jpg", "b.jpg"], image_bytes=[a, b]),
        item(2, images=["shard.tar#a.jpg", f"{u}/b.jpg"], image_bytes=[a, None]),  # null: fetch that one
        item(3, images=["big.jpg"], image_bytes=[b"\xff\xd8" + b"\0" * 60_000]),
        item(4, images=["broken.jpg"], image_bytes=[a[:200]]),
    ])  # fmt: skip
    assert embedded["tiles"] == fetched["tiles"] == mixed["tiles"]
    assert embedded["tiles_per_image"] == fetched["tiles_per_image"]
    assert s.fetcher.stats.fetches == before + 1  # only the URL in the mixed row
    assert big["status"] == Status.TOO_LARGE and "big.jpg: 60002 bytes exceeds fetch.max_bytes=50000" in big["error"]
    assert broken["status"] == Status.DECODE_ERROR and "broken.jpg" in broken["error"]
    assert all(r["image_bytes"] is None for r in (embedded, mixed))  # tiles now: the bytes go no further


# -- videos and clips --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> str:
    """90 frames at 30 fps, each showing its number (tests/media/test_video.py)."""
    return write_video(tmp_path_factory.mktemp("clips") / "n.mp4", "mp4v", 30.0, 90)


def _card_tiles(path: str, bound, n: int) -> bytes:
    frames, _ = card_frames(path, bound, n)
    return np.concatenate([tile_image(f, max_num=1, use_thumbnail=True) for f in frames]).tobytes()


CLIPS = [[0.0, 1.0], [0.5, 2.2], [1.9, 3.0], [2.5, 9.0], [3.5, 4.0]]  # the last starts past the end (3 s)


@pytest.mark.parametrize("where", ["s3", "http", "local", "embedded"])
def test_every_clips_frames_are_the_cards_frames_for_its_window(numbered, where, s3, http_server):
    data = open(numbered, "rb").read()
    config = {"video": {"num_segments": 4}, "fetch": {"storage_options": {"s3": s3.storage_options}}}
    if where == "s3":
        s3.create_bucket("clips")
        media = {"video": s3.put_object("clips", "n.mp4", data)}
    elif where == "http":
        http_server.files["/n.mp4"] = data
        media = {"video": f"{http_server.url}/n.mp4"}
    elif where == "local":
        media = {"video": numbered}
    else:
        media = {"video": "shard.tar#n.mp4", "video_bytes": data}
    s = stage(**config)
    out = run(s, [item(0, clips=CLIPS, **media)])
    assert [r["clip"] for r in out] == list(range(5)) and {r["id"] for r in out} == {"r0"}
    assert [[r["clip_start"], r["clip_end"]] for r in out] == CLIPS and {r["num_clips"] for r in out} == {5}
    for r, bound in zip(out[:4], CLIPS):
        assert r["status"] == Status.OK, r["error"]
        assert r["tiles"] == _card_tiles(numbered, tuple(bound), 4), bound
    past = out[4]
    assert past["status"] == Status.INVALID_ROW and past["tiles_per_image"] == []
    assert (
        f"{media['video']}: clip 4 [3.5, 4] s is past the video's end (3.000 s, 90 frames at 30 fps)" in past["error"]
    )
    # one open for all five clips (embedded bytes are no fetch)
    assert s.fetcher.stats.fetches == (0 if where == "embedded" else 1)


def test_fixed_clips_from_the_config(numbered):
    s = stage(video={"num_segments": 2, "clip_s": 1.25})
    out = run(s, [item(0, video=numbered), item(1, video=numbered, start=0.5, end=1.5)])
    whole, bounded = [r for r in out if r["id"] == "r0"], [r for r in out if r["id"] == "r1"]
    assert [(r["clip"], r["clip_start"], r["clip_end"]) for r in whole] == [
        (0, 0.0, 1.25),
        (1, 1.25, 2.5),
        (2, 2.5, 3.0),
    ]
    assert [(r["clip_start"], r["clip_end"]) for r in bounded] == [(0.5, 1.5)]  # over the row's own window
    assert all(r["status"] == Status.OK and r["num_clips"] == len(whole) for r in whole)
    for r in whole:
        assert r["tiles"] == _card_tiles(numbered, (r["clip_start"], r["clip_end"]), 2)


def test_a_video_that_cannot_be_opened_is_one_row_not_one_per_clip(s3):
    s3.create_bucket("clips-bad")
    url = s3.put_object("clips-bad", "bad.mp4", b"\0\0\0\x18ftypmp42" + b"\0" * 500)
    out = run(stage(fetch={"storage_options": {"s3": s3.storage_options}}), [item(0, video=url, clips=CLIPS)])
    assert len(out) == 1 and out[0]["clip"] is None and out[0]["status"] == Status.DECODE_ERROR
    assert url in out[0]["error"]


def test_embedded_video_over_its_limit_is_too_large(numbered):
    data = open(numbered, "rb").read()
    out = run(stage(video={"max_bytes": 1000}), [item(0, video="v.mp4", video_bytes=data)])
    assert (
        out[0]["status"] == Status.TOO_LARGE
        and f"v.mp4: {len(data)} bytes exceeds video.max_bytes=1000" in out[0]["error"]
    )


@pytest.fixture(scope="module")
def big_video(tmp_path_factory) -> str:
    """~40 MB MJPEG AVI, 640x480 (devtools' write_large_video: seconds, not an encoder's minutes)."""
    return str(write_large_video(tmp_path_factory.mktemp("big") / "big.avi", 40 * 1024**2))


def test_a_video_larger_than_fetch_max_bytes_is_read_by_range_in_bounded_memory(big_video, s3, tmp_path):
    """Peak memory does not grow with the video: a 4x larger one costs what the smaller one did."""
    s3.create_bucket("clips-big")
    small = s3.put_object("clips-big", "small.avi", open(big_video, "rb").read())
    large_path = write_large_video(tmp_path / "large.avi", 160 * 1024**2)
    large = s3.put_object("clips-big", "large.avi", large_path.read_bytes())
    s = stage(fetch={"max_bytes": 1024**2, "storage_options": {"s3": s3.storage_options}},
              video={"num_segments": 8, "clip_s": 2.0})  # fmt: skip
    # The same clips of both (the first 4 s; the small one lasts 4.6 s), so only the bytes streamed differ.
    rows = lambda url: [item(0, video=url, start=0.0, end=4.0)]  # noqa: E731
    run(s, rows(small))  # warm: threads, decoder, the loopback server
    peaks = {}
    for name, url in (("small", small), ("large", large)):
        with PeakRSS() as memory:
            out = run(s, rows(url))
        assert [r["status"] for r in out] == [Status.OK] * 2, out[0]["error"]  # clips 0-2, 2-4
        assert tiles_from_bytes(out[1]["tiles"], out[1]["tiles_per_image"]).shape == (8, 448, 448, 3)
        peaks[name] = memory.peak_mb - memory.base_mb
    print(f"\npeak RSS growth: 40 MB video +{peaks['small']:.0f} MB, 160 MB video +{peaks['large']:.0f} MB")
    assert peaks["large"] < peaks["small"] + 16  # 120 MB more video, no more memory
    assert peaks["large"] < 100


def test_a_server_that_ignores_range_gets_the_whole_fetch_under_its_limit(numbered, http_server):
    data = open(numbered, "rb").read()
    http_server.files["/n.mp4"] = data
    http_server.no_range.add("/n.mp4")
    u = f"{http_server.url}/n.mp4"
    ok = run(stage(video={"num_segments": 4}), [item(0, video=u)])[0]
    assert ok["status"] == Status.OK and ok["tiles"] == _card_tiles(numbered, None, 4)
    refused = run(stage(fetch={"max_bytes": 1000}), [item(0, video=u)])[0]
    assert refused["status"] == Status.TOO_LARGE and "exceeds fetch.max_bytes=1000" in refused["error"]


def test_a_playlist_posing_as_a_video_opens_nothing_it_names(http_server, tmp_path):
    http_server.files["/secret.ts"] = b"\x47" * 188 * 10
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{http_server.url}/secret.ts\n#EXT-X-ENDLIST\n"
    path = tmp_path / "v.mp4"
    path.write_text(playlist)
    http_server.files["/v.mp4"] = playlist.encode()
    out = run(stage(), [item(0, video=str(path)), item(1, video=f"{http_server.url}/v.mp4"),
                        item(2, video="x.mp4", video_bytes=playlist.encode())])  # fmt: skip
    assert all(r["status"] == Status.DECODE_ERROR and "playlist" in r["error"] for r in out)
    assert not [r for r in http_server.requests if r[1] == "/secret.ts"]


def test_a_storage_failure_mid_video_is_a_fetch_error_not_frames(big_video, http_server):
    """The video opens, then every read fails: the row is fetch_error, whatever decord made of the cut stream."""
    http_server.files["/big.avi"] = open(big_video, "rb").read()
    http_server.fail_after["/big.avi"] = 1  # the opening GET (the first block) only
    url = f"{http_server.url}/big.avi"
    out = run(stage(fetch={"max_attempts": 2, "backoff_initial_s": 0.01}), [item(0, video=url)])
    assert out[0]["status"] == Status.FETCH_ERROR and out[0]["tiles_per_image"] == []
    assert f"{url}: giving up after 2 attempts" in out[0]["error"] and "503" in out[0]["error"]


@pytest.mark.parametrize(
    "text",
    [
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\n",  # SDP: RTP/UDP out
        "s=Ñame\nc=IN IP4 10.0.0.1\nm=video 5004 RTP/AVP 96\n",  # an SDP line anywhere, non-ASCII too
        "ffconcat version 1.0\nfile 'http://169.254.169.254/latest/meta-data'\n",
        '<?xml version="1.0"?><MPD><BaseURL>http://10.0.0.1/</BaseURL></MPD>',
        "\ufeff#EXTM3U\nhttp://169.254.169.254/x.ts\n",
    ],
    ids=["sdp", "sdp-anywhere", "concat", "dash", "hls-bom"],
)
def test_text_posing_as_a_video_is_refused(text):
    out = run(stage(), [item(0, video="x.mp4", video_bytes=text.encode())])
    assert out[0]["status"] == Status.DECODE_ERROR and "cannot open video: it is text" in out[0]["error"]


def test_a_block_abandoned_midway_gives_its_bytes_back(http_server):
    """Ray re-runs a block that failed (or drops its consumer): the worker's byte budget must
    not keep what that block's fetches were holding, or later blocks would wait forever."""
    for i in range(12):
        http_server.files[f"/{i}.jpg"] = _jpeg(i)
    http_server.delays["*"] = 0.2
    s = stage(fetch={"concurrency": 4})
    rows = [item(i, images=[f"{http_server.url}/{i}.jpg"]) for i in range(12)]
    tables = s(pa.Table.from_pylist(rows, schema=item_schema()))
    next(tables)
    tables.close()  # the consumer goes away with fetches in flight and arrivals unread
    deadline = time.monotonic() + 10
    while (s.pool.budget.used or s.pool._active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.pool.budget.used == 0
    assert len(run(s, rows)) == 12  # the worker goes on
