"""Fetch-latency benchmark (issue 19): how much of the CPU stage's throughput survives object-
store and web latency, and what a long remote video costs a worker.

Images: N generated 1024x768 JPEGs served by a local HTTP server that waits `delay` before
every response, plus rows on one slow host (a second server, 2 s per response) and on one
dead host (a port nobody listens on), those first in the manifest. The real job runs
through the CLI (`internvl-batch run`, its own local Ray each time) with the demo's CPU
stage (2 workers x 0.5 CPU, engine
on 1 CPU), the tiny checkpoint and a cheap engine setting (1 tile, 1 output token), at
each delay in turn, the order rotated run by run. The CPU stage's rows/s comes from the
job's own timeline (`_state/timeline`, a sample per second): prepare's rows between its
first and last partial second. Printed per delay: median and (min-max) over --runs, and
the ratio to 0 ms paired run by run; the dead host's rows and how fast they failed. Every
run must give every row the same status and answer (exit 1 otherwise).

Long video (--video-gb, 0 to skip): an MJPEG AVI of that size (devtools write_large_video;
`df -h` is printed first and the file is deleted afterwards) on the test S3 server
(SeaweedFS), one row cut into 60 s clips, through the CLI, after the same for a 64 MB one
(the worker's memory when the video's size is no matter); reported: the CPU worker's peak
RSS (VmHWM of the `PrepareStage` actor, polled), the bytes it read (`video_bytes_read` in
_SUCCESS), the clips' statuses and the wall time.

  .venv/bin/python benchmarks/fetch_latency.py --runs 3 [--rows 192] [--video-gb 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

common.use_this_checkout()
REPO = common.REPO

from internvl_batch.devtools.sample_media import sample_image, write_large_video  # noqa: E402
from internvl_batch.devtools.tiny_model import make_tiny_model  # noqa: E402
from tests.media.httpserver import MediaHTTPServer  # noqa: E402

SLOW_DELAY_S = 2.0
WORKER = "PrepareStage"


def _config(model: Path, manifest: Path, out: Path, **preprocess) -> dict:
    """configs/demo.yaml's CPU stage and engine, 1 tile, 1 token; a sample per second."""
    return {
        "input": {"path": str(manifest)},
        "model": common.model_section(model, max_model_len=8192, max_num_seqs=16, max_images_per_prompt=8),
        "preprocess": {"max_num": 1, "multi_image_max_num": 1, **preprocess},
        "task": [{"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 1}}],
        "runtime": {"use_gpu": False, "replicas": 1, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 16, "progress_interval_s": 1,
                    "stall_timeout_s": 900},
        "output": {"path": str(out), "rows_per_file": 1000},
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(cfg: dict, work: Path, watch: bool = False) -> tuple[float, int]:
    """The CLI on `cfg`; (wall s, peak RSS in MB of the CPU workers when `watch`)."""
    import psutil

    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_ADDRESS": "local", "INTERNVL_BATCH_PROGRESS": "log",
           "RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    start = time.monotonic()
    with open(work / "job.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "internvl_batch.cli", "run", str(path)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        peak = 0
        while proc.poll() is None:
            if watch:
                for p in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        if WORKER in " ".join(p.cmdline()):
                            status = Path(f"/proc/{p.pid}/status").read_text()
                            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                            peak = max(peak, int(hwm.split()[1]) // 1024)
                    except (psutil.Error, OSError, StopIteration):
                        pass
            time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"the job failed (exit {proc.returncode}); see {work / 'job.log'}")
    return time.monotonic() - start, peak


def _prepare_rate(out: Path) -> float:
    """Rows/s of the CPU stage from the job's timeline: between its first and its last
    partial sample (whole seconds of work only)."""
    samples = []
    for chunk in sorted((out / "_state" / "timeline").glob("*.json")):
        samples += json.loads(chunk.read_text())["samples"]
    points = sorted((s["t"], s["stages"].get("prepare", 0)) for s in samples)
    total = points[-1][1]
    moving = [(t, n) for t, n in points if 0 < n < total]
    if len(moving) >= 2 and moving[-1][0] > moving[0][0]:
        return (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0])
    first = max(t for t, n in points if n == 0)  # too quick for two partial samples
    last = min(t for t, n in points if n == total)
    return total / (last - first)


def _answers(out: Path) -> dict[tuple, tuple]:
    rows = pq.read_table(out, columns=["id", "task", "status", "response", "preprocess_ms"]).to_pylist()
    return {(r["id"], r["task"]): (r["status"], r["response"], r["preprocess_ms"]) for r in rows}


def images(args, work: Path, model: Path, check: common.AnswerCheck) -> None:
    fast, slow = MediaHTTPServer(), MediaHTTPServer()
    dead = f"http://127.0.0.1:{_free_port()}"
    rows = []
    with fast, slow:
        for i in range(args.rows):
            buf = io.BytesIO()
            sample_image(seed=i, size=(1024, 768)).save(buf, "JPEG", quality=90)
            fast.files[f"/{i}.jpg"] = buf.getvalue()
            rows.append({"id": f"img-{i:04d}", "image": f"{fast.url}/{i}.jpg"})
        # First in the manifest: their fetches start first, so a slow row's 2 s is not a tail
        # the CPU stage's rate would include (no row waits for them: rows leave as they are ready).
        for i in range(args.slow_rows):
            slow.files[f"/{i}.jpg"] = fast.files[f"/{i}.jpg"]
        rows[:0] = [{"id": f"slow-{i}", "image": f"{slow.url}/{i}.jpg"} for i in range(args.slow_rows)]
        rows[:0] = [{"id": f"dead-{i}", "image": f"{dead}/{i}.jpg"} for i in range(args.dead_rows)]
        slow.delays["*"] = SLOW_DELAY_S
        manifest = work / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        fetch = {"allowed_private_hosts": ["127.0.0.0/8"]}
        rates: dict[int, list[float]] = {d: [] for d in args.delays}
        jobs: dict[int, list[float]] = {d: [] for d in args.delays}
        dead_ms: list[float] = []
        reference = None
        for run in range(args.runs):
            order = common.rotated(args.delays, run)
            print(f"run {run + 1}/{args.runs}: {' -> '.join(f'{d} ms' for d in order)}", flush=True)
            for delay in order:
                fast.delays["*"] = delay / 1000
                out = work / f"out-{run}-{delay}"
                wall, _ = _run_job(_config(model, manifest, out, fetch=fetch), work)
                rates[delay].append(_prepare_rate(out))
                jobs[delay].append(json.loads((out / "_SUCCESS").read_text())["pairs_per_s"])
                got = _answers(out)
                dead_ms += [v[2] for k, v in got.items() if k[0].startswith("dead-")]
                answers = {"/".join(k): v[:2] for k, v in got.items()}
                if reference is None:
                    reference = answers
                else:
                    check.compare(f"run {run + 1}", f"{args.delays[0]} ms, run 1", reference, f"{delay} ms", answers)
                print(f"run {run} delay {delay:4d} ms: CPU stage {rates[delay][-1]:6.2f} rows/s, job "
                      f"{jobs[delay][-1]:.2f} rows/s, wall {wall:.0f} s", flush=True)  # fmt: skip
                shutil.rmtree(out)
    statuses = {}
    for status, _ in reference.values():
        statuses[status] = statuses.get(status, 0) + 1
    print(f"\nCPU stage rows/s from the job's timeline, {args.runs} run(s); statuses {statuses}")
    base = rates[args.delays[0]]
    for delay in args.delays:
        common.emit(f"CPU stage rows/s at {delay} ms", rates[delay], "rows/s", ".2f")
        if delay != args.delays[0]:
            common.emit(f"CPU stage at {delay} ms / {args.delays[0]} ms", common.ratios(rates[delay], base), "x", ".2f")
        common.emit(f"whole job pairs/s at {delay} ms", jobs[delay], "pairs/s", ".2f")
    dead = [v[0] for k, v in reference.items() if k.startswith("dead-")]
    if any(st != "fetch_error" for st in dead):
        check.failed(f"the dead host's rows: {sorted(set(dead))}, not all fetch_error")
    common.emit("dead host rows failed within", [max(dead_ms)], "ms", ".0f")
    common.emit("dead host rows failed, median", [statistics.median(dead_ms)], "ms", ".0f")


def long_video(args, work: Path, model: Path, gb: float, check: common.AnswerCheck) -> None:
    from tests.support.s3server import S3Server

    print(subprocess.run(["df", "-h", str(work)], capture_output=True, text=True).stdout.strip())
    path = write_large_video(work / "long.avi", int(gb * 1024**3))
    size = path.stat().st_size
    try:
        with S3Server() as s3:
            options = s3.create_bucket("long-video")
            s3.client().upload_file(str(path), "long-video", "long.avi")
            path.unlink()  # the server holds its copy: the job reads it from there
            manifest = work / "video.jsonl"
            manifest.write_text(json.dumps({"id": "long", "video": "s3://long-video/long.avi"}) + "\n")
            out = work / f"out-video-{gb}"
            cfg = _config(model, manifest, out, fetch={"storage_options": {"s3": options}},
                          video={"num_segments": 8, "clip_s": 60.0})  # fmt: skip
            wall, peak = _run_job(cfg, work, watch=True)
    finally:
        path.unlink(missing_ok=True)
    success = json.loads((out / "_SUCCESS").read_text())
    read = success["counters"].get("video_bytes_read", 0)
    got = pq.read_table(out, columns=["clip", "status", "preprocess_ms"]).to_pylist()
    statuses = sorted({r["status"] for r in got})
    print(f"\nvideo: {size / 1024**3:.2f} GB MJPEG AVI (640x480) on the test S3 server, {len(got)} clip(s) of 60 s, "
          f"statuses {statuses}; wall {wall:.0f} s")  # fmt: skip
    if statuses != ["ok"]:
        check.failed(f"the {size / 1024**3:.2f} GB video's clips: {statuses}")
    what = f"{size / 1024**3:.2f} GB video"
    common.emit(f"CPU worker peak RSS, {what}", [peak], "MB", ".0f")
    common.emit(f"bytes read / size, {what}", [read / size], "x", ".2f")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=192)
    ap.add_argument("--delays", default="0,50,300", help="ms per response, the first is the baseline")
    common.add_runs_arg(ap)
    ap.add_argument("--slow-rows", type=int, default=8)
    ap.add_argument("--dead-rows", type=int, default=8)
    ap.add_argument("--video-gb", type=float, default=2.0, help="0: no long-video line")
    ap.add_argument("--skip-images", action="store_true")
    return ap


def main() -> int:
    args = build_parser().parse_args()
    args.delays = [int(d) for d in args.delays.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fetch-latency-", dir=REPO / ".cache" if (REPO / ".cache").exists() else None))
    try:
        model = make_tiny_model(work / "model", seed=0)
        check = common.AnswerCheck()
        if not args.skip_images:
            images(args, work, model, check)
        if args.video_gb > 0:
            # A small one first: what the same worker peaks at when the video is no matter.
            for gb in (1 / 16, args.video_gb):
                long_video(args, work, model, gb, check)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check.exit_code()


if __name__ == "__main__":
    raise SystemExit(main())
