"""A fault-injecting HTTP proxy in front of the test S3 server (or any HTTP server), on 127.0.0.1.

    with FaultProxy(s3.endpoint_url, seed=7) as proxy:
        proxy.set_faults("/bucket/media/", Faults(error_500=0.01, slow_down_503=0.01, reset=0.01, stall=0.01))
        options = proxy.s3_options(s3.storage_options)   # s3fs options that go through the proxy
        ...
        proxy.injected        # Counter[(kind, request type)] of faults injected
        proxy.requests        # Counter[request type] of requests seen

Requests are forwarded byte for byte (the Host header too, so SigV4 signatures still
verify upstream). For a request whose path starts with a configured prefix (the longest
wins; none: no faults), one of these may be injected, each with its own probability:

    error_500      answered `500 InternalError` (S3 XML body); upstream never sees the request
    slow_down_503  answered `503 SlowDown`; upstream never sees the request
    reset          forwarded, then the connection is reset halfway through the response body
                   (responses without a body pass untouched: there is no "mid-body" to cut,
                   and aiohttp silently retries a reset before any byte on a reused connection)
    stall          forwarded, then the response stalls `stall_s` seconds: before the headers
                   when there is no body, halfway through the body otherwise

The choice is deterministic: it depends on the seed, the method, the path and query, and
how many times that same request was seen before, never on thread timing. Request types:
HEAD, GET (an object), LIST (GET on a bucket), PUT, POST, DELETE.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import http.client
import http.server
import random
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

KINDS = ("error_500", "slow_down_503", "reset", "stall")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)
_ERRORS = {
    "error_500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "slow_down_503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class Faults:
    """Probabilities (0..1, summing to at most 1) of each fault for one path prefix."""

    error_500: float = 0.0
    slow_down_503: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    stall_s: float = 2.0
    # Request types that may be faulted (HEAD, GET, LIST, PUT, POST, DELETE); None: all.
    request_types: frozenset[str] | None = None

    def __post_init__(self):
        if sum(getattr(self, k) for k in KINDS) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum above 1: {self}")


def request_type(method: str, path: str) -> str:
    """The S3 operation family of a path-style request."""
    has_key = "/" in path.lstrip("/").rstrip("/")
    if method == "GET":
        return "GET" if has_key else "LIST"
    return method


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def setup(self):
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self):
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):  # the client went away, or we reset the connection ourselves
            super().finish()

    def do_GET(self):
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _proxy(self) -> None:
        body = self._read_body()
        path = urlsplit(self.path).path
        kind_of_request = request_type(self.command, path)
        fault, stall_s = self.server.decide(self.command, self.path, path, kind_of_request)
        if fault in _ERRORS:
            self.server.count(fault, kind_of_request)
            return self._error(fault)
        try:
            status, reason, headers, data = self._forward(body)
        except OSError:
            return self._send_raw(502, "Bad Gateway", [("Content-Length", "0")], b"", head_only=True)
        has_body = self.command != "HEAD" and len(data) > 0
        if fault == "reset" and not has_body:
            fault = None
        if fault is not None:
            self.server.count(fault, kind_of_request)
        if fault == "stall" and not has_body and self.server.stopping.wait(stall_s):
            return None
        head = self._head(status, reason, headers, len(data) if self.command != "HEAD" else None)
        if fault in ("reset", "stall"):
            half = len(data) // 2
            if not self._write(head + data[:half]):
                return None
            if fault == "reset":
                return self._reset()
            if self.server.stopping.wait(stall_s):
                return None
            self._write(data[half:])
            return None
        self._write(head + (b"" if self.command == "HEAD" else data))
        return None

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            if self._upstream is None:
                host, port = self.server.upstream
                self._upstream = http.client.HTTPConnection(host, port, timeout=60)
            try:
                self._upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self._upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    self._upstream.putheader("Content-Length", str(len(body)))
                self._upstream.endheaders(body or None)
                response = self._upstream.getresponse()
                data = response.read()
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                return response.status, response.reason, headers, data
            except (OSError, http.client.HTTPException):
                # A kept-alive upstream connection the server closed: one fresh try.
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            if length is not None and name.lower() == "content-length":
                continue
            lines.append(f"{name}: {value}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _error(self, fault: str) -> None:
        status, reason, code, message = _ERRORS[fault]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{self.path}</Resource><RequestId>faultproxy</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        self._send_raw(status, reason, headers, body, head_only=self.command == "HEAD")

    def _send_raw(self, status: int, reason: str, headers: list, body: bytes, *, head_only: bool) -> None:
        self._write(self._head(status, reason, headers, None) + (b"" if head_only else body))

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:
            self.close_connection = True
            return False

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, the client sees a reset mid-body."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.rfile.close()  # the last reference: the descriptor closes now, not at finish()

    def log_message(self, *args):
        pass


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handlers must not hold up stop()

    def __init__(self, upstream: tuple[str, int], seed: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.seed = seed
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.faults: dict[str, Faults] = {}
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self.injected: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str | None]] = []

    def decide(self, method: str, target: str, path: str, kind_of_request: str) -> tuple[str | None, float]:
        with self.lock:
            self.requests[kind_of_request] += 1
            nth = self.seen[(method, target)]
            self.seen[(method, target)] += 1
            prefixes = [p for p in self.faults if path.startswith(p)]
            faults = self.faults[max(prefixes, key=len)] if prefixes else None
        fault = None
        if faults is not None and (faults.request_types is None or kind_of_request in faults.request_types):
            draw = random.Random(f"{self.seed}|{method}|{target}|{nth}").random()
            edge = 0.0
            for kind in KINDS:
                edge += getattr(faults, kind)
                if draw < edge:
                    fault = kind
                    break
        with self.lock:
            self.log.append((kind_of_request, target, fault))
        return fault, (faults.stall_s if faults is not None else 0.0)

    def count(self, fault: str, kind_of_request: str) -> None:
        with self.lock:
            self.injected[(fault, kind_of_request)] += 1


class FaultProxy:
    """See the module docstring. `upstream` is the URL of the server to forward to."""

    def __init__(self, upstream: str, *, seed: int = 0, faults: dict[str, Faults] | None = None):
        parts = urlsplit(upstream)
        self._server = _ProxyServer((parts.hostname or "127.0.0.1", parts.port or 80), seed)
        self._server.faults.update(faults or {})
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def injected(self) -> collections.Counter[tuple[str, str]]:
        with self._server.lock:
            return collections.Counter(self._server.injected)

    @property
    def requests(self) -> collections.Counter[str]:
        with self._server.lock:
            return collections.Counter(self._server.requests)

    @property
    def log(self) -> list[tuple[str, str, str | None]]:
        """(request type, path and query, fault injected or None) per request, in arrival order."""
        with self._server.lock:
            return list(self._server.log)

    def injected_total(self, kind: str | None = None, request_type: str | None = None) -> int:
        return sum(
            n
            for (k, t), n in self.injected.items()
            if (kind is None or k == kind) and (request_type is None or t == request_type)
        )

    def set_faults(self, prefix: str, faults: Faults) -> None:
        with self._server.lock:
            self._server.faults[prefix] = faults

    def clear(self) -> None:
        """No faults, counters and the request history at zero (the determinism starts over)."""
        with self._server.lock:
            self._server.faults.clear()
            self._server.seen.clear()
            self._server.injected.clear()
            self._server.requests.clear()
            self._server.log.clear()

    def s3_options(self, storage_options: dict[str, Any]) -> dict[str, Any]:
        """A copy of s3fs `storage_options` whose endpoint is this proxy."""
        options = copy.deepcopy(storage_options)
        options.setdefault("client_kwargs", {})["endpoint_url"] = self.endpoint_url
        return options

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
