"""The real engine (vLLM, CPU build, the tiny checkpoint) against what `plan` predicted for
the same rows, and the engine stage's own metrics on the Ray metrics endpoint. The job runs
in a subprocess with a Ray cluster of its own, so the metrics it reads are that run's."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from internvl_batch.devtools.sample_media import write_sample_video
from internvl_batch.preflight.rows import check_sample
from tests.observe import jobs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_real_engine_output_matches_the_plan_and_reports_engine_metrics(tmp_path, tiny_model_dir):
    media = jobs.write_media(tmp_path / "media")
    video = write_sample_video(tmp_path / "media" / "clip.mp4")
    extra = ({"id": "video", "video": str(video), "question": "What moves?"},)
    jobs.write_manifest(tmp_path / "m.jsonl", media, extra=extra)
    # max_model_len 1024: rows of 4 tiles and more overflow (context_overflow, decided by the engine)
    cfg = jobs.job_config(tmp_path / "m.jsonl", tmp_path / "out", str(tiny_model_dir), model={"max_model_len": 1024},
                          preprocess={"video": {"num_segments": 2}}, runtime={"engine_cpus": 1})  # fmt: skip
    predicted = {p.id: p for p in check_sample(cfg, 100).plans}  # what validate and plan predict

    cfg_path, result = tmp_path / "job.yaml", tmp_path / "result.json"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.run([sys.executable, "-m", "tests.observe.engine_run", str(cfg_path), str(result)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(result.read_text())
    assert run["finished"]

    out = pq.read_table(tmp_path / "out").to_pylist()
    statuses = {r["status"] for r in out}
    assert {"ok", "context_overflow", "fetch_error", "decode_error", "invalid_row"} <= statuses
    for r in out:
        plan = predicted[r["id"]]
        assert plan.status[r["task"]] == r["status"], (r["id"], r["task"], r["error"])
        if r["num_tiles"]:
            assert plan.tiles == r["num_tiles"], r["id"]
        if r["num_prompt_tokens"] is not None:  # what vLLM (or its overflow check) counted
            assert plan.prompt_tokens[r["task"]] == r["num_prompt_tokens"], (r["id"], r["task"])

    m = run["metrics"]
    engine_rows = sum(r["engine_ms"] is not None for r in out)
    assert m["ray_internvl_latency_ms_count"][json.dumps({"step": "engine"})] == engine_rows
    assert m["ray_internvl_stage_rows_total"][json.dumps({"stage": "inference"})] == len(out)
    (replica,) = [json.loads(k)["replica"] for k in m["ray_internvl_engine_occupancy"]]
    for gauge in ("engine_occupancy", "engine_queue_depth", "engine_running", "engine_in_flight"):
        (value,) = m[f"ray_internvl_{gauge}"].values()
        assert value >= 0 and list(m[f"ray_internvl_{gauge}"]) == [json.dumps({"replica": replica})]
    assert 0 <= m["ray_internvl_engine_occupancy"][json.dumps({"replica": replica})] <= 1
    assert m["ray_internvl_output_tokens_total"][json.dumps({"task": "caption"})] == sum(
        r["num_output_tokens"] or 0 for r in out if r["task"] == "caption"
    )
