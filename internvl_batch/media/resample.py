"""Pillow 13's `Image.resize(size)` (bicubic, whole image), ported bit-exactly to numba.

Same coefficients, same 22-bit fixed point and rounding, same per-pass uint8 clipping,
same pass order as Pillow 13. Results are written in place into (T, th, tw, 3) uint8 tile
grids; several targets of one source (tile grid and thumbnail) share one read of its rows,
taken zero-copy from Pillow's memory through the Arrow C interface.

`pillow==13.0.0` is pinned because Pillow 13 changed which pass runs first; if the pin
moves, `_vertical_first` and the tests against `card_reference` must move with it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


# Pillow's fixed-point format for 8-bit resampling (Resample.c: PRECISION_BITS = 32 - 8 - 2).
_PRECISION_BITS = 22
# Rows transposed together by the horizontal pass: 16 rows x 3 channels = 48 int32 lanes
# (six AVX2 registers) per multiply-add.
_ROW_BLOCK = 16
# Source rows handed to the horizontal pass per call when streaming out of Pillow: small
# enough to stay in cache, large enough that per-call overhead is noise.
_STREAM_ROWS = 128


# ------------------------------------------------------------------------------ resize


@dataclass(frozen=True)
class Target:
    """Resize the source to (width, height) and write it into `tiles`, `cols` per row."""

    width: int
    height: int
    tiles: np.ndarray  # (T, th, tw, 3) uint8, T = cols * rows
    cols: int


def _vertical_first(src_w: int, src_h: int, out_w: int, out_h: int) -> bool:
    """Pillow 13's pass order (python-pillow/Pillow#9549), found and verified by testing:
    the vertical pass runs first when the height shrinks by more than twice as many
    pixels as the width does. The first pass's output is clipped to uint8, so the order
    changes results."""
    return out_h < src_h and 2 * (src_w - out_w) < src_h - out_h


def resize_into(src: Rows, targets: list[Target]) -> None:
    """`Image.resize(size)` (bicubic, whole image) of src for each target, as Pillow 13 does it."""
    kern = _kernels()
    w_in, h_in = src.width, src.height
    horizontal_first: list[_Pass] = []
    for t in targets:
        need_h, need_v = t.width != w_in, t.height != h_in
        if not need_h and not need_v:  # Pillow returns a copy
            _copy_into(src.full(), t)
        elif not need_h:
            kern.vertical(src.full(), *_coefficients(h_in, t.height), t.tiles, t.cols)
        elif need_v and _vertical_first(w_in, h_in, t.width, t.height):
            pixels = src.full()
            inter = np.empty((1, t.height, w_in, pixels.shape[2]), np.uint8)
            kern.vertical(pixels, *_coefficients(h_in, t.height), inter, 1)
            _horizontal(ArrayRows(inter[0]), [_Pass(t, t.tiles, t.cols)])
        elif need_v:  # horizontal pass into an intermediate, vertical pass below
            horizontal_first.append(_Pass(t, np.empty((1, h_in, t.width, 3), np.uint8), 1))
        else:
            horizontal_first.append(_Pass(t, t.tiles, t.cols))
    if horizontal_first:
        _horizontal(src, horizontal_first)
    for p in horizontal_first:
        if p.dest is not p.target.tiles:
            kern.vertical(p.dest[0], *_coefficients(h_in, p.target.height), p.target.tiles, p.target.cols)


@dataclass(frozen=True)
class _Pass:
    """A horizontal pass for `target`, written into the tile grid `dest` (`cols` per row)."""

    target: Target
    dest: np.ndarray
    cols: int


def _copy_into(pixels: np.ndarray, t: Target) -> None:
    th, tw = t.tiles.shape[1:3]
    rows = t.height // th
    grid = t.tiles.reshape(rows, t.cols, th, tw, 3)
    grid[:] = pixels[..., :3].reshape(rows, th, t.cols, tw, 3).swapaxes(1, 2)


_NO_TILES = np.empty((0, 1, 1, 3), np.uint8)


def _horizontal(src: Rows, passes: list[_Pass]) -> None:
    """Run one or two horizontal passes off a single read of the source rows.

    The kernel takes both passes' outputs as one stacked coefficient table and splits
    the results between the two destinations.
    """
    if len(passes) > 2:
        raise ValueError("the horizontal kernel writes at most two destinations")
    coefs = [_coefficients(src.width, p.target.width) for p in passes]
    split = passes[0].target.width
    weights = np.zeros((sum(p.target.width for p in passes), max(c[0].shape[1] for c in coefs)), np.int32)
    row = 0
    for w, _, _ in coefs:
        weights[row : row + w.shape[0], : w.shape[1]] = w
        row += w.shape[0]
    first = np.concatenate([c[1] for c in coefs])
    count = np.concatenate([c[2] for c in coefs])
    a = passes[0]
    b = passes[1] if len(passes) == 2 else _Pass(a.target, _NO_TILES, 1)
    kern = _kernels()
    for row0, rows in src.chunks():
        kern.horizontal(rows, row0, weights, first, count, split, a.dest, a.cols, b.dest, b.cols)


# -------------------------------------------------------------------- source pixel rows


class Rows(Protocol):
    """Source pixels as (H, W, C) uint8 rows, C = 3 (RGB) or 4 (Pillow's RGBX storage)."""

    width: int
    height: int

    def full(self) -> np.ndarray:
        """All rows as one array."""

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) pieces covering the image top to bottom."""


class ArrayRows:
    def __init__(self, pixels: np.ndarray) -> None:
        self._pixels = pixels
        self.height, self.width = pixels.shape[:2]

    def full(self) -> np.ndarray:
        return self._pixels

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self._pixels


class PillowRows:
    """An RGB PIL image's own memory, exported zero-copy through the Arrow C interface.

    `np.asarray(img)` would repack every pixel from Pillow's 4-byte RGBX storage to 3
    bytes through `tobytes`, costing more than the whole resize of a small image. Pillow
    keeps rows in arena blocks (16 MiB by default); an image spanning several blocks
    cannot be exported whole, so it is streamed as row crops, each small enough to fit
    one block. (Should a crop still not fit, e.g. one row of a 4M-pixel-wide image, it
    falls back to `np.asarray`: slower, same pixels.)
    """

    def __init__(self, img: Image.Image) -> None:
        img.load()
        self._img = img
        self.width, self.height = img.size
        self._view = _export(img)

    def full(self) -> np.ndarray:
        if self._view is None:  # only for rare pass orders on big images
            self._view = np.asarray(self._img)
        return self._view

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._view is not None:
            yield 0, self._view
            return
        for row0 in range(0, self.height, _STREAM_ROWS):
            crop = self._img.crop((0, row0, self.width, min(self.height, row0 + _STREAM_ROWS)))
            rows = _export(crop)
            yield row0, (np.asarray(crop) if rows is None else rows)


def _export(img: Image.Image) -> np.ndarray | None:
    """(H, W, 4) read-only view of an RGB image's memory, or None if not contiguous."""
    import pyarrow as pa

    try:
        arr = pa.array(img)
    except ValueError:
        return None
    data = arr.buffers()[-1]
    return np.frombuffer(data, np.uint8, count=img.width * img.height * 4).reshape(img.height, img.width, 4)


