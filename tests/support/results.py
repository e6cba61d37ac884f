"""Output rows and a whole run in one process, without Ray: plan -> ReadStage over every
split -> a stand-in inference that answers each (row, task) -> ShardSink. The real reader,
sink and planner; only the media and model work is left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from internvl_batch.config import JobConfig
from internvl_batch.job.output import CHECKSUM_KEY, OutputDir, part_name
from internvl_batch.job.plan import Plan, make_plan
from internvl_batch.job.sink import ShardSink
from internvl_batch.job.stages.read import ReadStage
from internvl_batch.records import CLIP_COLUMNS, output_schema, passthrough_field
from internvl_batch.status import Status

RUN1 = "20240101T000000Z-aaaaaaaa"
RUN2 = "20240102T000000Z-bbbbbbbb"
RUN3 = "20240103T000000Z-cccccccc"

StatusOf = Callable[[dict[str, Any], str], str]  # (item row, task) -> status


def all_ok(item: dict[str, Any], task: str) -> str:
    return Status.OK


def result(
    shard: str, row: int, task: str, run_id: str, status: str = Status.OK, passthrough: tuple[str, ...] = (), **kw: Any
) -> dict[str, Any]:
    """One output row as the inference stage makes it; a failed one carries nulls."""
    ok = status == Status.OK
    return {
        "id": f"{shard}/{row}", "task": task, "status": str(status), "error": None if ok else f"{status} here",
        "response": f"answer {row}/{task}" if ok else None, "finish_reason": "stop" if ok else None,
        "num_prompt_tokens": 10 + row if ok else None, "num_output_tokens": 1 + row % 5 if ok else None,
        "num_tiles": 1 if ok else None, "media": "image", "model": "m", "run_id": run_id,
        "preprocess_ms": 1.5 if ok else None, "engine_ms": 2.5 if ok else None, "shard": shard, "row": row,
        "responses": [f"answer {row}/{task}"] if ok else None, "finish_reasons": ["stop"] if ok else None,
        "output_token_counts": [1 + row % 5] if ok else None,
        **dict.fromkeys(CLIP_COLUMNS), **{c: f"{c}-{row}" for c in passthrough}, **kw,
    }  # fmt: skip


def table(rows: list[dict[str, Any]], passthrough: tuple[str, ...] = ()) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=output_schema(passthrough))


def write_part(out: OutputDir, shard: str, run_id: str, seq: int, rows: list[dict[str, Any]], checksum: str) -> str:
    """A part file as the sink commits it."""
    return out.write_atomic(part_name(shard, run_id, seq), table(rows), metadata={CHECKSUM_KEY: checksum.encode()})


def read_parts(out: OutputDir, shard: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for path in out.part_files(shard):
        with out.fs.open(path, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def answers(items: pa.Table, run_id: str, status_of: StatusOf, passthrough: tuple[str, ...] = ()) -> pa.Table:
    """What the inference stage makes of ITEM rows: one output row per (row, task left)."""
    out = []
    for item in items.to_pylist():
        for task in item["tasks"]:
            status = item["status"] if item["status"] != Status.OK else status_of(item, task)
            ok = status == Status.OK
            out.append({
                "id": item["id"], "task": task, "status": str(status),
                "error": item["error"] if item["status"] != Status.OK else (None if ok else "told to fail"),
                "response": f"echo {item['id']}/{task}" if ok else None, "media": item["media"],
                "model": "echo", "run_id": run_id, "shard": item["shard"], "row": item["row"],
                **{c: item[passthrough_field(c)] for c in passthrough},
            })  # fmt: skip
    return table(out, passthrough)


@dataclass
class LocalRun:
    plan: Plan
    sink: ShardSink
    items: list[dict[str, Any]]  # every ITEM row the readers emitted


class Crash(Exception):
    """The stand-in for a killed driver."""


def run_local(
    cfg: JobConfig,
    out: OutputDir,
    run_id: str = RUN1,
    status_of: StatusOf = all_ok,
    *,
    crash_after: int | None = None,
    duplicates: str | None = None,
    chunk_rows: int = 3,
) -> LocalRun:
    """Plan, read every split, answer, sink. `crash_after`: stop (without flushing) once that
    many result rows reached the sink, as a killed driver would; rows arrive one manifest row
    (all its tasks) at a time, so the stop falls between manifest rows."""
    tasks = [t.name for t in cfg.task]
    passthrough = tuple(cfg.input.passthrough)
    plan = make_plan(cfg, out)
    sink = ShardSink(
        out, output_schema(passthrough), run_id, tasks, plan.todo, cfg.output.rows_per_file,
        cfg.output.flush_interval_s,
    )  # fmt: skip
    reader = ReadStage(
        cfg.input, tasks, (out.url, cfg.output.storage_options), cfg.runtime.retry_failed, duplicates, chunk_rows
    )
    run = LocalRun(plan, sink, [])
    try:
        for split in plan.splits:
            for items in reader.process(pa.table({"split": [json.dumps(split)]})):
                run.items += items.to_pylist()
                for i in range(items.num_rows):  # one row at a time: a crash can stop anywhere
                    if crash_after is not None and sink.written >= crash_after:
                        raise Crash
                    sink.add(answers(items.slice(i, 1), run_id, status_of, passthrough))
    except Crash:
        return run
    sink.flush_all()
    return run
