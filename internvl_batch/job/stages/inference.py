"""GPU stage: one engine replica per actor; each row becomes one output row per task.

Rows that already failed upstream pass straight to the output with their status; the
engine sees only rows whose media was fetched and tiled. The tiles of a row are shared
by all of its tasks (and `media_key` lets vLLM reuse the vision encoder's output).
The rows leave this stage complete, in the output schema: the sink only writes them.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from internvl_batch.config import ModelConfig, TaskConfig
from internvl_batch.engines import EngineRequest, EngineResult, build_engine
from internvl_batch.job.records import output_schema, passthrough_field, tiles_from_bytes
from internvl_batch.job.stages.base import Batch, Stage
from internvl_batch.model.prompts import build_prompt
from internvl_batch.status import Status


class InferenceStage(Stage):
    name = "inference"

    def __init__(self, model: ModelConfig, tasks: list[TaskConfig], passthrough: tuple[str, ...], run_id: str):
        self.tasks = {t.name: t for t in tasks}
        self.model_name, self.run_id, self.passthrough = model.path, run_id, passthrough
        self.schema = output_schema(passthrough)
        self.engine = build_engine(model, tasks[0].sampling)

    def _request(self, row: dict[str, Any], task: TaskConfig) -> EngineRequest | EngineResult:
        rid = f"{row['id']}\x1f{task.name}"
        question = task.question_for(row["question"])
        if question is None:
            msg = f"task {task.name!r} asks each row's question; this row has none"
            return EngineResult.failed(rid, Status.INVALID_ROW, msg)
        kwargs = {"system_message": task.system_message} if task.system_message is not None else {}
        try:
            prompt = build_prompt(question, list(row["tiles_per_image"]), media=row["media"], **kwargs)
        except ValueError as e:
            return EngineResult.failed(rid, Status.INVALID_ROW, str(e))
        tiles = tiles_from_bytes(row["tiles"], row["tiles_per_image"])
        return EngineRequest(id=rid, prompt=prompt, tiles=tiles, sampling=task.sampling, media_key=row["id"])

    def _output_row(self, row: dict[str, Any], task: str, res: EngineResult, engine_ms: float | None) -> dict:
        return {
            "id": row["id"], "task": task, "status": res.status, "error": res.error,
            "response": res.text, "finish_reason": res.finish_reason,
            "num_prompt_tokens": res.num_prompt_tokens, "num_output_tokens": res.num_output_tokens,
            "num_tiles": sum(row["tiles_per_image"]), "media": row["media"], "model": self.model_name,
            "run_id": self.run_id, "preprocess_ms": row["preprocess_ms"], "engine_ms": engine_ms,
            **{c: row[passthrough_field(c)] for c in self.passthrough},
        }  # fmt: skip

    def process(self, batch: Batch) -> Batch:
        pending: list[tuple[dict[str, Any], str, EngineRequest | EngineResult]] = []
        for row in batch.to_pylist():
            for name in row["tasks"]:
                if row["status"] != Status.OK:
                    res = EngineResult.failed(f"{row['id']}\x1f{name}", Status(row["status"]), row["error"])
                else:
                    res = self._request(row, self.tasks[name])
                pending.append((row, name, res))
        requests = [r for _, _, r in pending if isinstance(r, EngineRequest)]
        start = time.perf_counter()
        results = iter(self.engine.generate(requests)) if requests else iter(())
        engine_ms = (time.perf_counter() - start) * 1000 / max(len(requests), 1)
        out = []
        for row, name, item in pending:
            if isinstance(item, EngineRequest):
                out.append(self._output_row(row, name, next(results), engine_ms))
            else:
                out.append(self._output_row(row, name, item, None))
        return pa.Table.from_pylist(out, schema=self.schema)
