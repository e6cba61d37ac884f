"""GPU stage: one engine replica per actor; each row becomes one output row per task.

Rows that already failed upstream pass straight to the output with their status; the
engine sees only rows whose media was fetched and tiled. The tiles of a row are shared
by all of its tasks (and `media_key` lets vLLM reuse the vision encoder's output).
"""

from __future__ import annotations

import json
import time
from typing import Any

from internvl_batch.config import ModelConfig, TaskConfig
from internvl_batch.engines.base import EngineRequest, EngineResult, build_engine
from internvl_batch.prompts import build_prompt
import pyarrow as pa

from internvl_batch.stages.base import Batch, Stage
from internvl_batch.stages.records import RESULT_SCHEMA, tiles_from_bytes

class InferenceStage(Stage):
    name = "inference"

    def __init__(self, model: ModelConfig, tasks: list[TaskConfig]):
        self.tasks = {t.name: t for t in tasks}
        self.engine = build_engine(model, tasks[0].sampling)

    def _request(self, row: dict[str, Any], task: TaskConfig) -> EngineRequest | EngineResult:
        rid = f"{row['id']}\x1f{task.name}"
        question = task.question_for(row["question"])
        if question is None:
            return EngineResult.failed(rid, "invalid_row", f"task {task.name!r} asks each row's question; this row has none")
        kwargs = {"system_message": task.system_message} if task.system_message is not None else {}
        try:
            prompt = build_prompt(question, list(row["tiles_per_image"]), media=row["media"], **kwargs)
        except ValueError as e:
            return EngineResult.failed(rid, "invalid_row", str(e))
        tiles = tiles_from_bytes(row["tiles"], row["tiles_per_image"])
        return EngineRequest(id=rid, prompt=prompt, tiles=tiles, sampling=task.sampling, media_key=row["id"])

    def process(self, batch: Batch) -> Batch:
        pending: list[tuple[dict[str, Any], str, EngineRequest | EngineResult]] = []
        for row in batch.to_pylist():
            for name in row["tasks"]:
                if row["status"] != "ok":
                    res = EngineResult.failed(f"{row['id']}\x1f{name}", row["status"], row["error"])
                else:
                    res = self._request(row, self.tasks[name])
                pending.append((row, name, res))
        requests = [r for _, _, r in pending if isinstance(r, EngineRequest)]
        start = time.perf_counter()
        results = iter(self.engine.generate(requests)) if requests else iter(())
        engine_ms = (time.perf_counter() - start) * 1000 / max(len(requests), 1)
        out = []
        for row, name, item in pending:
            res = next(results) if isinstance(item, EngineRequest) else item
            out.append({
                "id": row["id"], "task": name, "status": res.status, "error": res.error,
                "response": res.text, "finish_reason": res.finish_reason,
                "num_prompt_tokens": res.num_prompt_tokens, "num_output_tokens": res.num_output_tokens,
                "num_tiles": sum(row["tiles_per_image"]), "media": row["media"],
                "preprocess_ms": row["preprocess_ms"],
                "engine_ms": engine_ms if isinstance(item, EngineRequest) else None,
                "passthrough_json": row["passthrough_json"],
            })  # fmt: skip
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def result_rows(batch: Batch, model_name: str, passthrough: tuple[str, ...]) -> list[dict[str, Any]]:
    """Engine-stage output -> rows of the output schema (driver side)."""
    rows = []
    for r in batch.to_pylist():
        extra = json.loads(r.pop("passthrough_json") or "{}")
        rows.append({**r, "model": model_name, **{c: extra.get(c) for c in passthrough}})
    return rows
