"""Stand-in stages for data-plane tests: they run inside the real Ray Data pipeline but do
no media or model work (MEDIA_STAGES keeps the real CPU stage), so a test can push
hundreds of rows through real readers, the real sink and real part files in seconds. Not a mock of the engine's behaviour: a test
that needs that uses the real vLLM engine.

A row whose question is `fail-unless:<path>` fails in the engine stage (engine_error)
until that file exists.
"""

from __future__ import annotations

import asyncio
import os

import pyarrow as pa

from internvl_batch.job.stages.base import AsyncStage, Stage
from internvl_batch.records import CLIP_COLUMNS, output_schema, passthrough_field, prepared_schema
from internvl_batch.status import Status


class NoMediaPrepare(Stage):
    """Every ok row gets one (absent) tile; nothing is fetched."""

    name = "prepare"

    def __init__(self, cfg, passthrough=(), monitor=None):
        self.attach_monitor(monitor)
        self.schema = prepared_schema(passthrough)

    def process(self, batch):
        rows = [{**r, "tiles": None, "tiles_per_image": [1], "preprocess_ms": 0.0} for r in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=self.schema)


class EchoInference(AsyncStage):
    """Answers `echo <id>/<task>` after `delay_s` per batch (env INTERNVL_TEST_DELAY_S)."""

    name = "inference"

    def __init__(self, model, tasks, passthrough, run_id, monitor=None):
        self.attach_monitor(monitor)
        self.passthrough, self.run_id = passthrough, run_id
        self.schema = output_schema(passthrough)
        self.delay_s = float(os.environ.get("INTERNVL_TEST_DELAY_S", "0"))

    async def process(self, batch):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = []
        for r in batch.to_pylist():
            for task in r["tasks"]:
                status, error, response = Status(r["status"]), r["error"], None
                q = r["question"] or ""
                if status == Status.OK and q.startswith("fail-unless:") and not os.path.exists(q[12:]):
                    status, error = Status.ENGINE_ERROR, "told to fail"
                elif status == Status.OK:
                    response = f"echo {r['id']}/{task}"
                out.append({
                    "id": r["id"], "task": task, "status": status, "error": error, "response": response,
                    "finish_reason": "stop" if response else None, "num_prompt_tokens": 1,
                    "num_output_tokens": 1 if response else None, "num_tiles": 1, "media": r["media"],
                    "model": "echo", "run_id": self.run_id, "preprocess_ms": 0.0, "engine_ms": 0.0,
                    "shard": r["shard"], "row": r["row"], **{c: r.get(c) for c in CLIP_COLUMNS},
                    **{c: r[passthrough_field(c)] for c in self.passthrough},
                })  # fmt: skip
        return pa.Table.from_pylist(out, schema=self.schema)


STAGES = {"prepare": NoMediaPrepare, "inference": EchoInference}
# The real CPU stage (media, videos, clips) before the stand-in engine.
MEDIA_STAGES = {"inference": EchoInference}


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.support.stages CONFIG [--set k=v ...]`: the job with these stages."""
    import sys

    import cloudpickle

    import tests.support.stages as me
    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    cloudpickle.register_pickle_by_value(me)  # Ray workers need not find `tests` on their path
    args = argv if argv is not None else sys.argv[1:]
    sets = [a.split("=", 1)[1] if a.startswith("--set=") else a for a in args[1:] if a != "--set"]
    stages = MEDIA_STAGES if os.environ.get("INTERNVL_TEST_REAL_PREPARE") else STAGES
    summary = run_job(load_config(args[0], sets), stages=stages)
    return 0 if summary.finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
