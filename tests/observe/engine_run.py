"""`python -m tests.observe.engine_run CONFIG RESULT.json`: the job with the real engine in a
Ray cluster of its own (so its metrics are its own), then the Ray metrics endpoint's
`ray_internvl_*` samples once the engine's have arrived, as JSON."""

from __future__ import annotations

import json
import socket
import sys
import time

from tests.support.prom import scrape


def main(cfg_path: str, result_path: str) -> int:
    import pyarrow.parquet as pq
    import ray

    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port)
    cfg = load_config(cfg_path, [])
    summary = run_job(cfg)
    out = pq.read_table(cfg.output.path, columns=["engine_ms"])
    engine_rows = out.num_rows - out["engine_ms"].null_count
    deadline = time.monotonic() + 120  # Ray's agents export every few seconds
    while time.monotonic() < deadline:
        got = scrape(port)
        # The driver's figures (rows) and the engine actors' (latencies) arrive on their own schedules.
        rows = sum(got.get("ray_internvl_rows_total", {}).values())
        engine = got.get("ray_internvl_latency_ms_count", {}).get((("step", "engine"),), 0)
        if rows == summary.written_this_run and engine == engine_rows:
            break
        time.sleep(2)
    with open(result_path, "w") as f:
        # JSON keys: our labels as a JSON object
        metrics = {name: {json.dumps(dict(k)): v for k, v in samples.items()} for name, samples in got.items()}
        json.dump({"finished": summary.finished, "metrics": metrics}, f)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
