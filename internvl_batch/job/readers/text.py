"""Line-based manifests: JSONL (one JSON object per non-blank line) and CSV (a header, then
one record per row; a quoted field may span lines). Both are planned by one scan of the
whole file (a content checksum per shard); uncompressed JSONL shards start at their byte
offset, CSV and compressed files are read from the top and skipped to the split's shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from internvl_batch.job.readers.base import Reader, Record
from internvl_batch.job.readers.rows import parse_row
from internvl_batch.job.shards import ManifestFile, Shard, is_record, shards_from_records
from internvl_batch.storage import retry

_CHUNK = 16 * 1024 * 1024


def _scan_jsonl(f) -> Iterator[tuple[int, int, int, int, bytes]]:
    """Non-blank lines as (record, line, offset, end, bytes), found with numpy over 16 MiB
    chunks (a Python loop over 100M lines would dominate planning)."""
    n = 0
    line_no = 0
    offset = 0  # of `tail` in the file
    tail = b""
    while True:
        chunk = f.read(_CHUNK)
        data = tail + chunk if chunk else tail
        if not data:
            return
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1  # one past each '\n'
        if not chunk and (not len(ends) or ends[-1] != len(data)):
            ends = np.append(ends, len(data))  # the last line has no newline
        start = 0
        for end in ends.tolist():
            line_no += 1
            line = data[start:end]
            if is_record(line):
                yield n, line_no, offset + start, offset + end, line
                n += 1
            start = end
        tail = data[start:]
        offset += start
        if not chunk:
            return


def _scan_csv(f) -> Iterator[tuple[int, int, int, int, bytes]]:
    """CSV records (a quoted field may span lines, so records are found by the csv module)."""
    import csv
    import io

    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    seed = ("\x1f".join(header) + "\x1e").encode()
    line, n = reader.line_num, 0
    for fields in reader:
        if fields:  # the reader skips empty rows too
            # The header is part of every record's checksum: renaming a column changes every shard.
            yield n, line + 1, 0, 0, seed + ("\x1f".join(fields) + "\x1e").encode()
            n += 1
        line = reader.line_num


def parse_json_line(line: bytes, line_no: int) -> dict[str, Any] | str:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"line {line_no} is not valid JSON: {getattr(e, 'msg', e)}"
    return rec if isinstance(rec, dict) else f"line {line_no} is not a JSON object"


def jsonl_lines(fs: Any, split: dict[str, Any]) -> Iterator[tuple[int, int, bytes]]:
    """(record, line, raw line) of a JSONL file from the split's start."""
    with fs.open(split["path"], "rb", compression=split["compression"]) as f:
        if split.get("byte_start") is not None:
            f.seek(split["byte_start"])
            first = split["shards"][0]
            n, line_no, stop = first["row_start"], first["line_start"] - 1, split["byte_end"] - split["byte_start"]
        else:
            n, line_no, stop = 0, 0, None
        pos = 0
        for line in f:
            if stop is not None and pos >= stop:
                return
            pos += len(line)
            line_no += 1
            if is_record(line):
                yield n, line_no, line
                n += 1


def cut_lines(fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int], scan) -> list[Shard]:
    with fs.open(file.path, "rb", compression=file.compression) as f:
        shards = list(shards_from_records(file, scan(f), shard_rows, prefix_rows))
        # JSONL only: the CSV scanner's text wrapper closes the file when it is done with it.
        read = f.tell() if scan is _scan_jsonl and file.compression is None else None
    if read is not None and file.size is not None and read < file.size:
        # A plan cut short would leave the rest of the file out of the job, silently.
        raise retry.ShortRead(f"{file.path}: read {read} of its {file.size} bytes")
    return shards


class JsonlReader(Reader):
    fmt = "jsonl"
    extensions = (".jsonl", ".json", ".ndjson")
    to_row = staticmethod(parse_row)

    def cut(self, fs, file, shard_rows, prefix_rows):
        return cut_lines(fs, file, shard_rows, prefix_rows, _scan_jsonl)

    def records(self, fs, split, columns) -> Iterator[Record]:
        for n, line_no, line in jsonl_lines(fs, split):
            yield n, line_no, parse_json_line(line, line_no)


class CsvReader(Reader):
    fmt = "csv"
    extensions = (".csv",)
    to_row = staticmethod(parse_row)

    def cut(self, fs, file, shard_rows, prefix_rows):
        return cut_lines(fs, file, shard_rows, prefix_rows, _scan_csv)

    def records(self, fs, split, columns) -> Iterator[Record]:
        import csv
        import io

        with fs.open(split["path"], "rb", compression=split["compression"]) as f:
            # csv.reader, not DictReader: DictReader skips empty rows unseen, so the line after
            # one could not be known. Records and lines counted as the planner (_scan_csv) does.
            reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
            header = next(reader, None)
            if header is None:
                return
            line, n = reader.line_num, 0
            for fields in reader:
                if fields:
                    # Every value stays the string it is in the file: type guessing would turn id "007" into 7.
                    yield n, line + 1, {k: (v if v != "" else None) for k, v in zip(header, fields)}
                    n += 1
                line = reader.line_num
