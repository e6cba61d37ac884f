"""`make bench`: every figure the README's measured table quotes, from the command that
reproduces it.

Runs each row's command exactly as printed (from the repository root; its log goes to
.cache/bench/logs/), collects the BENCH lines it prints (benchmarks/common.py) into
benchmarks/results.json (one entry per row: rerunning some rows keeps the others), and
renders from that file benchmarks/results.md (every figure: what, command, median (min-max),
n, the machine) and the README's measured table (between its `bench:begin`/`bench:end`
markers, the figures each row lists; only once every row has a result). A command that
exits non-zero (answers that differ, a crashed side) is reported as FAILED with its
reason, and the suite exits 1.

    .venv/bin/python benchmarks/suite.py [--only ID,...] [--list]
    .venv/bin/python benchmarks/suite.py --smoke   # each benchmark once at its smallest size;
                                                   # results in .cache/bench/, README untouched
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

REPO = common.REPO
PY = ".venv/bin/python benchmarks/"
RESULTS = REPO / "benchmarks" / "results.json"
README = REPO / "README.md"
BEGIN, END = "<!-- bench:begin", "<!-- bench:end -->"


@dataclass(frozen=True)
class Row:
    id: str
    what: str
    args: str  # the command is PY + args
    readme: tuple[str, ...] = ()  # metrics (name prefixes) the README's cell shows; () = every one
    smoke: str | None = None  # the benchmark at its smallest size (one row per script has one)

    @property
    def command(self) -> str:
        return PY + self.args


_FEED = ("job/bare", "occupancy")
ROWS = (
    Row("preprocess", "tiling vs the card, one core", "preprocess.py",
        ("tile vs card", "load_image vs card, 1024x768", "load_video vs card", "tile ms/image, 1024x768 max 12"),
        smoke="preprocess.py --runs 2"),
    Row("engine", "engine front-end CPU per image: pre-tiled vs vLLM tiling the PIL image", "engine.py --runs 3",
        ("front-end CPU", "throughput"), smoke="engine.py --images 3 --max-num 4 --runs 2"),
    Row("scale-dry-run", "nightly-scale planning (dry run, driver)",
        "scale.py --sizes 1M,10M --big 100M --plane '' --runs 3", ("dry run", "driver RSS"),
        smoke="scale.py --sizes 100k,200k --big '' --plane '' --runs 2"),
    Row("scale-wds", "WebDataset planning (dry run, driver)",
        "scale.py --sizes '' --big '' --plane '' --wds 1k,10k --runs 3", ("dry run", "driver RSS"),
        smoke="scale.py --sizes '' --big '' --plane '' --wds 20,40 --runs 2"),
    Row("scale-plane", "data plane, engine replaced by a stand-in (benchmark-only), killed once and rerun",
        "scale.py --sizes '' --big '' --plane 1M --kill --runs 3", ("data plane",),
        smoke="scale.py --sizes '' --big '' --plane 100k --kill --runs 2"),
    Row("feed-48", "keeping the engine fed: job vs bare engine given every request at once, 48 rows x 2 tasks",
        "engine_feed.py --runs 3", _FEED, smoke="engine_feed.py --rows 4 --runs 2"),
    Row("feed-192", "the same, 192 rows", "engine_feed.py --rows 192 --runs 3", _FEED),
    Row("feed-192-in-flight-4", "the same, 4 batches in flight (the old default)",
        "engine_feed.py --rows 192 --in-flight 4 --runs 3", _FEED),
    Row("feed-mixed", "mixed tile counts: one row in six a 13-tile image, the rest 1 tile",
        "engine_feed.py --tiles mixed --rows 192 --runs 3", _FEED),
    Row("feed-mixed-in-flight-16", "mixed tile counts, 16 batches in flight",
        "engine_feed.py --tiles mixed --rows 192 --in-flight 16 --runs 3", _FEED),
    Row("peers", "vs Ray Data LLM and the bare engine: same images, prompt, model, engine settings; answers equal",
        "peers.py --runs 3", ("job/",), smoke="peers.py --rows 4 --max-tokens 16 --runs 1"),
    Row("fetch-latency", "fetch latency: the CPU stage's rows/s when every object takes 0 / 50 / 300 ms to answer "
        "(192 JPEGs 1024x768 on a local HTTP server, 8 rows on a host answering in 2 s, 8 on a dead host; the demo's "
        "2 workers x 0.5 CPU, 1 tile, 1 token; rows/s from the job's own timeline)",
        "fetch_latency.py --runs 3 --video-gb 0", ("CPU stage", "dead host"),
        smoke="fetch_latency.py --rows 8 --slow-rows 1 --dead-rows 1 --delays 0,50 --video-gb 0 --runs 1"),
    Row("long-video", "a long video from object storage (MJPEG AVI 640x480 on the test S3 server, 60 s clips), "
        "beside a 64 MB one", "fetch_latency.py --skip-images --video-gb 2 --runs 1", ("CPU worker", "bytes read")),
)  # fmt: skip

# Lines of a benchmark's output echoed to the console (all of it goes to the row's log).
_ECHO = re.compile(r"(ANSWERS DIFFER|FAILED|answers: |(\S[\w ]*)?run \d+/\d+: )")


# -- the machine ----------------------------------------------------------------------------------


def machine() -> str:
    """CPU model and count, memory, GPUs: what a figure was measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(
            next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
        )
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "? GiB"
    gpus = "no GPU"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines()
        gpus = f"{len(out)} GPU(s): {out[0].split('(')[0].split(':', 1)[-1].strip()}" if out else gpus
    return f"{os.cpu_count()} x {cpu}, {mem}, {gpus}"


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# -- running a row --------------------------------------------------------------------------------