# --------------------------------------------------------- Pillow's bicubic coefficients


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Resample.c bicubic_filter with a = -0.5, op for op (the float rounding must match).
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image resize.

    Returns (weights int32 (out, ksize), first input index, tap count), per output pixel.
    Same double-precision ops in the same order as the C code, vectorised over outputs:
    taps are accumulated in order (np.sum's pairwise sum would round differently).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    ss = 1.0 / filterscale
    w = np.zeros((out_size, ksize))
    total = np.zeros(out_size)
    for t in range(ksize):
        wt = np.where(t < count, _bicubic(((t + first) - center + 0.5) * ss), 0.0)
        w[:, t] = wt
        total = total + wt
    nonzero = total != 0.0
    w[nonzero] /= total[nonzero, None]
    fixed = w * (1 << _PRECISION_BITS)
    weights = np.where(w < 0, np.trunc(-0.5 + fixed), np.trunc(0.5 + fixed)).astype(np.int32)
    return weights, first.astype(np.int32), count.astype(np.int32)


# ----------------------------------------------------------------------- numba kernels


@functools.lru_cache(maxsize=1)
def _kernels() -> SimpleNamespace:
    """Compile (or load from numba's on-disk cache) the kernels, once per process.

    Defined lazily so importing this module does not import numba. The kernels close over
    plain constants only, never over other jitted functions: numba cannot cache a closure
    that captures a dispatcher, so helpers are written inline.

    Indices are cast to unsigned (`U`) wherever a loop should vectorise: with signed
    indices numba emits negative-index wraparound checks that stop LLVM's vectoriser.
    Products are int32 x int32 accumulated in int32, as in Pillow (no overflow: weights
    are normalised to 2**22 and 8-bit inputs leave 2 bits of headroom), so summing two
    taps per sweep gives Pillow's sums exactly.
    """
    import numba

    U = numba.uintp
    half = 1 << (_PRECISION_BITS - 1)
    shift = _PRECISION_BITS
    rb = _ROW_BLOCK
    lanes = 3 * _ROW_BLOCK
    chunk = 1024  # vertical-pass accumulator length (a multiple of 4): stays in L1

    @numba.njit(cache=True, nogil=True)
    def vertical(src, weights, first, count, dst, cols):
        """Pillow's vertical 8bpc pass of src (Hs, Ws, Cs) into the tile grid dst (T, th, tw, Cd).

        Output row y lands in tile row y // th; its tw-pixel segments go to consecutive
        tiles. Cd is Cs, or 3 when reading Pillow's 4-byte RGBX rows.
        """
        hs, ws, cs = src.shape
        th, tw, cd = dst.shape[1], dst.shape[2], dst.shape[3]
        flat = src.reshape(hs, ws * cs)
        seg = tw * cs
        acc = np.empty(chunk, np.int32)
        for y in range(first.shape[0]):
            tile_row = y // th
            ty = y - tile_row * th
            y0 = first[y]
            n = count[y]
            wts = weights[y]
            for c in range(cols):
                out = dst[tile_row * cols + c, ty]
                for i0 in range(0, seg, chunk):
                    m = U(min(chunk, seg - i0))
                    for i in range(m):
                        acc[i] = half
                    for t in range(0, n - 1, 2):  # two taps per sweep: half the acc traffic
                        k0, k1 = wts[t], wts[t + 1]
                        row0 = flat[y0 + t, c * seg + i0 :]
                        row1 = flat[y0 + t + 1, c * seg + i0 :]
                        for i in range(m):
                            acc[i] += np.int32(row0[i]) * k0 + np.int32(row1[i]) * k1
                    if n % 2:
                        kt = wts[n - 1]
                        row = flat[y0 + n - 1, c * seg + i0 :]
                        for i in range(m):
                            acc[i] += np.int32(row[i]) * kt
                    if cs == cd:
                        o = out.reshape(tw * cd)[i0:]
                        for i in range(m):
                            v = acc[i] >> shift
                            o[i] = 0 if v < 0 else (255 if v > 255 else v)
                    else:  # RGBX -> RGB; i0 is a multiple of 4
                        p0 = i0 // 4
                        for p in range(m // 4):
                            px = out[p0 + p]
                            for ch in range(3):
                                v = acc[U(4 * p + ch)] >> shift
                                px[ch] = 0 if v < 0 else (255 if v > 255 else v)

    @numba.njit(cache=True, nogil=True)
    def horizontal(src, row0, weights, first, count, split, dst_a, cols_a, dst_b, cols_b):
        """Pillow's horizontal 8bpc pass of the source rows src (h, Ws, Cs), image rows row0...

        Outputs [0, split) go to the tile grid dst_a (T, th, tw, 3), the rest to dst_b:
        two resizes of one source share the transposition of each 16-row block. In a
        block, pixel x of row r sits at buf[x, 3r:3r+3], so every tap is one 48-lane
        multiply-add over contiguous memory.
        """
        h, ws, cs = src.shape
        wt = first.shape[0]
        buf = np.zeros((ws, lanes), np.uint8)
        obuf = np.empty((wt, lanes), np.uint8)
        acc = np.empty(lanes, np.int32)
        for r0 in range(0, h, rb):
            rn = min(rb, h - r0)
            # Transpose the block in.
            if cs == 4:  # Pillow's RGBX: one uint32 load per pixel
                src32 = src.reshape(h * ws * 4).view(np.uint32).reshape(h, ws)
                for r in range(rn):
                    srow32 = src32[r0 + r]
                    for x in range(U(ws)):
                        p = srow32[x]
                        b = buf[x]
                        b[U(3 * r)] = p & 255
                        b[U(3 * r + 1)] = (p >> 8) & 255
                        b[U(3 * r + 2)] = (p >> 16) & 255
            else:
                for r in range(rn):
                    srow = src[r0 + r]
                    for x in range(U(ws)):
                        b = buf[x]
                        for ch in range(3):
                            b[U(3 * r + ch)] = srow[x, ch]
            # Filter.
            for xx in range(U(wt)):
                for j in range(U(lanes)):
                    acc[j] = half
                wts = weights[xx]
                x0 = first[xx]
                n = count[xx]
                for t in range(0, n - 1, 2):  # two taps per sweep: half the acc traffic
                    k0, k1 = wts[t], wts[t + 1]
                    b0, b1 = buf[U(x0 + t)], buf[U(x0 + t + 1)]
                    for j in range(U(lanes)):
                        acc[j] += np.int32(b0[j]) * k0 + np.int32(b1[j]) * k1
                if n % 2:
                    kt = wts[n - 1]
                    b = buf[U(x0 + n - 1)]
                    for j in range(U(lanes)):
                        acc[j] += np.int32(b[j]) * kt
                ob = obuf[xx]
                for j in range(U(lanes)):
                    v = acc[j] >> shift
                    ob[j] = 0 if v < 0 else (255 if v > 255 else v)
            # Transpose the block out, into each destination's tile grid.
            for d in range(2):
                dst, cols, xx = (dst_a, cols_a, 0) if d == 0 else (dst_b, cols_b, split)
                if dst.shape[0] == 0:
                    continue
                th, tw = dst.shape[1], dst.shape[2]
                for r in range(rn):
                    y = row0 + r0 + r
                    tile_row = y // th
                    ty = y - tile_row * th
                    for c in range(cols):
                        out = dst[tile_row * cols + c, ty]
                        for tx in range(U(tw)):
                            ob = obuf[U(xx + c * tw + tx)]
                            px = out[tx]
                            for ch in range(3):
                                px[ch] = ob[U(3 * r + ch)]

    return SimpleNamespace(vertical=vertical, horizontal=horizontal)
