"""`internvl-batch plan CONFIG`: what a run will cost, before it starts.

It counts the manifest's rows (`sample.py`), samples rows and predicts each one as the job
would treat it (`rows.py`: the check `validate` prints row by row: tiles from the media's
headers, prompt tokens per task, the status), and scales the sample to the manifest's row
count. With a
throughput (flags, or a previous run's `_SUCCESS`) it estimates replica- and GPU-hours for
the configured replicas, assuming throughput scales with replicas and the CPU stages keep up.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from internvl_batch.config import JobConfig
from internvl_batch.job.readers import list_files
from internvl_batch.model.prompts import NUM_IMAGE_TOKENS_PER_TILE
from internvl_batch.preflight.rows import check_sample
from internvl_batch.preflight.sample import count_rows
from internvl_batch.status import Status

SAMPLE_ROWS = 200


# -- rates --------------------------------------------------------------------------------------


@dataclass
class Rates:
    """Throughput of one replica: row x task pairs/s, or prompt + output tokens/s."""

    source: str
    pairs_per_s: float | None = None
    tokens_per_s: float | None = None
    output_tokens_per_row: float | None = None  # measured: replaces max_tokens as the output estimate

    @classmethod
    def from_success(cls, path: str, storage_options: dict[str, Any] | None = None) -> Rates:
        import fsspec

        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        s = json.loads(fs.cat_file(f"{root.rstrip('/')}/_SUCCESS"))
        replicas = s.get("resources", {}).get("replicas") or s.get("engine", {}).get("replicas") or 1
        rows, out_tok, prompt_tok = (
            s.get("pairs_per_s", 0),
            s.get("output_tokens_per_s", 0),
            s.get("prompt_tokens_per_s"),
        )
        if not rows:
            raise ValueError(f"{path}/_SUCCESS measured no throughput (its run wrote nothing); pass a rate")
        return cls(
            source=f"{path}/_SUCCESS (run {s.get('run_id')}, {replicas} replica(s), wall clock incl. start-up)",
            pairs_per_s=rows / replicas,
            tokens_per_s=(prompt_tok + out_tok) / replicas if prompt_tok else None,
            output_tokens_per_row=out_tok / rows,
        )


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Preflight:
    config: dict[str, Any]
    rows: int
    rows_how: str
    sample_rows: int
    sample_files: int
    status: dict[str, float]  # predicted share of row x task pairs per status
    tiles_per_row: float
    prompt_tokens: dict[str, dict[str, float]]  # per task: mean, p95, max over engine rows
    tokens_source: str
    totals: dict[str, float]
    output_tokens_source: str
    overflow: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    estimate: dict[str, Any] | None
    estimate_note: str
    sampled: list[dict[str, Any]] = field(default_factory=list)  # each sampled row: id, status per task, why
    refused: str | None = None  # the sampled rows predicted refused (`--strict` exits 1 on it), else None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def text(self) -> str:
        c, t = self.config, self.totals
        lines = [
            f"pre-flight plan: model {c['model']}, {c['replicas']} replica(s) x {c['gpus_per_replica']} GPU(s), "
            f"tasks {', '.join(c['tasks'])}, preprocess.max_num={c['max_num']}, model.max_model_len={c['max_model_len']}",
            f"manifest: {self.rows:,} rows ({self.rows_how}) x {len(c['tasks'])} task(s) = {t['pairs']:,.0f} row x task pairs",
            *(
                [
                    f"clips: videos cut into clips make {t['output_rows']:,.0f} output rows of those pairs "
                    "(each row's clips column, or video.clip_s over the duration its container declares)"
                ]
                if t["output_rows"] > t["pairs"]
                else []
            ),  # fmt: skip
            f"sample: {self.sample_rows} rows, the first of {self.sample_files} file(s) spread over the manifest; "
            "image headers only (nothing downloaded whole or decoded)",
            "predicted status (row x task): " + ", ".join(f"{k} {v:.1%}" for k, v in self.status.items()),
            f"per row: {self.tiles_per_row:.2f} tiles, {self.tiles_per_row * NUM_IMAGE_TOKENS_PER_TILE:,.0f} vision "
            "tokens (mean over sampled rows)",
            f"prompt tokens ({self.tokens_source}):",
            *(
                f"  {task}: mean {p['mean']:,.0f}, p95 {p['p95']:,.0f}, max {p['max']:,.0f}"
                for task, p in self.prompt_tokens.items()
            ),  # fmt: skip
            f"totals: {t['tiles']:,.0f} tiles, {t['vision_tokens']:,.0f} vision tokens, {t['prompt_tokens']:,.0f} "
            f"prompt tokens, {t['output_tokens']:,.0f} output tokens ({self.output_tokens_source})",
        ]
        if self.overflow:
            shown = ", ".join(f"{o['id']} ({o['task']}: {o['prompt_tokens']})" for o in self.overflow[:5])
            lines.append(f"OVERFLOW: {len(self.overflow)} sampled row x task pair(s) exceed the engine's "
                         f"max_model_len={c['engine_max_model_len']} (status context_overflow): {shown}")  # fmt: skip
        for e in self.errors[:5]:
            lines.append(f"  predicted {e['status']}: {e['id']}: {e['error']}")
        if self.estimate:
            e = self.estimate
            lines.append(f"estimate: {e['replica_hours']:,.2f} replica-hours = {e['wall_hours']:,.2f} h on "
                         f"{c['replicas']} replica(s), {e['gpu_hours']:,.2f} GPU-hours ({self.estimate_note})")  # fmt: skip
        else:
            lines.append(f"estimate: none ({self.estimate_note})")
        lines.append(f"rope: {c['rope']}")
        lines.append(
            "fidelity: before a first night on this checkpoint, `internvl-batch verify CONFIG` runs a few rows "
            "through this job's engine and through the checkpoint's own reference (model.chat) and compares them "
            "token by token"
        )
        return "\n".join(lines)


def _output_tokens(cfg: JobConfig, rates: Rates | None) -> tuple[dict[str, float], str]:
    if rates is not None and rates.output_tokens_per_row is not None:
        return {
            t.name: rates.output_tokens_per_row for t in cfg.task
        }, f"measured {rates.output_tokens_per_row:.1f}/row"
    return {t.name: float(t.sampling.max_tokens) for t in cfg.task}, "upper bound: each task's sampling.max_tokens"


def make_preflight(cfg: JobConfig, n: int = SAMPLE_ROWS, rates: Rates | None = None) -> Preflight:
    fs, files = list_files(cfg.input)
    rows, rows_how, floors = count_rows(cfg, fs, files)
    check = check_sample(cfg, n, fs, files, floors)  # validate's check, row by row
    plans, n_files, tokens = check.plans, check.files_read, check.tokens
    tasks = [t.name for t in cfg.task]
    pairs = Counter(s for p in plans for s in p.status.values())
    m = max(len(plans), 1)
    per_task = {t: np.array([p.prompt_tokens[t] for p in plans if t in p.prompt_tokens], float) for t in tasks}
    prompt_stats = {t: {"mean": float(v.mean()) if len(v) else 0.0, "p95": float(np.percentile(v, 95)) if len(v) else 0.0,
                        "max": float(v.max()) if len(v) else 0.0} for t, v in per_task.items()}  # fmt: skip
    out_per_row, out_source = _output_tokens(cfg, rates)
    # What the engine runs: the pairs predicted ok (an overflowing prompt is refused before it runs).
    engine_pairs = [(p, t) for p in plans for t, s in p.status.items() if s == Status.OK]
    tiles_per_row = sum(p.tiles for p in plans) / m
    totals = {
        "pairs": float(rows * len(tasks)),
        "output_rows": rows * len(tasks) * sum(p.clips for p in plans) / m,  # a clip is a row of its own
        "tiles": rows * tiles_per_row,
        "vision_tokens": rows * tiles_per_row * NUM_IMAGE_TOKENS_PER_TILE,
        # Rows that fail before the engine cost no tokens; overflowing ones are refused there.
        "prompt_tokens": rows * sum(p.prompt_tokens[t] * p.clips for p, t in engine_pairs) / m,
        "output_tokens": rows * sum(out_per_row[t] * p.clips for p, t in engine_pairs) / m,
    }
    replicas, gpus = cfg.runtime.replicas, (cfg.model.tensor_parallel_size if cfg.runtime.use_gpu else 0)
    estimate, note = None, "give a rate: --pairs-per-s, --tokens-per-s or --from-run OUTPUT_PATH"
    if rates is not None:
        if rates.tokens_per_s:
            replica_s = (totals["prompt_tokens"] + totals["output_tokens"]) / rates.tokens_per_s
            note = f"{rates.tokens_per_s:,.1f} prompt+output tokens/s per replica from {rates.source}"
        elif rates.pairs_per_s:
            replica_s = totals["output_rows"] / rates.pairs_per_s  # the same as pairs but for clips
            unit = "row x task pairs" if totals["output_rows"] == totals["pairs"] else "output rows"
            note = f"{rates.pairs_per_s:,.3f} {unit}/s per replica from {rates.source}"
        else:
            replica_s = None
        if replica_s is not None:
            estimate = {"replica_hours": replica_s / 3600, "wall_hours": replica_s / replicas / 3600,
                        "gpu_hours": replica_s * gpus / 3600}  # fmt: skip
    overflow = [{"id": p.id, "task": t, "prompt_tokens": p.prompt_tokens[t]}
                for p in plans for t, s in p.status.items() if s == Status.CONTEXT_OVERFLOW]  # fmt: skip
    errors = [{"id": p.id, "status": next(iter(p.status.values())), "error": p.error} for p in plans if p.error]
    config = {"model": cfg.model.path, "replicas": replicas, "gpus_per_replica": gpus, "tasks": tasks,
              "max_num": cfg.preprocess.max_num, "max_model_len": cfg.model.max_model_len,
              "engine_max_model_len": tokens.max_model_len, "rope": tokens.rope}  # fmt: skip
    return Preflight(
        config, rows, rows_how, len(plans), n_files, {k: v / max(sum(pairs.values()), 1) for k, v in pairs.most_common()},
        tiles_per_row, prompt_stats, tokens.source, totals, out_source, overflow, errors, estimate, note,
        [{"id": p.id, "status": p.status, "error": p.error, "reasons": p.reasons} for p in plans], check.strict_error(),
    )  # fmt: skip
