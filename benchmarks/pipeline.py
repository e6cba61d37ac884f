"""The whole job vs the bare engine fed the same pre-tiled inputs in a plain loop.

Same machine, same run, same model and sampling. Both sides are timed in steady state:
from the first result batch to the last (engine start-up excluded on both sides), so the
ratio shows what the pipeline costs on top of the engine: fetch/decode/tile on CPU
workers, Ray Data's hand-offs, the parquet writer. Target >= 0.95x.

    .venv/bin/python benchmarks/pipeline.py [--rows 64] [--max-num 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _config(model: str, manifest: Path, out: Path, args) -> dict:
    return {
        "input": {"path": str(manifest)},
        "model": {"path": model, "dtype": "float32", "max_model_len": 4096, "max_num_seqs": args.batch,
                  "max_dynamic_patch": args.max_num, "enforce_eager": True, "cpu_kvcache_gib": 2},
        "preprocess": {"max_num": args.max_num},
        "task": {"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": args.max_tokens}},
        "runtime": {"use_gpu": False, "cpu_workers": 1, "cpus_per_worker": 1, "engine_cpus": 1,
                    "preprocess_batch_size": 4, "engine_batch_size": args.batch, "progress_interval_s": 1e9},
        "output": {"path": str(out), "rows_per_file": 1000},
    }  # fmt: skip


def bare_engine(cfg, images: list[Path]) -> float:
    """Rows/s of VLLMEngine.generate over pre-tiled inputs, first batch excluded."""
    from PIL import Image

    from internvl_batch.engines.base import EngineRequest
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.media.tiling import tile_image
    from internvl_batch.model.prompts import build_prompt

    task = cfg.task[0]
    tiles = [tile_image(Image.open(p).convert("RGB"), max_num=cfg.preprocess.max_num) for p in images]
    reqs = [EngineRequest(id=str(i), prompt=build_prompt(task.question_for(None), [len(t)]), tiles=t,
                          sampling=task.sampling, media_key=f"bare-{i}") for i, t in enumerate(tiles)]  # fmt: skip
    engine = VLLMEngine(cfg.model, task.sampling)
    try:
        bs = cfg.runtime.engine_batch_size
        t_first = None
        for i in range(0, len(reqs), bs):
            results = engine.generate(reqs[i : i + bs])
            assert all(r.status == "ok" for r in results)
            if t_first is None:
                t_first, n_first = time.perf_counter(), len(results)
        return (len(reqs) - n_first) / (time.perf_counter() - t_first)
    finally:
        engine.shutdown()


def job(cfg) -> float:
    """Rows/s of the whole job, first result batch excluded (engine start-up excluded)."""
    import ray

    from internvl_batch import pipeline

    stamps: list[tuple[float, int]] = []
    original = pipeline.PartWriter.add

    def timed_add(self, rows):
        rows = list(rows)
        stamps.append((time.perf_counter(), len(rows)))
        return original(self, rows)

    pipeline.PartWriter.add = timed_add
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = pipeline.run_job(cfg)
    finally:
        ray.shutdown()
        pipeline.PartWriter.add = original
    assert summary.finished and summary.status_counts == {"ok": cfg.input.limit or summary.manifest_rows}
    (t0, n0), (t1, _) = stamps[0], stamps[-1]
    return (sum(n for _, n in stamps) - n0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-num", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default=".cache/tiny-internvl2_5")
    args = ap.parse_args()

    from internvl_batch.config import JobConfig
    from internvl_batch.devtools.sample_media import sample_image
    from internvl_batch.devtools.tiny_model import make_tiny_model

    if not os.path.exists(os.path.join(args.model, "config.json")):
        make_tiny_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    images = []
    for i in range(args.rows):
        p = work / f"img{i}.jpg"
        sample_image(seed=i, size=(640, 480)).save(p, quality=90)
        images.append(p)
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "image": str(p)}) + "\n" for i, p in enumerate(images)))
    cfg = JobConfig.model_validate(_config(args.model, manifest, work / "out", args))

    bare = bare_engine(cfg, images)
    ours = job(cfg)
    print(
        f"\n{args.rows} JPEG rows 640x480, max_num={args.max_num}, {args.max_tokens} output tokens, "
        f"engine batch {args.batch}, steady state (first batch excluded)"
    )
    print(f"bare engine, pre-tiled, plain loop : {bare:7.3f} rows/s")
    print(f"whole job (fetch+decode+tile+engine+parquet): {ours:7.3f} rows/s")
    print(f"ratio job / bare engine: {ours / bare:.2f}x")


if __name__ == "__main__":
    main()
