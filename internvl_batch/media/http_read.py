"""Bounded reads of http(s) bodies through fsspec's HTTP filesystem (its aiohttp session).

Not fsspec's cat_file: it reads the whole response into memory, and a server that ignores
the Range header (or sends no length, or a compressed body) would make that unbounded.
Both readers here stop at what they were asked for, whatever the server sends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from internvl_batch.media.errors import TooLarge

_CHUNK = 256 * 1024
# Media is compressed already; identity keeps Content-Length the true size.
_IDENTITY = {"Accept-Encoding": "identity"}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class RangeIgnored(Exception):
    """The server answered a ranged GET with the whole object (200), or gave no usable range."""


def _kwargs(fs: Any, extra: dict[str, str]) -> dict[str, Any]:
    kwargs = dict(fs.kwargs)
    kwargs["headers"] = {**kwargs.get("headers", {}), **_IDENTITY, **extra}
    return kwargs


async def stream_http(fs: Any, url: str, limit: int, reserve: Callable[[int | None], None] | None = None) -> bytes:
    """One GET, read in chunks and cut off past `limit`. `reserve(size)` is called (in a
    thread: it may block) once the headers say how large the body is, before it is read."""
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), **_kwargs(fs, {})) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        response.raise_for_status()
        size = response.content_length
        if size is not None and size > limit:
            raise TooLarge(f"{url}: {size} bytes exceeds fetch.max_bytes={limit}")
        if reserve is not None:
            await asyncio.get_running_loop().run_in_executor(None, reserve, size)
        data = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise TooLarge(f"{url}: more than {limit} bytes, exceeds fetch.max_bytes={limit}")
    return bytes(data)


async def range_http(fs: Any, url: str, start: int, end: int) -> tuple[bytes, int]:
    """Bytes [start, end) of the object and its total size, by one ranged GET. Raises
    RangeIgnored when the server does not answer with that range (then nothing past the
    headers is read)."""
    session = await fs.set_session()
    headers = {"Range": f"bytes={start}-{end - 1}"}
    async with session.get(fs.encode_url(url), **_kwargs(fs, headers)) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        if response.status == 416:  # past the end: nothing there
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit():
                return b"", int(total)
            raise RangeIgnored(f"{url}: 416 without the object's size")
        response.raise_for_status()
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if response.status != 206 or match is None or int(match.group(1)) != start or match.group(3) == "*":
            raise RangeIgnored(f"{url}: the server did not answer the range request (status {response.status})")
        want = min(end, int(match.group(2)) + 1) - start
        data = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) >= want:
                break
    if len(data) < want:
        raise ConnectionResetError(f"{url}: the body ended after {len(data)} of {want} bytes")
    return bytes(data[:want]), int(match.group(3))
