"""What every reader shares: the row it makes, its errors, and the interface one input kind
implements (job/readers/<kind>.py).

A reader knows one file format: how to cut a file into shards (a scan on a worker, once
per file version) and how to read the records of a split (a piece of one file) from where
the split starts. Everything else — which records belong to the split, resuming after a
transient error, fallback ids, duplicate marking, the ITEM records — is done once for all
kinds (splits.py), so resume, the ledger, changed-input detection and the duplicate-id
pass behave the same whatever the input is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.job.shards import ManifestFile, Shard
from internvl_batch.records import passthrough_field
from internvl_batch.status import Status


class ManifestError(ValueError):
    """The manifest as a whole can't be read (missing path, unknown format, empty prefix)."""


@dataclass
class ManifestRow:
    id: str
    images: list[str] = field(default_factory=list)  # URLs, or names of embedded images
    image_bytes: list[bytes | None] | None = None  # None: every image is fetched; else per image
    video: str | None = None  # a URL, or the name of an embedded video
    video_bytes: bytes | None = None
    start: float | None = None
    end: float | None = None
    clips: list[list[float]] | None = None  # windows of a video, each its own output row per task
    question: str | None = None
    passthrough: dict[str, str | None] = field(default_factory=dict)
    values: dict[str, str | None] = field(default_factory=dict)  # columns the tasks' prompt templates name
    request: str | None = None  # JSON: this row's own system message and sampling (OpenAI batch lines)
    error: str | None = None  # set: the row is invalid and becomes an invalid_row result

    @property
    def media(self) -> str:
        return "video" if self.video else ("image" if self.images else "none")

    def item(self, tasks: list[str], shard: str, row: int) -> dict[str, Any]:
        """This row as an ITEM record (records.py) with the tasks left to do for it."""
        return {
            "shard": shard, "row": row, "id": self.id, "images": self.images or None,
            "image_bytes": self.image_bytes if self.images else None, "video": self.video,
            "video_bytes": self.video_bytes, "start": self.start, "end": self.end, "clips": self.clips, "question": self.question,
            "media": self.media, "tasks": tasks,
            "status": Status.OK if self.error is None else Status.INVALID_ROW, "error": self.error,
            "prompt_values": json.dumps(self.values) if self.values else None, "request": self.request,
            **{passthrough_field(c): v for c, v in self.passthrough.items()},
        }  # fmt: skip

    def mark_duplicate(self, id_column: str, source: str) -> None:
        """Two output rows must never share a key: a repeated id gets its own, and no work."""
        dup = f"duplicate {id_column} {self.id!r}: only its first row is processed"
        self.error = dup if self.error is None else f"{dup}; {self.error}"
        self.id = f"{self.id}#dup@{source}"


# A record as a reader yields it: (record number in its file, line (or sample) number,
# the record: a dict of columns, or a string saying why this record can't be read).
Record = tuple[int, int, "dict[str, Any] | str"]


class Reader:
    """One input kind. `fmt` names it in `input.format`; `extensions` are the file names
    `format: auto` and directory listings recognise as this kind (before compression)."""

    fmt: str = ""
    extensions: tuple[str, ...] = ()

    def cut(self, fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int]) -> list[Shard]:
        """Every shard of one file (planning, on a worker). `prefix_rows`: shard index ->
        rows an earlier run processed, whose checksum is asked for too (appended rows)."""
        raise NotImplementedError

    def records(self, fs: Any, split: dict[str, Any], columns: list[str]) -> Iterator[Record]:
        """The records of a split's file from the split's start (its byte offset, row
        groups, or the top of the file), in file order, until the file ends; the caller
        stops when it has what it needs. `columns`: those the job reads (a columnar
        reader may read only these)."""
        raise NotImplementedError

    def to_row(self, rec: dict[str, Any], cfg: Any, fallback_id: str, columns: tuple[str, ...]) -> ManifestRow:
        """One record's row (rows.parse_row for the tabular kinds); never raises for bad data."""
        raise NotImplementedError

    def columns_of(self, rec: dict[str, Any]) -> set[str]:
        """The columns one record offers (for checking prompt templates against them)."""
        return set(rec)

    def shares_split(self, file: ManifestFile, prev: Shard, shard: Shard) -> bool:
        """Are two consecutive shards (both to be read) best read by one reader? Files
        that can only be read from the top: yes (one read per file)."""
        return not file.seekable

    def fallback_id(self, split: dict[str, Any], line: int, record: dict[str, Any] | str) -> str:
        """A stable id for a record that has none: its file and line."""
        return f"{split['path']}#{line}"