def run_row(command: str, log: Path, timeout_s: float) -> dict:
    """Run one command as printed; keep its log, echo its progress and result lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load0, started = os.getloadavg()[0], time.monotonic()
    print(f"\n$ {command}    (log: {os.path.relpath(log, REPO)})", flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(shlex.split(command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        # Its own session: on a timeout the whole tree goes (sides, engines, Ray).
        watchdog = threading.Timer(timeout_s, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        out = []
        for line in proc.stdout:  # type: ignore[union-attr]
            f.write(line)
            out.append(line)
            if _ECHO.match(line):
                print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
        if not watchdog.is_alive():
            out.append(f"FAILED killed after {timeout_s:.0f} s\n")
        watchdog.cancel()
    text = "".join(out)
    failures = [x for x in text.splitlines() if x.startswith(("ANSWERS DIFFER", "FAILED"))]
    if rc != 0 and not failures:
        failures = [f"exit {rc}: " + " | ".join(text.strip().splitlines()[-3:])]
    return {"exit": rc, "failures": failures[:10], "metrics": common.parse_bench_lines(text),
            "wall_s": round(time.monotonic() - started, 1),
            "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}"}  # fmt: skip


# -- rendering ------------------------------------------------------------------------------------


def fmt_metric(m: dict) -> str:
    f, unit = m.get("fmt", ".3g"), m.get("unit", "")
    s = common.Spread(m["median"], m["min"], m["max"], m["n"], ()).fmt(f)
    return s + ("x" if unit == "x" else f" {unit}" if unit else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_results_md(results: dict, rows: tuple[Row, ...]) -> str:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (benchmarks/suite.py) from benchmarks/results.json: each figure is the "
             "median (min-max) over n runs of the command beside it, run from the repository root. "
             "Ratios are paired run by run; the sides ran in a rotated order and gave the same answers "
             "(or the row says FAILED).", "",
             "| what | command | figure | median (min-max) | n | machine |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        r = results.get(row.id)
        head = f"| {_cell(row.what)} | `{row.command}` "
        if r is None:
            lines.append(head + "| not measured yet | | | |")
            continue
        where = f"{r['machine']}; load {r['load']}; {r['date']}, commit {r['commit']}"
        if r["exit"] != 0:
            lines.append(head + f"| FAILED (exit {r['exit']}): {_cell('; '.join(r['failures']))} | | | {where} |")
        for i, m in enumerate(r["metrics"]):
            lead = head if i == 0 else "| | "
            lines.append(lead + f"| {_cell(m['metric'])} | {fmt_metric(m)} | {m['n']} | {where if i == 0 else ''} |")
    return "\n".join(lines) + "\n"


def readme_cell(row: Row, r: dict) -> str:
    if r["exit"] != 0:
        return "FAILED: " + "; ".join(r["failures"])
    shown = [m for m in r["metrics"] if not row.readme or m["metric"].startswith(row.readme)]
    n = sorted({m["n"] for m in shown})
    return "; ".join(f"{m['metric']} {fmt_metric(m)}" for m in shown) + f" (n={'/'.join(map(str, n))})"


def render_readme_block(results: dict, rows: tuple[Row, ...]) -> str:
    lines = [f"{BEGIN} generated by `make bench` (benchmarks/suite.py) from benchmarks/results.json -->",
             "| what | command | result: median (min-max) over n runs |", "|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(f"| {_cell(row.what)} | `{row.command}` | {_cell(readme_cell(row, results[row.id]))} |")
    lines.append(END)
    return "\n".join(lines)


def update_readme(results: dict) -> bool:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} block: not updated", flush=True)
        return False
    missing = [row.id for row in ROWS if row.id not in results]
    if missing:
        print(f"README.md not updated: no result yet for {', '.join(missing)}", flush=True)
        return False
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + render_readme_block(results, ROWS) + text[end:])
    return True


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated row ids (see --list)")
    ap.add_argument("--list", action="store_true", help="print the rows and their commands")
    ap.add_argument("--smoke", action="store_true", help="each benchmark once at its smallest size")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds one command may run")
    args = ap.parse_args()
    all_rows = ROWS
    if args.smoke:
        all_rows = tuple(Row(r.id, r.what, r.smoke, r.readme) for r in ROWS if r.smoke)
    rows = all_rows
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r.id for r in rows}
        if unknown:
            ap.error(f"unknown row id(s) {sorted(unknown)}; --list shows them")
        rows = tuple(r for r in rows if r.id in wanted)
    if args.list:
        for r in rows:
            print(f"{r.id:26} {r.command}")
        return 0

    out_dir = REPO / ".cache" / "bench"
    store = out_dir / "smoke-results.json" if args.smoke else RESULTS
    results = json.loads(store.read_text()) if store.exists() else {}
    where, sha = machine(), commit()
    for row in rows:
        r = run_row(row.command, out_dir / "logs" / f"{'smoke-' if args.smoke else ''}{row.id}.log", args.timeout)
        r.update(what=row.what, command=row.command, machine=where, commit=sha,
                 date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))  # fmt: skip
        results[row.id] = r
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=1) + "\n")  # after every row: a long suite can stop midway
        print(f"  -> {'ok' if r['exit'] == 0 else 'FAILED'} in {r['wall_s']:.0f} s, {len(r['metrics'])} figure(s)")
    md = store.with_suffix(".md")
    md.write_text(render_results_md(results, all_rows))
    print(f"\nwrote {md.relative_to(REPO)}" + ("" if args.smoke else f" and {store.relative_to(REPO)}"))
    if not args.smoke and update_readme(results):
        print("regenerated README.md's measured table")
    failed = [row.id for row in rows if results[row.id]["exit"] != 0]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
