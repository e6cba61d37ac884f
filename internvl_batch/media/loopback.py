"""Hands a ranged object to decord as a URL that only this process can serve.

decord reads a file object whole into memory before decoding (`bytearray(uri.read())`),
so a seekable Python file gains nothing for a long video. What decord does read piecewise
is a URL: FFmpeg's own http protocol asks for byte ranges as it seeks. So each worker runs
a small HTTP server on 127.0.0.1 that serves the videos it is decoding, by Range, from a
`BlockReader` (the object's bytes, read through the worker's Fetcher under the fetch
policy). FFmpeg only ever talks to this server, never to the media's host, so the SSRF
policy, retries and credentials stay where they are. Each video is served under a fresh
unguessable token only while it is being decoded.

A read that fails (retries spent) is recorded on the served entry and cuts the response
short; the video's reader then reports that error rather than whatever the decoder made
of a cut stream (`Served.error`).
"""

from __future__ import annotations

import http.server
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from internvl_batch.media.errors import FetchError, MediaError
from internvl_batch.media.ranged import BlockReader, RangedObject
from internvl_batch.storage.classify import describe

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_READ_THREADS = 8
_SEND_BUFFER = 256 * 1024


@dataclass
class Served:
    url: str
    reader: BlockReader
    error: MediaError | None = None
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # FFmpeg asks for "bytes=N-" and drops the response when it seeks: a small send buffer
        # stops this side soon after it stopped reading, instead of megabytes later.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        entry = self.server.entries.get(self.path.lstrip("/"))
        if entry is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with entry.lock:
            entry.requests += 1
        size = entry.reader.size
        match = _RANGE.match(self.headers.get("Range", "").strip())
        start = int(match.group(1)) if match else 0
        end = min(int(match.group(2)) + 1, size) if match and match.group(2) else size
        if start >= size or start >= end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not body:
            return
        try:
            for chunk in entry.reader.stream(start, end):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the decoder seeked elsewhere and dropped this response
        except MediaError as e:
            entry.error = entry.error or e
            self.close_connection = True  # a short body: FFmpeg sees the cut
        except Exception as e:  # never leave the decoder waiting on a half-sent response
            entry.error = entry.error or FetchError(f"{entry.reader.obj.label}: {describe(e)}")
            self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    entries: dict[str, Served]


class Loopback:
    """One per worker process, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._reads: ThreadPoolExecutor | None = None

    def _start(self) -> _Server:
        with self._lock:
            if self._server is None:
                server = _Server(("127.0.0.1", 0), _Handler)
                server.entries = {}
                threading.Thread(target=server.serve_forever, name="video-loopback", daemon=True).start()
                self._reads = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="video-read")
                self._server = server
            return self._server

    @contextmanager
    def serve(self, obj: RangedObject) -> Iterator[Served]:
        server = self._start()
        token = secrets.token_urlsafe(24)
        host, port = server.server_address[:2]
        entry = Served(f"http://{host}:{port}/{token}", BlockReader(obj, self._reads))
        server.entries[token] = entry
        try:
            yield entry
        finally:
            del server.entries[token]


_LOOPBACK = Loopback()


def loopback() -> Loopback:
    return _LOOPBACK
