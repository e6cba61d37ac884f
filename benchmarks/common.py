"""What every benchmark shares, and the conventions a new one follows.

A benchmark is a script run as printed in the README (`.venv/bin/python benchmarks/X.py`)
from the repository root. One that compares sides (ours vs the model card's code, pre-tiled
vs vLLM's own tiling, the job vs the bare engine, ...):

- runs every side in one process tree (sides that need a fresh process: a subprocess of the
  benchmark, on the same machine, minutes apart at most);
- takes `--runs N` (`add_runs_arg`, default 3) and runs them itself: `run_rotated` calls the
  sides in a rotated order, run by run (a, b | b, a | ...), so drift on a shared machine
  does not always favour the side that runs first;
- checks that the sides answered the same (`AnswerCheck`: token ids, texts or tensors, per
  row); a difference prints `ANSWERS DIFFER <what>: <side> vs <reference>: k of n rows:
  <row ids>` and makes the script exit 1 (after the remaining runs: the figures still
  print). A side that crashes or loses rows is a failure too (`AnswerCheck.failed`);
- prints each figure as median and spread over the runs (`emit`: `median (min-max)`,
  ratios paired run by run), and beside it one machine-readable line
  `BENCH {"metric": ..., "median": ..., "min": ..., "max": ..., "n": ..., "unit": ..., "values": [...]}`.
  benchmarks/suite.py (`make bench`) runs the README's commands, collects these lines into
  benchmarks/results.json and renders benchmarks/results.md and the README's measured table.

A new benchmark: put the repository root on sys.path and import this module as
`from benchmarks import common` (see any benchmark's header); call `use_this_checkout()`
first thing in main(); import heavy things (vLLM, Ray, torch) inside functions, so that
tests/benchmarks can import its comparison without them; put each run's comparison in a
function of its own (`compare_run(check, run, results)`: the tests feed it a mismatch);
give each figure a stable metric name (the README's table quotes it); add its command to
suite.py's ROWS, with a smoke variant (the smallest size that runs end to end); and return
`check.exit_code()` from main.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
BENCH_PREFIX = "BENCH "
T = TypeVar("T")
R = TypeVar("R")


def use_this_checkout() -> None:
    """Import `internvl_batch` from this checkout, here and in every process the benchmark
    starts (sides, Ray workers): a benchmark measures the code beside it, not whatever
    copy the venv was installed from."""
    repo = str(REPO)
    if sys.path[:1] != [repo]:
        sys.path.insert(0, repo)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if paths[:1] != [repo]:
        os.environ["PYTHONPATH"] = os.pathsep.join([repo, *(p for p in paths if p)])


def add_runs_arg(ap: argparse.ArgumentParser, default: int = 3) -> None:
    ap.add_argument(
        "--runs", type=int, default=default, help=f"runs per side, sides in a rotated order (default {default})"
    )


# -- order ----------------------------------------------------------------------------------------


def rotated(sides: Sequence[T], run: int) -> list[T]:
    """The order of run `run`: each side goes first in turn (two sides: a,b then b,a)."""
    if not sides:
        return []
    k = run % len(sides)
    return [*sides[k:], *sides[:k]]


def run_rotated(
    sides: Mapping[str, Callable[[int], R]],
    runs: int,
    after_run: Callable[[int, dict[str, R]], None] | None = None,
    label: str = "",
) -> dict[str, list[R]]:
    """Call each side once per run (`side(run)`), in `rotated` order; `after_run(run,
    results)` sees one run's results (to compare answers). Returns each side's results
    in run order."""
    out: dict[str, list[R]] = {name: [] for name in sides}
    for run in range(runs):
        order = rotated(list(sides), run)
        print(f"{label}run {run + 1}/{runs}: {' -> '.join(order)}", flush=True)
        this = {name: sides[name](run) for name in order}
        for name in sides:
            out[name].append(this[name])
        if after_run is not None:
            after_run(run, this)
    return out


# -- median and spread ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int
    values: tuple[float, ...]

    def fmt(self, f: str = ".3f") -> str:
        return f"{self.median:{f}} ({self.lo:{f}}-{self.hi:{f}})"


def spread(xs: Iterable[float | None]) -> Spread | None:
    """Median, min and max of the finite values (a crashed run's None / NaN left out)."""
    vals = tuple(float(x) for x in xs if x is not None and math.isfinite(x))
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals), vals)


