"""A run's time series under `_state/timeline/`: what the report plots as throughput over time.

Object stores can't append, so samples are written in small chunks
(`<run_id>-<seq>.json`, one a minute) rather than by rewriting one growing file; a report
of a run in progress sees everything up to the last chunk. A sample is cumulative (rows,
tokens, tiles, rows per stage since the run started), so a lost chunk loses resolution,
not totals. About 60 samples an hour at the default interval: small for any run length.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from internvl_batch.job.output import STATE, OutputDir

log = logging.getLogger("internvl_batch")

TIMELINE = f"{STATE}/timeline"
FLUSH_S = 60.0


class Timeline:
    def __init__(self, out: OutputDir, run_id: str, flush_s: float = FLUSH_S):
        self.out, self.run_id, self.flush_s = out, run_id, flush_s
        self._pending: list[dict[str, Any]] = []
        self._seq = 0
        self._last_flush = time.monotonic()
        self._failed = False

    def add(self, sample: dict[str, Any]) -> None:
        self._pending.append(sample)
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        name = f"{TIMELINE}/{self.run_id}-{self._seq:05d}.json"
        try:
            self.out.write_json(name, {"run_id": self.run_id, "samples": self._pending})
        except Exception as e:  # the timeline is an aid: the run's rows matter, it does not
            if not self._failed:
                log.warning("could not write the run's timeline (%s): %s", name, e)
            self._failed = True
            return
        self._seq += 1
        self._pending = []


def read_timeline(out: OutputDir) -> dict[str, list[dict[str, Any]]]:
    """{run_id: samples in time order} of every run that wrote one."""
    names = sorted(f"{TIMELINE}/{p.rsplit('/', 1)[-1]}" for p in out.fs.glob(out.path(f"{TIMELINE}/*.json")))
    chunks = out.read_jsons(names)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in names:  # sorted: a run's chunks in order
        if chunk := chunks.get(name):
            runs.setdefault(chunk["run_id"], []).extend(chunk["samples"])
    return runs
