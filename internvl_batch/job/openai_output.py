"""`output.format: openai_batch`: the OpenAI Batch API's response file, next to the parquet.

When a run finishes, each shard's rows are written as Batch API output lines, one per
input row, to `_openai_batch/<shard>.jsonl` (names starting with `_`, so parquet readers
of `output.path` skip them; the Batch API's output order is arbitrary too, so the files
concatenate in any order: `cat _openai_batch/*.jsonl`):

    {"id": "batch_req_...", "custom_id": <id>, "error": null, "response": {"status_code": 200,
     "request_id": ..., "body": {"object": "chat.completion", "model": ..., "choices":
     [{"index": i, "message": {"role": "assistant", "content": ...}, "finish_reason": ...}],
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}}}

A row that failed has `"response": null, "error": {"code": <status>, "message": <error>}`.
A shard's file is rewritten when this run wrote rows of it, or when it is missing; one
shard's rows at a time are in memory.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from internvl_batch.job.output import OutputDir
from internvl_batch.status import Status
from internvl_batch.storage import retry

FOLDER = "_openai_batch"
_COLUMNS = ["id", "status", "error", "response", "finish_reason", "num_prompt_tokens", "num_output_tokens",
            "responses", "finish_reasons", "output_token_counts", "row", "run_id"]  # fmt: skip


def _created(run_id: str) -> int:
    try:
        return calendar.timegm(time.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return 0


def response_line(r: dict[str, Any], model: str) -> dict[str, Any]:
    """One output row as a Batch API output line."""
    digest = hashlib.sha1(f"{r['id']}\x1f{r['run_id']}".encode()).hexdigest()
    line: dict[str, Any] = {"id": f"batch_req_{digest[:24]}", "custom_id": r["id"], "response": None, "error": None}
    if r["status"] != Status.OK:
        line["error"] = {"code": r["status"], "message": r["error"]}
        return line
    texts = r["responses"] or [r["response"]]
    reasons = r["finish_reasons"] or [r["finish_reason"]]
    counts = r["output_token_counts"] or [r["num_output_tokens"] or 0]
    completion = sum(c or 0 for c in counts)
    prompt = r["num_prompt_tokens"] or 0
    line["response"] = {
        "status_code": 200, "request_id": f"{r['run_id']}-{r['row']}",
        "body": {
            "id": f"chatcmpl-{digest[24:40]}", "object": "chat.completion", "created": _created(r["run_id"]),
            "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f,
                         "logprobs": None} for i, (t, f) in enumerate(zip(texts, reasons))],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        },
    }  # fmt: skip
    return line


def _shard_lines(out: OutputDir, shard: str, model: str) -> bytes:
    names = [p.rsplit("/", 1)[-1] for p in out.part_files(shard)]
    tables = [out.read_table(n, columns=_COLUMNS) for n in names]
    if not tables:
        return b""
    rows = pa.concat_tables(tables).sort_by("row").to_pylist()
    return "".join(json.dumps(response_line(r, model), ensure_ascii=False) + "\n" for r in rows).encode()


def write_responses(out: OutputDir, shard_ids: list[str], written: set[str], model: str) -> int:
    """(Re)write the response file of every shard this run wrote to or that has none; how many."""
    pattern = out.path(f"{FOLDER}/*.jsonl")
    have = {
        p.rsplit("/", 1)[-1][: -len(".jsonl")] for p in retry.call("output_list", pattern, lambda: out.fs.glob(pattern))
    }
    todo = [s for s in shard_ids if s in written or s not in have]

    def one(shard: str) -> None:
        out.write_atomic(f"{FOLDER}/{shard}.jsonl", _shard_lines(out, shard, model))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, todo))
    return len(todo)
