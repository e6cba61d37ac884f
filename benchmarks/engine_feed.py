"""Does the job keep the engine fed? The whole job vs the bare engine fed every request at
once, same engine config, same inputs, mixed output lengths (two tasks: 8 and 128 tokens).

A GPU decode step costs about the same for 4 or 64 sequences, so what a GPU feels is how
often the engine has work queued. This CPU build cannot show that through throughput
alone (the engine's own speed moves ±40% between runs here), so each side reports:
  busy_s     from the engine's first request to its last result (start-up excluded);
  occupancy  the share of that steady state with requests waiting or max_num_seqs running,
             from vLLM's own scheduler statistics (engines/occupancy.py, fed by engines/vllm/stat_logger.py).
job/bare = bare busy_s / job busy_s (1.0: the job costs the engine nothing).

Both sides run in a fresh process pinned to core 0 (`taskset`), with vLLM's compute
threads bound to core 1 (VLLM_CPU_OMP_THREADS_BIND), so CPU contention between the job's
own work and the engine stays visible instead of blurring both.

    .venv/bin/python benchmarks/engine_feed.py [--rows 48] [--runs 3] [--tiles mixed]

--tiles mixed: one row in six is a 13-tile image (1600x1200, max_num 12), the rest are
single tiles: the workload where a big image might hold back a batch of small ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_NUM = {"small": 4, "mixed": 12}


def _config(model: str, manifest: Path, out: Path, max_num_seqs: int, in_flight: int | None, tiles: str) -> dict:
    return {
        "input": {"path": str(manifest)},
        "model": {"path": model, "dtype": "float32", "max_model_len": 4096, "max_num_seqs": max_num_seqs,
                  "max_dynamic_patch": MAX_NUM[tiles], "enforce_eager": True, "cpu_kvcache_gib": 2},
        "preprocess": {"max_num": MAX_NUM[tiles]},
        "task": [
            {"name": "short", "preset": "short_caption", "sampling": {"max_tokens": 8}},
            {"name": "long", "prompt": "Describe the image in detail.", "sampling": {"max_tokens": 128}},
        ],
        "runtime": {"use_gpu": False, "cpu_workers": 1, "cpus_per_worker": 0.5, "engine_cpus": 0.5,
                    "preprocess_batch_size": 2, "engine_batch_size": 8, "progress_interval_s": 1e9}
                   | ({"engine_batches_in_flight": in_flight} if in_flight else {}),
        "output": {"path": str(out), "rows_per_file": 1000},
    }  # fmt: skip


def _size(i: int, tiles: str) -> tuple[int, int]:
    if tiles == "mixed":
        return (1600, 1200) if i % 6 == 0 else (448, 448)
    return 320 + 40 * (i % 9), 240 + 30 * (i % 7)


def _inputs(root: Path, rows: int, tiles: str) -> Path:
    from internvl_batch.devtools.sample_media import sample_image

    lines = []
    for i in range(rows):
        path = root / f"img{i}.png"
        sample_image(seed=i, size=_size(i, tiles)).save(path)
        lines.append(json.dumps({"id": f"r{i}", "image": str(path)}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def side_bare(cfg_path: str) -> dict:
    """Every request handed to the engine at once; its own clock and occupancy."""
    from PIL import Image

    from internvl_batch.config import load_config
    from internvl_batch.engines.base import EngineRequest
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.job.readers import read_manifest
    from internvl_batch.media.tiling import tile_image
    from internvl_batch.model.prompts import build_prompt

    cfg = load_config(cfg_path)
    reqs = []
    for row in read_manifest(cfg.input):
        tiles = tile_image(Image.open(row.images[0]).convert("RGB"), max_num=cfg.preprocess.max_num)
        for task in cfg.task:
            prompt = build_prompt(task.question_for(None), [len(tiles)])
            reqs.append(EngineRequest(id=f"{row.id}/{task.name}", prompt=prompt, tiles=tiles, sampling=task.sampling,
                                      media_key=row.id))  # fmt: skip
    engine = VLLMEngine(cfg.model, cfg.task[0].sampling)
    try:
        results = engine.generate(reqs)
        assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"][:3]
        stats = engine.occupancy.stats()
    finally:
        engine.shutdown()
    return {"busy_s": round(stats["last_finish"] - stats["first_submit"], 3), "occupancy": stats["occupancy"],
            "requests": len(reqs), "output_tokens": sum(r.num_output_tokens for r in results)}  # fmt: skip


def side_job(cfg_path: str) -> dict:
    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    summary = run_job(load_config(cfg_path))
    assert summary.finished
    return {"busy_s": summary.engine["busy_s"], "occupancy": summary.engine["occupancy"],
            "requests": summary.written_this_run, "wall_s": summary.wall_s}  # fmt: skip


def _run_side(side: str, cfg_path: Path) -> dict:
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = ["taskset", "-c", "0", sys.executable, __file__, "--side", side, str(cfg_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{side} side failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("cfg", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--in-flight", type=int, help="runtime.engine_batches_in_flight (default: the job's)")
    ap.add_argument("--tiles", choices=sorted(MAX_NUM), default="small", help="the images' tile counts")
    ap.add_argument("--model", help="default: the tiny checkpoint, built on first use")
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(side_bare(args.cfg) if args.side == "bare" else side_job(args.cfg)), flush=True)
        return 0

    import yaml

    root = Path(tempfile.mkdtemp(prefix="engine-feed-"))
    model = args.model
    if model is None:
        from internvl_batch.devtools.tiny_model import make_tiny_model

        model = str(make_tiny_model(root / "model"))
    manifest = _inputs(root, args.rows, args.tiles)
    ratios, occ_job, occ_bare = [], [], []
    for run in range(args.runs):
        out = root / f"out-{run}"
        cfg_path = root / f"job-{run}.yaml"
        cfg_path.write_text(
            yaml.safe_dump(_config(model, manifest, out, args.max_num_seqs, args.in_flight, args.tiles))
        )
        bare = _run_side("bare", cfg_path)
        job = _run_side("job", cfg_path)
        ratios.append(bare["busy_s"] / job["busy_s"])
        occ_job.append(job["occupancy"])
        occ_bare.append(bare["occupancy"])
        print(f"run {run + 1}: bare {bare['busy_s']:.1f}s occupancy {bare['occupancy']:.3f} | job {job['busy_s']:.1f}s "
              f"occupancy {job['occupancy']:.3f} (wall {job['wall_s']:.1f}s) | job/bare {ratios[-1]:.3f}", flush=True)  # fmt: skip

    def spread(xs):
        return f"median {statistics.median(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"

    print(f"job/bare (engine busy span, same {args.rows} rows x 2 tasks): {spread(ratios)}  target >= 0.9")
    print(f"occupancy, job:  {spread(occ_job)}  target >= 0.95")
    print(f"occupancy, bare: {spread(occ_bare)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
