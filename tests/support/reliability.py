"""Stages and helpers for the job-level reliability suite (tests/job/test_reliability.py).

Stages are made by factories, so the settings a test gives them travel to Ray's workers
inside the (pickled by value) class, not through the environment of a process that
Ray started before the test:

    measured_prepare(rss_dir)   the real PrepareStage; each worker writes its peak RSS (KiB)
    flaky_read(faults)          the real ReadStage over a FlakyFS (tests/support/flakyfs.py)
    BlockedAfterReport          a reader that reports a failure to the job monitor, then hangs

`python -m tests.support.reliability CONFIG [--real-prepare]` runs the job in a process
of its own (to be killed, or to have its output and logs grepped), with the stand-in
engine and either the real PrepareStage or the stand-in one.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from urllib.parse import quote

from internvl_batch.job.stages.prepare import PrepareStage
from internvl_batch.job.stages.read import ReadStage
from tests.support import stages as stand_in
from tests.support.flakyfs import Fault, FlakyFS


def no_sdk_retries() -> None:
    """A Ray worker setup hook: s3fs's own retry loop off (a class attribute, no option), so
    every fault the proxy injects reaches the job's retries, where it is counted."""
    import s3fs

    s3fs.S3FileSystem.retries = 1


def measured_prepare(rss_dir: str) -> type:
    class MeasuredPrepare(PrepareStage):
        def __call__(self, batch):
            yield from super().__call__(batch)  # what Ray Data runs: tables as rows get ready
            # ru_maxrss: the worker's peak resident set since it started (KiB on Linux).
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            Path(rss_dir, f"{os.getpid()}.kib").write_text(str(peak))

    return MeasuredPrepare


def peak_rss_mb(rss_dir: str | Path) -> dict[int, float]:
    """{worker pid: peak RSS in MB} of the workers that ran `measured_prepare`."""
    return {int(p.stem): int(p.read_text()) / 1024 for p in Path(rss_dir).glob("*.kib")}


def flaky_read(faults: list[Fault]) -> type:
    class FlakyRead(ReadStage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fs = FlakyFS(self.fs, faults)

    return FlakyRead


class BlockedAfterReport(ReadStage):
    """A reader that fails, reports it, then hangs (the abort Ray Data can't finish) for
    longer than the job may take to fail; then it raises, should the job not end it."""

    BLOCK_S = 40.0

    def process(self, batch):
        self.monitor.stage_failed(self.name, "OSError: disk on fire")
        time.sleep(self.BLOCK_S)
        raise OSError("disk on fire")
        yield  # a generator, as the real reader


def leaks(roots: list[Path], secrets: list[str]) -> list[tuple[str, str]]:
    """(file, secret) for every file under `roots` (files or directories) holding a secret,
    as is or URL-encoded."""
    needles = {s: {s.encode(), quote(s, safe="").encode()} for s in secrets}
    found = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:  # a socket, or a file Ray removed meanwhile
                continue
            found += [(str(path), s) for s, forms in needles.items() if any(f in data for f in forms)]
    return found


def main(argv: list[str] | None = None) -> int:
    import sys

    import cloudpickle

    import tests.support.reliability as me
    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    args = argv if argv is not None else sys.argv[1:]
    cloudpickle.register_pickle_by_value(me)
    cloudpickle.register_pickle_by_value(stand_in)
    stages = {"inference": stand_in.EchoInference} if "--real-prepare" in args else stand_in.STAGES
    summary = run_job(load_config(args[0]), stages=stages)
    return 0 if summary.finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
