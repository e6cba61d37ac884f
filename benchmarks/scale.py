"""Nightly scale: the driver stays flat in rows, and the data plane alone is fast.

Generates synthetic manifests (`id` + an `s3://` image URL per row) and measures, each in a
fresh driver process whose peak RSS (VmHWM) is sampled from /proc:

  dry-run   `internvl-batch run CONFIG --dry-run` over 1M / 10M rows (parquet and JSONL)
            and 100M rows (parquet): wall time and driver peak RSS. Targets: 10M rows
            under 1 GB and at most 1.5x the 1M figure; 100M under 2 GB. A dry run cuts
            new manifest files of up to 256 MB in all on the driver, larger ones in Ray
            tasks (job/runner.py DRY_RUN_LOCAL_BYTES).
  plane     the whole job over 1M rows with the media and engine stages replaced by the
            trivial stages defined in this file (never in the package): rows/s and driver
            peak RSS. Target >= 10,000 rows/s here. The stand-ins isolate what the driver
            and Ray Data cost per row (reading, sharding, hand-offs, parts, ledger); media
            work and inference scale with CPU workers and GPUs, not with the driver.
  kill      the same 1M-row run killed at a random point, then rerun: every (id, task)
            exactly once.
  wds       `--dry-run` over WebDataset directories of 1k and 10k small generated tars
            (4 samples each: a tiny jpg and a json): wall time and driver peak RSS; each tar
            is planned by a Ray task, the driver holds O(files + shards).

Each measurement runs --runs times (default 3), the measurements in a rotated order run by
run, and prints median (min-max). Every run is checked: a dry run must plan the manifest's
row count (a WebDataset one also a shard per tar), a data-plane run (and a killed run's rerun) must write every (id, task) exactly
once; a miss prints a line naming the measurement and makes the benchmark exit 1.

    .venv/bin/python benchmarks/scale.py [--sizes 1M,10M] [--big 100M] [--plane 1M] [--kill] [--wds 1k,10k] [--runs 3]
    .venv/bin/python benchmarks/scale.py --quick          # 100k rows, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

REPO = common.REPO
FILE_ROWS = 1_000_000


def _count(s: str) -> int:
    s = s.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if scale > 1 else s) * scale)


# -- manifests ---------------------------------------------------------------------------------


def _ids(start: int, n: int) -> tuple[pa.Array, pa.Array]:
    import numpy as np
    import pyarrow.compute as pc

    nums = pa.array(np.arange(start, start + n)).cast(pa.string())
    ids = pc.binary_join_element_wise("img-", nums, "")
    urls = pc.binary_join_element_wise("s3://nightly-media/2026-12-01/", nums, ".jpg", "")
    return ids, urls


def write_manifest(root: Path, rows: int, fmt: str) -> Path:
    """`rows` rows in files of up to 1M rows (parquet row groups of 128k rows)."""
    import pyarrow.parquet as pq

    d = root / f"{fmt}-{rows}"
    if (d / "_complete").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        ids, urls = _ids(start, n)
        if fmt == "parquet":
            pq.write_table(pa.table({"id": ids, "image": urls}), d / f"part-{k:05d}.parquet", row_group_size=131072)
        else:
            with open(d / f"part-{k:05d}.jsonl", "w") as f:
                f.writelines(f'{{"id": "{i}", "image": "{u}"}}\n' for i, u in zip(ids.to_pylist(), urls.to_pylist()))
    (d / "_complete").touch()
    return d


def write_wds(root: Path, tars: int, samples: int = 4) -> Path:
    """`tars` small WebDataset shards (`{00000..}.tar`), `samples` per tar: key.jpg + key.json."""
    import io
    import tarfile

    d = root / f"wds-{tars}"
    if (d / "_complete").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    for t in range(tars):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for s in range(samples):
                key = f"{t * samples + s:09d}"
                for ext, data in (("jpg", b"\xff\xd8 not decoded by planning " + key.encode()),
                                  ("json", json.dumps({"caption": f"sample {key}"}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        (d / f"{t:05d}.tar").write_bytes(buf.getvalue())
    (d / "_complete").touch()
    return d


def job_config(manifest: Path, out: Path, **runtime) -> dict:
    return {
        "input": {"path": str(manifest)},
        "model": {"path": "OpenGVLab/InternVL2_5-8B"},
        "task": {"name": "caption", "preset": "short_caption"},
        "runtime": {"use_gpu": False, "cpu_workers": 1, "cpus_per_worker": 0.5, "engine_cpus": 0.5, "readers": 2,
                    "preprocess_batch_size": 1024, "engine_batch_size": 1024, "progress_interval_s": 30, **runtime},
        "output": {"path": str(out), "rows_per_file": 20_000, "flush_interval_s": 30},
    }  # fmt: skip


# -- a driver in its own process, its peak RSS sampled -----------------------------------------


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_driver(cmd: list[str], kill_after_s: float | None = None) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    killed = False
    out = b""
    import threading

    reader = threading.Thread(target=lambda: globals().__setitem__("_out", proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_kb(proc.pid))
        if kill_after_s is not None and time.monotonic() - start > kill_after_s:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    reader.join(timeout=30)
    out = globals().get("_out", b"")
    return {"wall_s": round(time.monotonic() - start, 1), "driver_peak_rss_mb": round(peak / 1024, 1),
            "returncode": proc.returncode, "killed": killed, "output": out.decode(errors="replace")}  # fmt: skip


def dry_run(root: Path, manifest: Path, name: str) -> dict:
    import yaml

    cfg = root / f"dry-{name}.yaml"
    cfg.write_text(yaml.safe_dump(job_config(manifest, root / f"out-dry-{name}")))
    res = run_driver([sys.executable, "-m", "internvl_batch.cli", "run", str(cfg), "--dry-run"])
    assert res["returncode"] == 0, res["output"][-3000:]
    # Its plan, as `run --dry-run` prints it (job/runner.py plan_text).
    rows = re.search(r"^manifest: [\d,]+ file\(s\), ([\d,]+) rows", res["output"], re.M)
    shards = re.search(r"^shards: (\d+) in all", res["output"], re.M)
    assert rows and shards, f"no plan in the dry run's output:\n{res['output'][-3000:]}"
    return {"rows": int(rows[1].replace(",", "")), "shards": int(shards[1]), **_public(res)}


def _public(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "output"}


# -- the data plane with trivial stages --------------------------------------------------------


def _stand_in_stages():
    """Defined here, not in the package: no media work, no model."""
    import pyarrow as pa

    from internvl_batch.job.stages.base import AsyncStage, Stage
    from internvl_batch.records import output_schema, passthrough_field, prepared_schema
    from internvl_batch.status import Status

    class NoMedia(Stage):
        name = "prepare"

        def __init__(self, cfg, passthrough=(), monitor=None):
            self.attach_monitor(monitor)
            self.schema = prepared_schema(passthrough)

        def process(self, batch):
            n = batch.num_rows
            return (
                batch.append_column("tiles", pa.nulls(n, pa.large_binary()))
                .append_column("tiles_per_image", pa.array([[1]] * n, pa.list_(pa.int32())))
                .append_column("preprocess_ms", pa.array([0.0] * n))
                .select(self.schema.names)
                .cast(self.schema)
            )

    class Echo(AsyncStage):
        name = "inference"

        def __init__(self, model, tasks, passthrough, run_id, monitor=None):
            self.attach_monitor(monitor)
            self.passthrough, self.run_id = passthrough, run_id
            self.schema = output_schema(passthrough)
            self.task = tasks[0].name

        async def process(self, batch):
            n = batch.num_rows
            ok = pa.array([Status.OK.value] * n)
            cols = {
                "id": batch["id"], "task": pa.array([self.task] * n), "status": ok,
                "error": pa.nulls(n, pa.string()), "response": batch["id"], "finish_reason": pa.array(["stop"] * n),
                "num_prompt_tokens": pa.array([1] * n, pa.int32()), "num_output_tokens": pa.array([1] * n, pa.int32()),
                "num_tiles": pa.array([1] * n, pa.int32()), "media": batch["media"], "model": pa.array(["echo"] * n),
                "run_id": pa.array([self.run_id] * n), "preprocess_ms": pa.array([0.0] * n),
                "engine_ms": pa.array([0.0] * n), "shard": batch["shard"], "row": batch["row"],
                "responses": pa.nulls(n, pa.list_(pa.string())), "finish_reasons": pa.nulls(n, pa.list_(pa.string())),
                "output_token_counts": pa.nulls(n, pa.list_(pa.int32())),
                **{c: batch[passthrough_field(c)] for c in self.passthrough},
            }  # fmt: skip
            return pa.table(cols).cast(self.schema)

    return {"prepare": NoMedia, "inference": Echo}


def plane_child(cfg_path: str) -> int:
    """The driver of a data-plane run (this file, re-invoked with --child)."""
    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    summary = run_job(load_config(cfg_path), stages=_stand_in_stages())
    print("SUMMARY " + json.dumps({"rows_per_s": summary.pairs_per_s, "written": summary.written_this_run,
                                   "wall_s": summary.wall_s, "finished": summary.finished}))  # fmt: skip
    return 0 if summary.finished else 1


def _plane_run(root: Path, manifest: Path, name: str, kill_after_s: float | None = None) -> tuple[dict, Path]:
    import yaml

    out = root / f"out-plane-{name}"
    cfg = root / f"plane-{name}.yaml"
    cfg.write_text(yaml.safe_dump(job_config(manifest, out)))
    res = run_driver([sys.executable, __file__, "--child", str(cfg)], kill_after_s=kill_after_s)
    if res["killed"]:
        return _public(res), out
    assert res["returncode"] == 0, res["output"][-3000:]
    summary = json.loads(next(line for line in res["output"].splitlines() if line.startswith("SUMMARY "))[8:])
    return {**summary, **_public(res)}, out


def plane(root: Path, manifest: Path, name: str, kill: bool) -> dict:
    """A clean run for rows/s; then (kill) another one killed at a random point and rerun."""
    import shutil

    for old in root.glob(f"out-plane-{name}*"):
        shutil.rmtree(old)  # every run starts from an empty output
    result, out = _plane_run(root, manifest, name)
    result["exactly_once"] = _check_exactly_once(out, manifest)
    if kill:
        after = random.uniform(10, max(11, 0.8 * result["wall_s"]))
        killed, out = _plane_run(root, manifest, f"{name}-killed", kill_after_s=after)
        rerun, _ = _plane_run(root, manifest, f"{name}-killed")
        result["kill"] = {"killed_after_s": round(after, 1), "killed_run": killed, "rerun_written": rerun["written"],
                          "exactly_once": _check_exactly_once(out, manifest)}  # fmt: skip
    return result


def _check_exactly_once(out: Path, manifest: Path) -> bool:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    got = pads.dataset(out, format="parquet").to_table(columns=["id", "task"])
    want = pads.dataset(manifest, format="parquet" if "parquet" in manifest.name else "json").count_rows()
    return got.num_rows == want and pc.count_distinct(got["id"]).as_py() == want


def check_run(check: common.AnswerCheck, run: int, this: dict[str, dict], expected: dict[str, dict]) -> None:
    """A dry run plans every manifest row (and the shards known beforehand: a tar's); a
    data-plane run (and a killed run's rerun) writes every (id, task) exactly once."""
    planned = {case: {k: r[k] for k in expected[case]} for case, r in this.items() if case.startswith("dry run")}
    check.compare(f"plans, run {run + 1}", "manifest", {c: expected[c] for c in planned}, "plan", planned)
    for case, r in this.items():
        if not case.startswith("dry run"):
            once = {"exactly once": r["exactly_once"]} | ({"kill, rerun exactly once": r["kill"]["exactly_once"]}
                                                           if "kill" in r else {})  # fmt: skip
            check.compare(f"{case}, run {run + 1}", "expected", dict.fromkeys(once, True), "output", once)


def report(results: dict[str, list[dict]], sizes: list[str], wds: list[str]) -> None:
    for case, rs in results.items():
        if case.startswith("dry run"):
            print(f"{case}: {rs[0]['shards']} shards")
            common.emit(f"{case}: wall", [r["wall_s"] for r in rs], "s", ".1f")
            common.emit(f"{case}: driver peak RSS", [r["driver_peak_rss_mb"] for r in rs], "MB", ".0f")
        else:
            common.emit(f"{case}: rows/s (target >= 10,000)", [r["rows_per_s"] for r in rs], "rows/s", ",.0f")
            common.emit(f"{case}: wall incl. start-up", [r["wall_s"] for r in rs], "s", ".1f")
            common.emit(f"{case}: driver peak RSS", [r["driver_peak_rss_mb"] for r in rs], "MB", ".0f")
            kills = [r["kill"] for r in rs if "kill" in r]
            if kills:
                print(f"{case}: killed after {[k['killed_after_s'] for k in kills]} s, reruns wrote "
                      f"{[k['rerun_written'] for k in kills]} rows")  # fmt: skip
    # Driver RSS of the biggest over the smallest size, paired run by run.
    pairs = [(f"{sizes[-1]} / {sizes[0]} ({fmt}; target <= 1.5x)", f"{sizes[0]} {fmt}", f"{sizes[-1]} {fmt}")
             for fmt in ("parquet", "jsonl")] if len(sizes) >= 2 else []  # fmt: skip
    if len(wds) >= 2:
        pairs.append((f"{wds[-1]} / {wds[0]} tars (webdataset)", f"{wds[0]} webdataset", f"{wds[-1]} webdataset"))
    for what, lo, hi in pairs:
        rss_lo, rss_hi = ([r["driver_peak_rss_mb"] for r in results[f"dry run {k}"]] for k in (lo, hi))
        common.emit(f"driver RSS {what}", common.ratios(rss_hi, rss_lo), "x", ".2f")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1M,10M", help="dry runs over these sizes, parquet and JSONL ('' to skip)")
    ap.add_argument("--big", default="100M", help="one more parquet dry run at this size ('' to skip)")
    ap.add_argument("--plane", default="1M", help="data-plane run size ('' to skip)")
    ap.add_argument("--kill", action="store_true", help="also kill the data-plane run once and rerun it")
    ap.add_argument("--wds", default="", help="dry runs over WebDataset dirs of this many tars, e.g. 1k,10k")
    ap.add_argument("--quick", action="store_true", help="100k rows everywhere, no big run")
    ap.add_argument("--dir", default=None, help="where manifests are kept (default: a temp dir)")
    common.add_runs_arg(ap)
    return ap


def main() -> int:
    common.use_this_checkout()
    args = build_parser().parse_args()
    if args.child:
        return plane_child(args.child)
    if args.quick:
        args.sizes, args.big, args.plane = "100k", "", "100k"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(args.dir or tempfile.mkdtemp(prefix="internvl-scale-"))
    sizes = [s for s in args.sizes.split(",") if s]
    # Every manifest first (off the clock), then the measurements, rotated run by run.
    cases, expected = {}, {}
    for size, fmt in [(s, f) for s in sizes for f in ("parquet", "jsonl")] + ([(args.big, "parquet")] * bool(args.big)):
        manifest = write_manifest(root, _count(size), fmt)
        name = f"dry run {size} {fmt}"
        cases[name] = lambda run, manifest=manifest, name=f"{fmt}-{size}": dry_run(root, manifest, name)
        expected[name] = {"rows": _count(size)}
    wds = [s for s in args.wds.split(",") if s]
    for size in wds:
        d, name = write_wds(root, _count(size)), f"dry run {size} webdataset"
        cases[name] = lambda run, d=d, name=f"wds-{size}": dry_run(root, d, name)
        expected[name] = {"rows": 4 * _count(size), "shards": _count(size)}  # 4 samples a tar, a shard a tar
    if args.plane:
        manifest = write_manifest(root, _count(args.plane), "parquet")
        cases[f"data plane {args.plane}"] = lambda run, m=manifest: plane(root, m, args.plane, args.kill)
    check = common.AnswerCheck()
    results = common.run_rotated(cases, args.runs, after_run=lambda run, this: check_run(check, run, this, expected))
    print()
    report(results, sizes, wds)
    print(json.dumps(results, indent=1))
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
