"""One record -> one row: every media shape a column may hold, and the names embedded media get."""

from __future__ import annotations

import base64

import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers.rows import parse_row
from tests.support.datasets import data_uri

CFG = InputConfig(path="unused")
PNG, JPG = b"\x89PNG fake", b"\xff\xd8 fake"


def row(image=None, video=None, **rec):
    return parse_row({"id": "r1", "image": image, "video": video, **rec}, CFG, "f#1", ("label",))


@pytest.mark.parametrize(
    "image,names,data",
    [
        ("s3://b/a.jpg", ["s3://b/a.jpg"], None),
        (["s3://b/a.jpg", "s3://b/b.jpg"], ["s3://b/a.jpg", "s3://b/b.jpg"], None),
        (PNG, ["r1#image-0"], [PNG]),
        (bytearray(PNG), ["r1#image-0"], [PNG]),
        ({"bytes": PNG, "path": "cat.png"}, ["cat.png"], [PNG]),  # HF Image: bytes win, path is its name
        ({"bytes": None, "path": "s3://b/a.jpg"}, ["s3://b/a.jpg"], None),  # no bytes: the path is fetched
        ({"bytes": PNG, "path": None}, ["r1#image-0"], [PNG]),
        ([{"bytes": PNG, "path": "a.png"}, {"bytes": None, "path": "/m/b.jpg"}], ["a.png", "/m/b.jpg"], [PNG, None]),
        ([PNG, "s3://b/x.jpg", JPG], ["r1#image-0", "s3://b/x.jpg", "r1#image-2"], [PNG, None, JPG]),
        (data_uri(PNG), ["r1#image-0"], [PNG]),  # JSON: a data: URI ...
        ({"bytes": base64.b64encode(JPG).decode(), "path": "x.jpg"}, ["x.jpg"], [JPG]),  # ... or base64 bytes
    ],
    ids=[
        "url",
        "urls",
        "bytes",
        "bytearray",
        "struct",
        "struct-path",
        "struct-no-path",
        "structs",
        "mixed",
        "data-uri",
        "base64-struct",
    ],  # fmt: skip
)
def test_image_shapes(image, names, data):
    r = row(image)
    assert r.error is None, r.error
    assert (r.images, r.image_bytes, r.media) == (names, data, "image")
    item = r.item(["t"], "s", 0)
    assert (item["images"], item["image_bytes"]) == (names, data)


@pytest.mark.parametrize(
    "video,name,data",
    [
        ("s3://b/v.mp4", "s3://b/v.mp4", None),
        (b"\x00\x00\x00 ftyp", "r1#video", b"\x00\x00\x00 ftyp"),
        ({"bytes": b"mp4", "path": "clip.mp4"}, "clip.mp4", b"mp4"),
        ({"bytes": None, "path": "s3://b/v.mp4"}, "s3://b/v.mp4", None),
    ],
)
def test_video_shapes(video, name, data):
    r = row(video=video)
    assert r.error is None and (r.video, r.video_bytes, r.media) == (name, data, "video")


@pytest.mark.parametrize(
    "image,message",
    [
        ({"bytes": None, "path": None}, "non-empty list"),
        ({"other": 1}, "non-empty list"),
        ([PNG, 3], "non-empty list"),
        (b"", "non-empty list"),  # empty bytes are no image
        ("data:image/png,notbase64", "must be base64"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ({"bytes": "***", "path": "x"}, "not valid base64"),
    ],
)
def test_bad_media_is_an_invalid_row(image, message):
    r = row(image)
    assert r.error is not None and message in r.error and r.id == "r1"


def test_a_list_of_videos_is_refused():
    assert "one video per row" in row(video=["a.mp4", "b.mp4"]).error


def test_prompt_columns_travel_as_text():
    r = row("a.jpg", label=3)
    assert r.values == {"label": "3"}
    assert row("a.jpg").values == {"label": None}  # missing: the task that names it fails, not the row
    assert '"label": "3"' in r.item(["t"], "s", 0)["prompt_values"]
