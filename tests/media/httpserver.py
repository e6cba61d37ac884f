"""A small HTTP server on 127.0.0.1 that misbehaves on request, for the Fetcher's http(s) tests.

    server.files["/a.jpg"] = b"..."      # 200 with Content-Length; 206 for a Range request
    server.failures["/flaky.jpg"] = 2    # the next 2 requests for it get 503
    server.fail_after["/v.mp4"] = 1      # 503 for every request for it after the first one
    server.delays["/slow.jpg"] = 0.3     # seconds before answering it ("*": every path)
    server.no_range.add("/a.jpg")        # answer Range requests for it with the whole file (200)
    GET /redirect?to=URL                 # 302 to URL
    GET /endless                         # chunked, no length, ignores Range, until the client leaves
    GET /gzip-bomb                       # Content-Encoding: gzip whatever was asked, 64 MiB of zeros
    GET /claims-large                    # Content-Length: 10 MiB, then the bytes

`requests` records (method, path, headers) of each request; `sent[path]` the body bytes
written before the client went away; `connections` the client (address, port) pairs seen;
`peak_active` the most requests answered at once.
"""

import collections
import gzip
import http.server
import re
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

ENDLESS_CAP = 256 * 1024**2
GZIP_BOMB_SIZE = 64 * 1024**2


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def do_HEAD(self):
        self._respond(body=False)

    def do_GET(self):
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        with self.server.lock:
            self.server.requests.append((self.command, path, dict(self.headers)))
            self.server.connections.add(self.client_address)
            failing = self.server.failures.get(path, 0) > 0
            if failing:
                self.server.failures[path] -= 1
            self.server.served[path] += 1
            failing = failing or self.server.served[path] > self.server.fail_after.get(path, 1 << 62)
            self.server.active += 1
            self.server.peak_active = max(self.server.peak_active, self.server.active)
        try:
            delay = self.server.delays.get(path, self.server.delays.get("*", 0.0))
            if delay:
                time.sleep(delay)
            return self._answer(path, parts, body, failing)
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _answer(self, path, parts, body: bool, failing: bool) -> None:
        if failing:
            return self._status(503)
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == "/endless":
            return self._endless(path, body)
        if path == "/gzip-bomb":
            return self._send(path, self.server.gzip_bomb(), body, {"Content-Encoding": "gzip"})
        if path == "/claims-large":
            return self._send(path, b"\0" * (10 * 1024**2), body)
        data = self.server.files.get(path)
        if data is None:
            return self._status(404)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and path not in self.server.no_range:
            return self._send_range(path, data, body, int(match.group(1)), match.group(2))
        return self._send(path, data, body)

    def _send_range(self, path: str, data: bytes, body: bool, start: int, last: str) -> None:
        end = min(int(last) + 1, len(data)) if last else len(data)
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            for at in range(start, end, 65536):
                if not self._write(path, data[at : min(end, at + 65536)]):
                    return

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, path: str, data: bytes, body: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            for start in range(0, len(data), 65536):
                if not self._write(path, data[start : start + 65536]):
                    return

    def _endless(self, path: str, body: bool) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        if not body:
            return
        chunk = b"\0" * 65536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while self.server.sent[path] < ENDLESS_CAP and self._write(path, framed, counted=len(chunk)):
            pass

    def _write(self, path: str, data: bytes, counted: int | None = None) -> bool:
        """Write, counting body bytes; False once the client has gone."""
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
            return False
        with self.server.lock:
            self.server.sent[path] += len(data) if counted is None else counted
        return True

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.failures: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sent: collections.Counter[str] = collections.Counter()
        self.delays: dict[str, float] = {}
        self.no_range: set[str] = set()
        self.fail_after: dict[str, int] = {}
        self.served: collections.Counter[str] = collections.Counter()
        self.connections: set[tuple[str, int]] = set()
        self.active = self.peak_active = 0
        self._gzip_bomb: bytes | None = None

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client closing its idle keep-alive connection
        super().handle_error(request, client_address)

    def gzip_bomb(self) -> bytes:
        if self._gzip_bomb is None:
            self._gzip_bomb = gzip.compress(b"\0" * GZIP_BOMB_SIZE, compresslevel=9)
        return self._gzip_bomb


class MediaHTTPServer:
    def __init__(self):
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __getattr__(self, name):
        # files, failures, requests, sent: the live server state
        return getattr(self._server, name)

    def reset(self) -> None:
        with self._server.lock:
            self._server.requests.clear()
            self._server.sent.clear()
            self._server.failures.clear()
            self._server.delays.clear()
            self._server.no_range.clear()
            self._server.fail_after.clear()
            self._server.served.clear()
            self._server.connections.clear()
            self._server.peak_active = 0

    def __enter__(self) -> "MediaHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
