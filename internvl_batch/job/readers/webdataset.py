"""WebDataset tar shards (what img2dataset and video2dataset write), read as streams.

A sample is a run of consecutive members sharing a key: the member's path up to the first
`.` of its basename (`dir/000123.jpg` and `dir/000123.json` are sample `dir/000123`);
what follows that dot is the field. Members without a dot are ignored, as the reference
loaders do. Per sample: the image member (by extension: `input.webdataset.image_extensions`)
or the video member (`video_extensions`) is the row's media, embedded (its NAME is
`<tar path>#<member>`); a `.json` member's fields are the row's columns (`question`,
`start`, `end`, passthrough and prompt columns, the id when `id_column` names one); a
`.txt` member is the `text` column; other members are ignored. The row's id is
`<tar path relative to the manifest root>#<key>` unless the json holds `input.id_column`
(when `id_column` is set explicitly, a sample without it is an invalid row).

Planning reads each tar once on a worker (a stream: one member in memory at a time) and
cuts it into shards of `shard_rows` samples at member offsets; the plan is cached in
`_state/files/` like every file plan (the index of a tar: O(shards), not O(members)). A
shard's checksum covers its members' names and contents. An uncompressed tar is entered
at a shard's first header; a `.tar.gz` can't be: it has one split per file, read from
the start, the samples before a resumed shard decompressed and skipped.

Broken data are rows: a truncated tar ends with its incomplete sample as an invalid row
(naming the cut member); a sample with no media, or two images (or videos) under one
key, is an invalid row; a member that does not decode is the prepare stage's
`decode_error`, as for any image.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.job.readers.base import ManifestRow, Reader, Record
from internvl_batch.job.readers.rows import parse_row
from internvl_batch.job.shards import ManifestFile, Shard, shards_from_records
from internvl_batch.storage import retry

_BLOCK = 512
_BROKEN = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error)


class _AllBut(frozenset):
    """Every extension but these: `in` is True for all others."""

    def __contains__(self, ext: object) -> bool:
        return not super().__contains__(ext)


_NOT_JSON = _AllBut({"json"})


@dataclass
class Sample:
    key: str
    offset: int  # of its first member's header (in the uncompressed stream)
    end: int = 0  # one past its last member's (padded) data
    members: list[tuple[str, str, Any]] = field(default_factory=list)  # (field, member name, bytes or crc)
    error: str | None = None


def _open(fs: Any, path: str, compression: str | None, byte_start: int | None):
    """(raw file, stream to read the tar from): the raw file tells how far the read got."""
    from fsspec.compression import compr

    raw = fs.open(path, "rb")
    if byte_start:
        raw.seek(byte_start)
    return raw, (compr[compression](raw, mode="rb") if compression else raw)


def samples(
    stream: Any, base: int, with_data: bool, size_check: Any = None, skip: frozenset = frozenset()
) -> Iterator[Sample]:
    """The samples of a tar stream, in order. `with_data`: members carry their bytes, else
    (planning) a crc of them. A sample is yielded when the next one's first header is seen,
    before that member's data is read: a reader that stops reads no further. A stream that
    ends mid-archive ends with its incomplete sample, `error` set; `size_check()` raises
    when the cut is a short read (the file has more bytes) rather than a truncated file.
    A corrupt header mid-file ends the stream the same way: tar has no markers to find the
    next member by, so the samples after it can't be read (the row names the member).
    Members whose extension is in `skip` are passed over unread (their data: None)."""
    cur: Sample | None = None
    member = "its first header"
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # a stream: members in order, once
            for m in tf:
                member = m.name
                if not m.isfile():
                    continue
                head, _, name = m.name.rpartition("/")
                if "." not in name:
                    continue
                stem, fld = name.split(".", 1)
                key = f"{head}/{stem}" if head else stem
                if cur is None or key != cur.key:
                    if cur is not None:
                        yield cur
                    cur = Sample(key, base + m.offset)
                if fld.rsplit(".", 1)[-1].lower() in skip:
                    cur.members.append((fld, m.name, None))  # the stream passes over it
                else:
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                    if len(data) < m.size:
                        raise EOFError(f"member {m.name!r} ends after {len(data)} of its {m.size} bytes")
                    cur.members.append((fld, m.name, data if with_data else zlib.crc32(data)))
                cur.end = base + m.offset_data + -(-m.size // _BLOCK) * _BLOCK
    except _BROKEN as e:
        ended = isinstance(e, EOFError) or "end of data" in str(e) or "truncated" in str(e)
        if ended and size_check is not None:
            size_check()  # the stream ended early: a cut read (raised, retried) or a truncated file
        why = f"truncated or corrupt tar at {member!r}: {type(e).__name__}: {e}"
        if cur is None:
            cur = Sample("", base)
        cur.error = why
        yield cur
        return
    if cur is not None:
        yield cur


def _size_check(raw: Any, split_or_file: Any, path: str):
    size = split_or_file.get("size") if isinstance(split_or_file, dict) else split_or_file.size

    def check() -> None:
        if size is not None and raw.tell() < size:
            raise retry.ShortRead(f"{path}: the tar stream ended at byte {raw.tell()} of {size}")

    return check


class WebDatasetReader(Reader):
    fmt = "webdataset"
    extensions = (".tar", ".tgz")

    def cut(self, fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int]) -> list[Shard]:
        if file.size == 0:
            return []
        raw, stream = _open(fs, file.path, file.compression, None)
        with raw:

            def records():
                for n, s in enumerate(samples(stream, 0, False, _size_check(raw, file, file.path))):
                    facts = [(name, crc) for _, name, crc in s.members] + [s.error]
                    yield n, n + 1, s.offset, max(s.end, s.offset), repr((s.key, facts)).encode()

            return list(shards_from_records(file, records(), shard_rows, prefix_rows))

    def records(self, fs: Any, split: dict[str, Any], columns: list[str]) -> Iterator[Record]:
        """Asked for one column (the duplicate pass: ids only), members that can't hold one
        (all but `.json`) are not read."""
        if split.get("size") == 0:
            return
        start = split.get("byte_start")
        raw, stream = _open(fs, split["path"], split["compression"], start)
        n = split["shards"][0]["row_start"] if start is not None else 0
        with raw:
            keep_only_json = len(columns) == 1
            check = _size_check(raw, split, split["path"])
            for s in samples(stream, start or 0, True, check, _NOT_JSON if keep_only_json else frozenset()):
                yield n, n + 1, {"__key__": s.key, "__members__": s.members, "__error__": s.error,
                                 "__rel__": split.get("rel") or split["path"]}  # fmt: skip
                n += 1

    def columns_of(self, rec: dict[str, Any]) -> set[str]:
        found = {"__key__"}
        for fld, _, data in rec["__members__"]:
            if fld == "txt":
                found.add("text")
            elif fld == "json":
                try:
                    obj = json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                found |= set(obj) if isinstance(obj, dict) else set()
        return found

    def fallback_id(self, split, line, record):
        key = record.get("__key__") if isinstance(record, dict) else None
        return f"{split.get('rel') or split['path']}#{key if key else f'sample-{line}'}"

    def to_row(self, rec: dict[str, Any], cfg: Any, fallback_id: str, columns: tuple[str, ...]) -> ManifestRow:
        wds, rel = cfg.webdataset, rec["__rel__"]
        values: dict[str, Any] = {}
        images, videos, problems = [], [], []
        for fld, name, data in rec["__members__"]:
            if data is None:
                continue  # not read (ids only)
            ext = fld.rsplit(".", 1)[-1].lower()
            if ext in wds.image_extensions:
                images.append((fld, name, data))
            elif ext in wds.video_extensions:
                videos.append((fld, name, data))
            elif fld == "json":
                try:
                    obj = json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    problems.append(f"member {name!r} is not valid JSON: {getattr(e, 'msg', e)}")
                    continue
                if isinstance(obj, dict):
                    values.update(obj)
                else:
                    problems.append(f"member {name!r} is not a JSON object")
            elif fld == "txt":
                try:
                    values["text"] = data.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(f"member {name!r} is not UTF-8 text")
        for kind, found, column in (("image", images, cfg.image_column), ("video", videos, cfg.video_column)):
            if len(found) > 1:
                problems.append(f"{len(found)} {kind} members under key {rec['__key__']!r} "
                                f"({', '.join(f for f, _, _ in found)}): one {kind} per sample")  # fmt: skip
            elif found:
                _, name, data = found[0]
                values[column] = {"bytes": data, "path": f"{rel}#{name}"}
        if cfg.id_column not in values and "id_column" not in cfg.model_fields_set:
            values[cfg.id_column] = fallback_id
        row = parse_row(values, cfg, fallback_id, columns)
        problems += [rec["__error__"]] if rec["__error__"] else []
        if problems:
            row.error = "; ".join(problems + ([row.error] if row.error else []))
        return row
