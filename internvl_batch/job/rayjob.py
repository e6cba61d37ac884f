"""`internvl-rayjob`: the entrypoint of every RayJob in k8s/ (runs on the Ray head).

    internvl-rayjob [--days-ago N | --night YYYY-MM-DD | --days-before-schedule N [--catch-up M]]
                    [--manifest-wait S] [--lease URL] [--lease-ttl S] CONFIG [--set key=value ...]

For each output it writes (one; or one per night, oldest first):
1. `_SUCCESS` there already: done, nothing runs (exit 0 at once: a rerun or a second RayJob
   for a finished night costs no GPU).
2. The output lease (job/lease.py; `--lease`, default `<output.path>/_lease.json`) is taken
   once, before any GPU pod can start: a live holder other than this RayJob means another
   job writes here; this one ends (exit 0 when the holder covers all of its nights, else 1).
3. `--manifest-wait S`: the night's manifest prefix is polled for up to S seconds (a late
   upstream export), then `internvl-batch validate` (on the head; the GPU worker groups are
   still at 0 pods): a config, manifest or model problem fails within minutes, exit 2.
4. `internvl-batch run`; a run that fails for a reason that may pass (exit 1) is run again
   here, on the same cluster, resuming from the committed parts (INTERNVL_RUN_ATTEMPTS, 3;
   INTERNVL_RETRY_PAUSE_S, 60). Exit 2 is never retried; the RayJobs set backoffLimit: 0.

Nights: every `{night}` in the --set values becomes a UTC date YYYY-MM-DD. `--night D`
reruns D; `--days-ago N` is N days before today (UTC); `--days-before-schedule N` is N days
before the date this RayJob was scheduled for (job/nights.py: KubeRay's annotation), plus
the nights of the last `--catch-up` days that are not done yet (after an outage). The lease
covers all nights of a schedule when `--lease` names one object outside `{night}`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from internvl_batch.job.lease import Lease, LeaseError, LeaseHeld, LeaseLost, LeaseUnsupported
from internvl_batch.job.nights import NightError, nights_to_consider, scheduled_time

NIGHT = "{night}"
DONE = "_SUCCESS"
LEASE_NAME = "_lease.json"


def say(msg: str, err: bool = False) -> None:
    print(f"internvl-rayjob: {msg}", file=sys.stderr if err else sys.stdout, flush=True)


def _date(text: str) -> dt.date:
    try:
        d = dt.date.fromisoformat(text)
    except ValueError:
        d = None
    if d is None or d.isoformat() != text:
        raise argparse.ArgumentTypeError(f"--night needs a date YYYY-MM-DD, got {text!r}")
    return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="internvl-rayjob", description="validate, then run, a job on its RayJob cluster")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--days-ago", type=int, metavar="N", help="{night} = N days before today (UTC)")
    when.add_argument("--night", type=_date, metavar="YYYY-MM-DD", help="{night} = this date (a rerun)")
    when.add_argument(
        "--days-before-schedule", type=int, metavar="N", help="{night} = N days before the scheduled date (RayCronJob)"
    )
    p.add_argument(
        "--catch-up", type=int, default=3, metavar="M", help="with --days-before-schedule: nights looked back"
    )
    p.add_argument("--manifest-wait", type=float, default=0.0, metavar="S", help="wait up to S s for a late manifest")
    p.add_argument("--lease", metavar="URL", help="the lease object (default: <output.path>/_lease.json)")
    p.add_argument("--lease-ttl", type=float, default=600.0, metavar="S", help="lease time to live (renewed every S/4)")
    p.add_argument("config", help="job config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p


class Entrypoint:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.attempts = int(os.environ.get("INTERNVL_RUN_ATTEMPTS", "3"))
        self.pause = float(os.environ.get("INTERNVL_RETRY_PAUSE_S", "60"))
        self.child: subprocess.Popen | None = None
        self.lost: LeaseLost | None = None
        self.own: dt.date | None = None  # the night this RayJob is for (the others: catch-up)
        self._lock = threading.Lock()

    # -- what to run ----------------------------------------------------------------------
    def nights(self) -> list[dt.date] | None:
        a = self.args
        today = dt.datetime.now(dt.UTC).date()
        if a.night:
            self.own = a.night
        elif a.days_ago is not None:
            self.own = today - dt.timedelta(days=a.days_ago)
        elif a.days_before_schedule is not None:
            when = scheduled_time()
            self.own = when.date() - dt.timedelta(days=a.days_before_schedule)
            say(f"scheduled for {when.isoformat()}: night {self.own}")
            return nights_to_consider(self.own, today, a.days_before_schedule, a.catch_up)
        return None if self.own is None else [self.own]

    def config(self, sets: list[str]) -> Any | None:
        """The job config as validate will see it, or None when it does not load (validate says why)."""
        if not os.path.isfile(self.args.config):
            return None  # (and no need to import the config's dependencies)
        from internvl_batch.config.loader import ConfigError, load_config

        try:
            return load_config(self.args.config, sets)
        except (ConfigError, OSError):
            return None

    # -- running the CLI --------------------------------------------------------------------
    def call(self, step: str, sets: list[str]) -> int:
        argv = ["internvl-batch", step, self.args.config, *[x for s in sets for x in ("--set", s)]]
        with self._lock:
            if self.lost:
                return 1
            self.child = subprocess.Popen(argv)
        code = self.child.wait()
        with self._lock:
            self.child = None
        if self.lost:
            say(f"{self.lost}; '{step}' was stopped", err=True)
            return 1
        return code

    def attempt(self, step: str, sets: list[str]) -> int:
        for i in range(1, self.attempts + 1):
            code = self.call(step, sets)
            if code in (0, 2) or i == self.attempts or self.lost:
                return code
            say(f"'{step}' exited {code} (attempt {i} of {self.attempts}); trying again in {self.pause:g}s on this cluster", err=True)  # fmt: skip
            time.sleep(self.pause)
        return 1

    def stop_child(self, why: BaseException | None = None) -> None:
        with self._lock:
            if isinstance(why, LeaseLost):
                self.lost = why
            child = self.child
        if child and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()

    # -- one output ---------------------------------------------------------------------------
    def process(self, night: dt.date | None, sets: list[str], cfg, own: bool) -> int | None:
        """The exit code of this output's validate + run; None when it was skipped."""
        if cfg is not None and _exists(cfg.output.path, cfg.output.storage_options, DONE):
            say(f"{_label(night)}{cfg.output.path} has {DONE}: done already, nothing to run")
            return None
        if cfg is None and not own:
            return None  # a catch-up night whose config does not load: the own night's validate says why
        if cfg is not None and night is not None and not own and not _has_input(cfg.input):
            say(
                f"{_label(night)}no manifest at {cfg.input.path}: not a missed night, skipped (rerun it with --night {night})"
            )
            return None
        if cfg is not None and own and self.args.manifest_wait > 0:
            _wait_for_input(cfg.input, self.args.manifest_wait)
        code = self.attempt("validate", sets)
        if code == 0:
            code = self.attempt("run", sets)
        say(f"{_label(night)}{'done' if code == 0 else f'failed with exit code {code}'}", err=code != 0)
        return code

    def main(self) -> int:
        try:
            nights = self.nights()
        except NightError as e:
            say(str(e), err=True)
            return 2
        uses = any(NIGHT in s for s in self.args.set)
        if nights is None and uses:
            say(f"'{next(s for s in self.args.set if NIGHT in s)}' uses {NIGHT}: give --night, --days-ago or --days-before-schedule", err=True)  # fmt: skip
            return 2
        if nights is not None and not uses:
            say(f"a night was given but no --set value uses {NIGHT}", err=True)
            return 2
        units = [(None, list(self.args.set))] if nights is None else [(n, _subst(self.args.set, n)) for n in nights]
        configs = [self.config(sets) for _, sets in units]
        todo = [
            (n, sets, cfg)
            for (n, sets), cfg in zip(units, configs)
            if cfg is None or not _exists(cfg.output.path, cfg.output.storage_options, DONE)
        ]
        if not todo:
            for (n, _), cfg in zip(units, configs):
                say(f"{_label(n)}{cfg.output.path} has {DONE}: done already, nothing to run")
            return 0
        lease = self.lease(todo)
        if isinstance(lease, int):
            return lease
        signal.signal(signal.SIGTERM, lambda *_: (self.stop_child(), sys.exit(143)))
        codes = []
        try:
            with lease.held(on_lost=self.stop_child) if lease else _nothing():
                for (n, sets), cfg in zip(units, configs):
                    if n is not None:
                        say(f"night {n} (UTC)")
                    code = self.process(n, sets, cfg, own=n == self.own)
                    if code is not None:
                        codes.append(code)
                    if self.lost:
                        break
        except LeaseHeld as e:
            return self.held(e, [n for n, _, _ in todo])
        except LeaseError as e:
            say(str(e), err=True)
            return 1
        return 1 if self.lost else max(codes, default=0)

    def lease(self, todo) -> Lease | int | None:
        first_cfg = next((cfg for _, _, cfg in todo if cfg is not None), None)
        url = self.args.lease or (f"{first_cfg.output.path.rstrip('/')}/{LEASE_NAME}" if first_cfg else None)
        if url is None:
            return None  # the config does not load: validate says why, nothing is written
        options = first_cfg.output.storage_options if first_cfg else {}
        covers = [str(n) if n else url for n, _, _ in todo]
        try:
            return Lease(url, ttl_s=self.args.lease_ttl, storage_options=options, covers=covers)
        except LeaseUnsupported as e:
            if self.args.lease:
                say(f"{e}: use an s3:// or local --lease", err=True)
                return 2
            say(f"warning: {e}; nothing stops a second job from writing {first_cfg.output.path}", err=True)
            return None

    def held(self, e: LeaseHeld, todo: list) -> int:
        mine = {str(n) for n in todo if n is not None}
        if mine and mine <= set(e.record.get("covers") or []):
            say(f"{e}; it processes nights {', '.join(sorted(mine))} too: nothing for this job to do")
            return 0
        say(f"{e}; this job ends without writing (rerun it once that job has ended)", err=True)
        return 1


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _label(night: dt.date | None) -> str:
    return f"night {night}: " if night else ""


def _subst(sets: list[str], night: dt.date) -> list[str]:
    return [s.replace(NIGHT, night.isoformat()) for s in sets]


def _exists(path: str, options: dict[str, Any], name: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **options)
    return fs.exists(f"{root.rstrip('/')}/{name}")


def _has_input(section) -> bool:
    """The manifest path names at least one file (a file, a non-empty directory or a matching glob)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(section.path, **section.storage_options)
    try:
        if any(c in path for c in "*?["):
            return bool(fs.glob(path))
        if fs.isfile(path):
            return True
        return fs.isdir(path) and any(True for _ in fs.find(path))
    except FileNotFoundError:
        return False


def _wait_for_input(section, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    poll = min(60.0, max(1.0, wait_s / 20))
    while not _has_input(section):
        left = deadline - time.monotonic()
        if left <= 0:
            say(f"no manifest at {section.path} after {wait_s:g}s; validate reports it", err=True)
            return
        say(f"no manifest at {section.path} yet; looking again in {min(poll, left):.0f}s ({left:.0f}s left)")
        time.sleep(min(poll, left))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return Entrypoint(args).main()


if __name__ == "__main__":
    sys.exit(main())
