"""A small HTTP server on 127.0.0.1 that misbehaves on request, for the Fetcher's http(s) tests.

    server.files["/a.jpg"] = b"..."      # 200 with Content-Length
    server.failures["/flaky.jpg"] = 2    # the next 2 requests for it get 503
    GET /redirect?to=URL                 # 302 to URL
    GET /endless                         # chunked, no length, ignores Range, until the client leaves
    GET /gzip-bomb                       # Content-Encoding: gzip whatever was asked, 64 MiB of zeros
    GET /claims-large                    # Content-Length: 10 MiB, then the bytes

`requests` records (method, path, headers) of each request; `sent[path]` the body bytes
written before the client went away.
"""

import collections
import gzip
import http.server
import threading
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
            failing = self.server.failures.get(path, 0) > 0
            if failing:
                self.server.failures[path] -= 1
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
        return self._send(path, data, body)

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
        self._gzip_bomb: bytes | None = None

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

    def __enter__(self) -> "MediaHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
