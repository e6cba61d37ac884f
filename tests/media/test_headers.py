"""Image headers: sizes from the first bytes (bounded reads), the tiles they predict, and the
status the job would give, over local files and HTTP."""

import io
import random

import fsspec.implementations.local as local_fs
import numpy as np
import pytest
from PIL import Image

from internvl_batch.media.decode import DecodeConfig
from internvl_batch.media.fetch import FetchConfig, Fetcher
from internvl_batch.media.headers import HEADER_BYTES, predict_tiles, read_header
from internvl_batch.media.tiling import tile_image
from internvl_batch.status import Status
from tests.observe import jobs


def test_predicted_tiles_equal_the_tiles_tiling_makes():
    rng = random.Random(7)
    sizes = [(448, 448), (449, 448), (896, 448), (1, 4000), (4000, 1), (1344, 896), (300, 301), (5000, 400)]
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(40)]
    for w, h in sizes:
        img = Image.new("RGB", (w, h))
        for max_num in (1, 2, 6, 12):
            for thumb in (True, False):
                assert predict_tiles(w, h, max_num, thumb) == len(tile_image(img, max_num=max_num, use_thumbnail=thumb))


@pytest.fixture
def bytes_read(monkeypatch):
    """Bytes read from local files, per call."""
    reads = []
    original = local_fs.LocalFileOpener.read

    def read(self, *args):
        data = original(self, *args)
        reads.append(len(data))
        return data

    monkeypatch.setattr(local_fs.LocalFileOpener, "read", read)
    return reads


def test_header_reads_are_bounded_and_see_the_decoded_size(tmp_path, bytes_read):
    fetcher, decode = Fetcher(FetchConfig()), DecodeConfig()
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), np.uint8)).save(big)
    assert big.stat().st_size > 5_000_000
    h = read_header(str(big), fetcher, decode)
    assert (h.width, h.height, h.status) == (2000, 1500, Status.OK)
    assert sum(bytes_read) <= 2 * HEADER_BYTES

    # A JPEG whose size comes after a 200 KB ICC profile, stored rotated (EXIF orientation 6).
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.new("RGB", (1200, 500)).save(rotated, exif=exif, icc_profile=bytes(200_000))
    bytes_read.clear()
    h = read_header(str(rotated), fetcher, decode)
    assert (h.width, h.height) == (500, 1200)  # as decode_image hands it to tiling
    assert bytes_read == [HEADER_BYTES, rotated.stat().st_size]  # 64 KiB, then 512 KiB (all 205 KiB of it)
    h = read_header(str(rotated), fetcher, DecodeConfig(exif_transpose=False))
    assert (h.width, h.height) == (1200, 500)


def test_header_statuses_match_what_the_job_gives(tmp_path):
    media = jobs.write_media(tmp_path)
    fetcher, decode = Fetcher(FetchConfig()), DecodeConfig()
    assert read_header(media["corrupt"], fetcher, decode).status == Status.DECODE_ERROR
    assert read_header(media["missing"], fetcher, decode).status == Status.FETCH_ERROR
    assert read_header(media["big"], fetcher, DecodeConfig(max_pixels=1000)).status == Status.TOO_LARGE
    assert read_header(media["big"], Fetcher(FetchConfig(max_bytes=100)), decode).status == Status.TOO_LARGE
    refused = read_header(media["big"], Fetcher(FetchConfig(allow_local=False)), decode)
    assert refused.status == Status.FETCH_ERROR and "allow_local" in refused.error


def test_header_read_over_http(tmp_path):
    import http.server
    import threading

    (tmp_path / "img.png").write_bytes(_png(1300, 700))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/img.png"
        h = read_header(url, Fetcher(FetchConfig(allowed_private_hosts=["127.0.0.1"])), DecodeConfig())
        assert (h.width, h.height, h.status) == (1300, 700, Status.OK)
        refused = read_header(url, Fetcher(FetchConfig()), DecodeConfig())  # the SSRF guard holds here too
        assert refused.status == Status.FETCH_ERROR
    finally:
        server.shutdown()


def _png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()
