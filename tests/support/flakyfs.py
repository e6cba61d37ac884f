"""An fsspec filesystem wrapper that fails on purpose, for the job's storage retries.

    fs = FlakyFS(real_fs, [Fault("open", ConnectionResetError, times=2, after=100)])

A `Fault` fails the first `times` calls of one method (-1: every call) whose path contains
`match`. For "open", the file serves reads that end within its first `after` bytes and
raises on the one that would cross them, so a reader fails mid-way, as on a connection cut
mid-body; for the other methods the call raises
before doing anything, or after it (`after_call`: the write happened but the caller saw an
error, as with a timeout on a PUT the store completed). `fs.injected` counts what fired.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    method: str  # open, pipe_file, cat_file, info, glob, find, rm
    error: Callable[[], BaseException]
    times: int = 1
    after: int = 0
    match: str = ""
    after_call: bool = False


class _CutFile(io.BufferedIOBase):
    """The file's bytes, raising once a read reaches `cut`. Not a BytesIO: pyarrow would
    take a BytesIO's whole buffer instead of reading it."""

    def __init__(self, data: bytes, cut: int, error: BaseException):
        super().__init__()
        self._data, self._cut, self._error = io.BytesIO(data), cut, error

    def _read(self, read, n: int | None) -> bytes:
        """A read that would cross the cut raises instead: what reaches the caller is whole."""
        start = self._data.tell()
        data = read(-1 if n is None else n)
        if start + len(data) > self._cut:
            self._data.seek(start)
            raise self._error
        return data

    def read(self, n: int | None = -1) -> bytes:
        return self._read(self._data.read, n)

    def read1(self, n: int = -1) -> bytes:
        return self.read(n)

    def readline(self, limit: int | None = -1) -> bytes:
        return self._read(self._data.readline, limit)

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __iter__(self):
        return self

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._data.seek(pos, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class FlakyFS:
    def __init__(self, fs: Any, faults: list[Fault]):
        self._fs, self._faults = fs, faults
        self._left = [f.times for f in faults]
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def _fault(self, method: str, path: str) -> Fault | None:
        self.calls[method] += 1
        for i, f in enumerate(self._faults):
            if f.method == method and f.match in str(path) and self._left[i] != 0:
                self._left[i] -= 1
                self.injected[method] += 1
                return f
        return None

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        fault = self._fault(method, path)
        if fault is not None and not fault.after_call:
            raise fault.error()
        result = getattr(self._fs, method)(path, *args, **kwargs)
        if fault is not None:
            raise fault.error()
        return result

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        fault = self._fault("open", path) if mode == "rb" else None
        if fault is None:
            return self._fs.open(path, mode, **kwargs)
        with self._fs.open(path, mode, **kwargs) as f:
            data = f.read()
        return _CutFile(data, fault.after, fault.error())

    def pipe_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("pipe_file", path, *args, **kwargs)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("cat_file", path, *args, **kwargs)

    def info(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("info", path, *args, **kwargs)

    def glob(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("glob", path, *args, **kwargs)

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("find", path, *args, **kwargs)

    def rm(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._call("rm", path, *args, **kwargs)
