"""Nightly scale: the driver stays flat in rows, and the data plane alone is fast.

Generates synthetic manifests (`id` + an `s3://` image URL per row) and measures, each in a
fresh driver process whose peak RSS (VmHWM) is sampled from /proc:

  dry-run   `internvl-batch run CONFIG --dry-run` over 1M / 10M rows (parquet and JSONL)
            and 100M rows (parquet): wall time and driver peak RSS. Targets: 10M rows
            under 1 GB and at most 1.5x the 1M figure; 100M under 2 GB.
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

    .venv/bin/python benchmarks/scale.py [--sizes 1M,10M] [--big 100M] [--plane 1M] [--kill] [--wds 1k,10k]
    .venv/bin/python benchmarks/scale.py --quick          # 100k rows, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
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
    import re

    # The dry run's plan text (job/runner.py plan_text): "manifest: F file(s), R rows x ..." and "shards: S in all".
    rows = int(re.search(r"manifest: [\d,]+ file\(s\), ([\d,]+) rows", res["output"]).group(1).replace(",", ""))
    shards = int(re.search(r"shards: (\d+) in all", res["output"]).group(1))
    return {"rows": rows, "shards": shards, **_public(res)}


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1M,10M", help="dry runs over these sizes, parquet and JSONL")
    ap.add_argument("--big", default="100M", help="one more parquet dry run at this size ('' to skip)")
    ap.add_argument("--plane", default="1M", help="data-plane run size ('' to skip)")
    ap.add_argument("--kill", action="store_true", help="also kill the data-plane run once and rerun it")
    ap.add_argument("--wds", default="", help="dry runs over WebDataset dirs of this many tars, e.g. 1k,10k")
    ap.add_argument("--runs", type=int, default=1, help="repeat each WebDataset dry run (median and spread)")
    ap.add_argument("--quick", action="store_true", help="100k rows everywhere, no big run")
    ap.add_argument("--dir", default=None, help="where manifests are kept (default: a temp dir)")
    args = ap.parse_args()
    if args.child:
        return plane_child(args.child)
    if args.quick:
        args.sizes, args.big, args.plane = "100k", "", "100k"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(args.dir or tempfile.mkdtemp(prefix="internvl-scale-"))
    results: dict = {"dry_run": {}, "plane": None}
    for size in [s for s in args.sizes.split(",") if s]:
        for fmt in ("parquet", "jsonl"):
            manifest = write_manifest(root, _count(size), fmt)
            results["dry_run"][f"{size} {fmt}"] = r = dry_run(root, manifest, f"{fmt}-{size}")
            print(f"dry run {size:>5} {fmt:8}: {r['wall_s']:7.1f}s  driver peak RSS {r['driver_peak_rss_mb']:7.1f} MB"
                  f"  ({r['shards']} shards)", flush=True)  # fmt: skip
    if args.big:
        manifest = write_manifest(root, _count(args.big), "parquet")
        results["dry_run"][f"{args.big} parquet"] = r = dry_run(root, manifest, f"parquet-{args.big}")
        print(f"dry run {args.big:>5} parquet : {r['wall_s']:7.1f}s  driver peak RSS {r['driver_peak_rss_mb']:7.1f} MB"
              f"  ({r['shards']} shards)", flush=True)  # fmt: skip
    dr = results["dry_run"]
    sizes = [s for s in args.sizes.split(",") if s]
    if len(sizes) >= 2:
        for fmt in ("parquet", "jsonl"):
            lo, hi = dr[f"{sizes[0]} {fmt}"], dr[f"{sizes[-1]} {fmt}"]
            print(f"driver RSS {sizes[-1]} / {sizes[0]} ({fmt}): "
                  f"{hi['driver_peak_rss_mb'] / lo['driver_peak_rss_mb']:.2f}x (target <= 1.5x)")  # fmt: skip
    wds = [s for s in args.wds.split(",") if s]
    for size in wds:
        d = write_wds(root, _count(size))
        runs = []
        for i in range(args.runs):
            r = dry_run(root, d, f"wds-{size}-{i}")
            assert r["rows"] == 4 * _count(size) and r["shards"] == _count(size), r
            runs.append(r)
        walls, rss = sorted(r["wall_s"] for r in runs), sorted(r["driver_peak_rss_mb"] for r in runs)
        results["dry_run"][f"{size} webdataset"] = {"rows": runs[0]["rows"], "shards": runs[0]["shards"],
                                                   "wall_s": walls, "driver_peak_rss_mb": rss}  # fmt: skip
        print(f"dry run {size:>5} tars (webdataset): {walls[len(walls) // 2]:7.1f}s ({walls[0]}-{walls[-1]})  "
              f"driver peak RSS {rss[len(rss) // 2]:7.1f} MB ({rss[0]}-{rss[-1]})  ({runs[0]['shards']} shards, "
              f"{runs[0]['rows']} samples)", flush=True)  # fmt: skip
    if len(wds) >= 2:
        lo, hi = (results["dry_run"][f"{s} webdataset"]["driver_peak_rss_mb"] for s in (wds[0], wds[-1]))
        print(f"driver RSS {wds[-1]} / {wds[0]} tars: {hi[len(hi) // 2] / lo[len(lo) // 2]:.2f}x")
    if args.plane:
        manifest = write_manifest(root, _count(args.plane), "parquet")
        results["plane"] = r = plane(root, manifest, args.plane, args.kill)
        print(f"data plane {args.plane}: {r['rows_per_s']:,.0f} rows/s (target >= 10,000; wall {r['wall_s']}s incl. "
              f"start-up), driver peak RSS {r['driver_peak_rss_mb']:.1f} MB, exactly once: {r['exactly_once']}")  # fmt: skip
        if args.kill:
            k = r["kill"]
            print(f"killed after {k['killed_after_s']}s, rerun wrote {k['rerun_written']:,} rows: "
                  f"exactly once {k['exactly_once']}")  # fmt: skip
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