def fmt_spread(xs: Iterable[float | None], f: str = ".3f") -> str:
    s = spread(xs)
    return "n/a" if s is None else s.fmt(f)


def ratios(num: Sequence[float | None], den: Sequence[float | None]) -> list[float | None]:
    """num[i] / den[i], paired run by run (both sides of a pair ran minutes apart)."""
    return [None if a is None or b is None or b == 0 else a / b for a, b in zip(num, den)]


def emit(metric: str, xs: Iterable[float | None], unit: str = "", f: str = ".3f") -> Spread | None:
    """Print a figure as `metric: median (min-max) unit, n=k` and its BENCH line."""
    s = spread(xs)
    unit_txt = "x" if unit == "x" else (f" {unit}" if unit else "")
    if s is None:
        print(f"{metric}: n/a (no run delivered it)", flush=True)
        return None
    print(f"{metric}: {s.fmt(f)}{unit_txt}, n={s.n}", flush=True)
    record = {"metric": metric, "median": s.median, "min": s.lo, "max": s.hi, "n": s.n, "unit": unit,
              "fmt": f, "values": list(s.values)}  # fmt: skip
    print(BENCH_PREFIX + json.dumps(record), flush=True)
    return s


def parse_bench_lines(text: str) -> list[dict[str, Any]]:
    """The BENCH records in a benchmark's output, in order."""
    return [json.loads(line[len(BENCH_PREFIX) :]) for line in text.splitlines() if line.startswith(BENCH_PREFIX)]


# -- answers --------------------------------------------------------------------------------------


def tensor_rows(t: Any, label: str = "tile") -> dict[str, bytes]:
    """An array's (numpy or torch) first axis as rows to compare: `{"tile 0": bytes, ...}`,
    so a difference names the tiles (frames) that differ."""
    arr = t.numpy() if hasattr(t, "numpy") else t
    return {f"{label} {i}": arr[i].tobytes() for i in range(arr.shape[0])} | {"shape": repr(tuple(arr.shape))}


def differing_rows(reference: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """Row ids whose answers differ, or that one side lacks (reference order, then extras)."""
    rows = [k for k in reference if k not in got or got[k] != reference[k]]
    return rows + [k for k in got if k not in reference]


class AnswerCheck:
    """Collects, over a benchmark's runs, every comparison that failed; `exit_code()` is 1
    if any did. Each failure is printed when found, naming the rows."""

    MAX_NAMED = 20  # row ids printed per line; the count says how many differ in all

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.compared = 0

    def compare(self, what: str, ref_name: str, ref: Mapping[str, Any], name: str, got: Mapping[str, Any]) -> list[str]:
        """Compare `got` (side `name`) with `ref` (side `ref_name`), row by row."""
        self.compared += 1
        rows = differing_rows(ref, got)
        if rows:
            shown = ", ".join(str(r) for r in rows[: self.MAX_NAMED]) + (" ..." if len(rows) > self.MAX_NAMED else "")
            n = len(set(ref) | set(got))
            self._fail(f"ANSWERS DIFFER {what}: {name} vs {ref_name}: {len(rows)} of {n} rows: {shown}")
        return rows

    def failed(self, what: str) -> None:
        """A failure that is no answer comparison: a side crashed, lost rows, ..."""
        self._fail(f"FAILED {what}")

    def _fail(self, line: str) -> None:
        self.failures.append(line)
        print(line, flush=True)

    def exit_code(self) -> int:
        if self.failures:
            print(f"\n{len(self.failures)} check(s) failed:", flush=True)
            for line in self.failures:
                print(f"  {line}", flush=True)
            return 1
        print(f"answers: equal in all {self.compared} comparison(s)", flush=True)
        return 0


# -- the engine every engine benchmark runs -------------------------------------------------------


KV_CACHE_GIB = 2  # the CPU build's KV cache, VLLM_CPU_KVCACHE_SPACE (the Makefile's)


def model_section(path: str | Path, **over: Any) -> dict[str, Any]:
    """The `model` config section the engine benchmarks share: the tiny checkpoint on vLLM's
    CPU build (float32, eager, 2 GiB of KV cache). One place to follow a config change."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB))  # read by the CPU build only
    return {"path": str(path), "dtype": "float32", "max_model_len": 4096,
            "engine_kwargs": {"enforce_eager": True}, **over}  # fmt: skip
