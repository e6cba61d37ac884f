"""GPU stage: one engine replica per actor; each row becomes one output row per task.

The actor holds several batches at once (`runtime.engine_batches_in_flight`) and every
request goes to the engine as soon as its batch arrives, so the engine's queue stays
full while a batch's slowest row finishes. Rows that already failed upstream pass
straight to the output with their status; the engine sees only rows whose media was
fetched and tiled, and their tasks share the tiles (`media_key` lets vLLM reuse the
vision encoder's output). Rows leave this stage complete, in the output schema.

A dead engine is not a row error: the actor reports it to the job monitor and exits, so
Ray replaces it with a fresh engine and re-runs its batches; the monitor fails the job
when that keeps happening.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from internvl_batch.config import ModelConfig, SamplingConfig, TaskConfig
from internvl_batch.engines import EngineFatalError, EngineRequest, EngineResult, build_engine
from internvl_batch.engines.base import run_requests
from internvl_batch.job.stages.base import AsyncStage, Batch
from internvl_batch.model.prompts import build_prompt
from internvl_batch.observe import metrics
from internvl_batch.records import CLIP_COLUMNS, output_schema, passthrough_field, tiles_from_bytes
from internvl_batch.status import Status

log = logging.getLogger("internvl_batch")


class InferenceStage(AsyncStage):
    name = "inference"

    def __init__(
        self,
        model: ModelConfig,
        tasks: list[TaskConfig],
        passthrough: tuple[str, ...],
        run_id: str,
        monitor: str | None = None,
    ):
        self.tasks = {t.name: t for t in tasks}
        self._samplings: dict[tuple[str, str], SamplingConfig] = {}
        self.model_name, self.run_id, self.passthrough = model.path, run_id, passthrough
        self.schema = output_schema(passthrough)
        self.attach_monitor(monitor)
        self.replica = f"{os.getpid()}"
        self.engine = None
        # First thing: a restart after a death nobody reported (SIGKILL, OOM) is counted now.
        self.actor_id = self.monitor.engine_starting(self.replica)
        try:
            self.engine = build_engine(model, tasks[0].sampling)
        except Exception as e:
            cause = f"engine failed to start: {type(e).__name__}: {e}"
            self.monitor.engine_failed(self.replica, cause, self.actor_id)
            raise
        self.monitor.engine_started(self.replica, self.actor_id)
        # Ray ends a finished pipeline's actor by exiting its process: the engine must be shut
        # down first, or it dies under a live AsyncLLM (EngineDeadError logged, shared memory
        # leaked). Registered after the engine, so it runs before vLLM's own exit hooks (LIFO).
        atexit.register(self.close)

    def _row_request(self, row: dict[str, Any], task: TaskConfig) -> tuple[str | None, SamplingConfig, str | None]:
        """(question, sampling, system message) of this row for this task: the prompt filled
        in from the row's columns, and the row's own sampling and system message (an OpenAI
        batch line's) over the task's. A row that can't be asked raises ValueError."""
        question = task.question_for(row["question"], json.loads(row["prompt_values"] or "{}"))
        own = json.loads(row["request"]) if row["request"] else {}
        system = own.get("system_message", task.system_message)
        if "sampling" not in own:
            return question, task.sampling, system
        key = (task.name, json.dumps(own["sampling"], sort_keys=True))
        if key not in self._samplings:  # one object per distinct config: the engine caches by it
            if len(self._samplings) >= 256:
                self._samplings.clear()
            try:
                self._samplings[key] = SamplingConfig.model_validate({**task.sampling.model_dump(), **own["sampling"]})
            except ValidationError as e:
                msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'sampling'}: {err['msg']}" for err in e.errors())
                raise ValueError(f"this row's sampling: {msgs}") from None
        return question, self._samplings[key], system

    def _request(self, row: dict[str, Any], task: TaskConfig) -> EngineRequest | EngineResult:
        rid = f"{row['id']}\x1f{task.name}"
        try:
            question, sampling, system = self._row_request(row, task)
        except ValueError as e:
            return EngineResult.failed(rid, Status.INVALID_ROW, f"task {task.name!r}: {e}")
        if question is None:
            msg = f"task {task.name!r} asks each row's question; this row has none"
            return EngineResult.failed(rid, Status.INVALID_ROW, msg)
        kwargs = {"system_message": system} if system is not None else {}
        try:
            # the checkpoint's own template, as the engine resolved it (model/check.py)
            prompt = build_prompt(
                question, list(row["tiles_per_image"]), media=row["media"], template=self.engine.template, **kwargs
            )
        except ValueError as e:
            return EngineResult.failed(rid, Status.INVALID_ROW, str(e))
        tiles = tiles_from_bytes(row["tiles"], row["tiles_per_image"])
        return EngineRequest(id=rid, prompt=prompt, tiles=tiles, sampling=sampling, media_key=_media_key(row))

    def _output_row(self, row: dict[str, Any], task: str, res: EngineResult, engine_ms: float | None) -> dict:
        return {
            "id": row["id"], "task": task, "status": res.status, "error": res.error,
            "response": res.text, "finish_reason": res.finish_reason,
            "num_prompt_tokens": res.num_prompt_tokens, "num_output_tokens": res.num_output_tokens,
            "num_tiles": sum(row["tiles_per_image"]), "media": row["media"], "model": self.model_name,
            "run_id": self.run_id, "preprocess_ms": row["preprocess_ms"], "engine_ms": engine_ms,
            "shard": row["shard"], "row": row["row"], **_answers(res), **_clip(row),
            **{c: row[passthrough_field(c)] for c in self.passthrough},
        }  # fmt: skip

    async def process(self, batch: Batch) -> Batch:
        pending: list[tuple[dict[str, Any], str, EngineRequest | EngineResult]] = []
        for row in batch.to_pylist():
            for name in row["tasks"]:
                if row["status"] != Status.OK:
                    res = EngineResult.failed(f"{row['id']}\x1f{name}", Status(row["status"]), row["error"])
                else:
                    res = self._request(row, self.tasks[name])
                pending.append((row, name, res))
        requests = [r for _, _, r in pending if isinstance(r, EngineRequest)]
        try:
            done = iter(await run_requests(self.engine, requests))
        except EngineFatalError as e:
            self._die(str(e))
        out, engine_ms = [], []
        for row, name, item in pending:
            if isinstance(item, EngineRequest):
                res, ms = next(done)
                engine_ms.append(ms)
                out.append(self._output_row(row, name, res, ms))
            else:
                out.append(self._output_row(row, name, item, None))
        occupancy = self.engine.occupancy
        stats = occupancy.stats() if occupancy is not None else None
        self.monitor.batch_done(self.replica, len(out), stats)
        metrics.stage_rows(self.name, len(out))
        metrics.observe_ms("engine", engine_ms)
        if stats is not None:
            metrics.engine_state(self.replica, stats, occupancy.running, occupancy.waiting)
        return pa.Table.from_pylist(out, schema=self.schema)

    def close(self) -> None:
        """Shut the engine down as the actor exits (see __init__ and job/pipeline.py); the
        job waits for the actor to be gone before it lets Ray go."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()

    def _die(self, cause: str) -> None:
        """Exit the actor's process: Ray restarts the actor with a fresh engine and re-runs
        its batches (the sink drops any row it already has). Staying alive around a dead
        engine is how jobs hang."""
        log.error("replica %s: %s; exiting so Ray replaces it", self.replica, cause)
        self.monitor.engine_failed(self.replica, cause, self.actor_id)
        logging.shutdown()
        os._exit(1)


def _answers(res: EngineResult) -> dict[str, Any]:
    """The output's columns of every answer (sampling.n of them); null for a failed row."""
    if res.status != Status.OK:
        return {"responses": None, "finish_reasons": None, "output_token_counts": None}
    if res.texts:
        return {"responses": list(res.texts), "finish_reasons": list(res.finish_reasons),
                "output_token_counts": list(res.output_token_counts)}  # fmt: skip
    return {"responses": [res.text], "finish_reasons": [res.finish_reason],
            "output_token_counts": [res.num_output_tokens]}  # fmt: skip


def _clip(row: dict[str, Any]) -> dict[str, Any]:
    """A clip's columns (null for rows that are not clips): output rows are keyed (row, clip, task)."""
    return {c: row[c] for c in CLIP_COLUMNS}


def _media_key(row: dict[str, Any]) -> str:
    """What the engine may cache the vision encoder's output under: each clip has its own frames."""
    return row["id"] if row["clip"] is None else f"{row['id']}#clip{row['clip']}"
