"""`internvl-batch plan CONFIG`: what a run will cost, before it starts.

It samples manifest rows (the first rows of up to `SAMPLE_FILES` files spread over the
manifest), reads only their images' headers (`headers.py`), predicts each row's tiles
exactly as tiling will cut them, its prompt tokens per task (the checkpoint's template and
tokenizer when the model's files are reachable, else an estimate that says so) and the
status the job would give it, and scales the sample to the manifest's row count. With a
throughput (flags, or a previous run's `_SUCCESS`) it estimates replica- and GPU-hours for
the configured replicas, assuming throughput scales with replicas and the CPU stages keep up.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from internvl_batch.config import JobConfig
from internvl_batch.job.clips import count_fixed_clips
from internvl_batch.job.readers import (
    ManifestRow,
    check_prompt_columns,
    cut_shards,
    list_files,
    split_of,
    split_rows,
)
from internvl_batch.job.readers.webdataset import samples as tar_samples
from internvl_batch.job.shards import ManifestFile, Shard, is_record
from internvl_batch.media.fetch import Fetcher
from internvl_batch.media.headers import (
    MAX_HEADER_BYTES,
    Header,
    _size,
    declared_duration,
    predict_tiles,
    read_header,
    read_video_header,
)
from internvl_batch.media.tiling import split_tile_budget
from internvl_batch.model.prompt_template import MissingValue
from internvl_batch.model.prompts import NUM_IMAGE_TOKENS_PER_TILE, build_prompt
from internvl_batch.status import Status

SAMPLE_ROWS = 200
SAMPLE_FILES = 8
SCAN_LIMIT_BYTES = 256 * 1024 * 1024  # text manifests up to this size are counted exactly
_ESTIMATE_BYTES = 4 * 1024 * 1024  # else rows per byte from this much of each file
_CHARS_PER_TOKEN = 4.0  # the estimate's rule of thumb for text without a tokenizer


# -- how many rows ------------------------------------------------------------------------------


def _cached_rows(cfg: JobConfig, file: ManifestFile) -> int | None:
    """The file's row count from the output's cached plan (a run or a dry run planned it)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(cfg.output.path, **cfg.output.storage_options)
        cached = json.loads(fs.cat_file(f"{root.rstrip('/')}/_state/files/{file.key}.json"))
    except Exception:  # absent, or unreadable: count another way
        return None
    if cached.get("fingerprint") != file.fingerprint:
        return None
    return sum(s["rows"] for s in cached["shards"])


def _estimated_rows(fs: Any, file: ManifestFile) -> tuple[int, int]:
    """(records per stored byte in the file's first `_ESTIMATE_BYTES` times its size, the
    records seen there: a floor)."""
    from fsspec.compression import compr

    with fs.open(file.path, "rb") as raw:
        f = compr[file.compression](raw, mode="rb") if file.compression else raw
        records = seen = 0
        if file.fmt == "webdataset":  # samples, not lines
            for _ in tar_samples(f, 0, False):
                records += 1
                seen = raw.tell()
                if seen >= _ESTIMATE_BYTES:
                    break
        else:
            for line in f:
                seen += len(line)
                records += is_record(line)
                if seen >= _ESTIMATE_BYTES:
                    break
        consumed = raw.tell() or 1
    records -= file.fmt == "csv"  # a CSV's header is no record
    if seen < _ESTIMATE_BYTES:  # the whole file was read
        return records, records
    return round(records * (file.size or consumed) / consumed), records


def count_rows(cfg: JobConfig, fs: Any, files: list[ManifestFile]) -> tuple[int, str, dict[str, int]]:
    """(rows, how they were counted, rows each file surely has): exact where it is cheap,
    else estimated from bytes."""
    total, how, floors = 0, Counter(), {}
    text_bytes = sum(f.size or 0 for f in files if f.fmt != "parquet")
    for f in files:
        n = _cached_rows(cfg, f)
        if n is not None:
            how["the output's cached plan"] += 1
        elif f.fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open(f.path, "rb") as fh:
                n = pq.ParquetFile(fh).metadata.num_rows
            how["parquet footers"] += 1
        elif text_bytes <= SCAN_LIMIT_BYTES:
            n = sum(s.rows for s in cut_shards(fs, f, shard_rows=1 << 40))
            how["counted"] += 1
        else:
            n, floors[f.path] = _estimated_rows(fs, f)
            how["estimated from bytes"] += 1
        floors.setdefault(f.path, n)
        total += n
    if cfg.input.limit is not None:
        total = min(total, cfg.input.limit)
    exact = "estimated from bytes" not in how
    how_text = ("exact" if exact else "ESTIMATE") + ": " + ", ".join(f"{k} ({v} file(s))" for k, v in how.items())
    return total, how_text, floors


# -- which rows -------------------------------------------------------------------------------


def sample_rows(
    cfg: JobConfig, fs: Any, files: list[ManifestFile], n: int, floors: dict[str, int]
) -> tuple[list[ManifestRow], int]:
    """The first rows of up to SAMPLE_FILES files spread over the manifest; (rows, files
    read). `floors`: rows each file surely has (reading past a file's end is an error)."""
    files = [f for f in files if floors.get(f.path)]
    if not files:
        return [], 0
    chosen = (
        [files[i * len(files) // SAMPLE_FILES] for i in range(SAMPLE_FILES)] if len(files) > SAMPLE_FILES else files
    )
    rows: list[ManifestRow] = []
    for f in chosen:
        per_file = min(math.ceil(n / len(chosen)), floors[f.path])
        groups: tuple[int, ...] = ()
        if f.fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open(f.path, "rb") as fh:
                groups = tuple(range(pq.ParquetFile(fh).metadata.num_row_groups))
        shard = Shard("sample", f.path, 0, 0, per_file, 1, "", row_groups=groups)
        split = split_of(f, [shard])
        rows += [row for _, _, row in split_rows(fs, split, cfg.input, columns=cfg.prompt_columns())]
    return rows[:n], len(chosen)


# -- what a row costs ---------------------------------------------------------------------------


class PromptTokens:
    """Prompt length per (task, row): exact from the checkpoint's files, else estimated."""

    def __init__(self, cfg: JobConfig):
        from internvl_batch.model.check import ModelCheckError, inspect_model
        from internvl_batch.model.templates import DEFAULT_TEMPLATE, get_template

        self.tokenizer = None
        self._cache: dict[tuple, int] = {}
        # What the engine will hold a row to (model/rope.py): vLLM's max_model_len, and for a
        # LongRoPE checkpoint run as its card, prompt + max_tokens within the original length.
        self.max_model_len, self.sequence_limit = cfg.model.max_model_len, None
        self.rope = "unknown (model not reachable)"
        try:
            info = inspect_model(cfg.model)
            self.tokenizer, self.template = info.tokenizer, info.template
            self.source = f"exact: template {info.template.name!r} and the checkpoint's tokenizer"
            self.max_model_len, self.sequence_limit = info.rope_plan.max_model_len, info.rope_plan.sequence_limit
            self.rope = info.rope_plan.note
        except (ModelCheckError, OSError) as e:
            self.template = get_template(cfg.model.template or DEFAULT_TEMPLATE)
            self.source = (f"ESTIMATE (model not reachable: {e}): image tokens exact, text at "
                           f"{_CHARS_PER_TOKEN:g} characters per token, template {self.template.name!r}")  # fmt: skip

    def __call__(self, question: str, tiles: tuple[int, ...], media: str, system_message: str | None) -> int:
        key = (question, tiles, media, system_message)
        if key not in self._cache:
            kwargs = {"system_message": system_message} if system_message is not None else {}
            prompt = build_prompt(question, tiles, media=media, template=self.template, **kwargs)
            if self.tokenizer is not None:
                self._cache[key] = len(self.tokenizer.prompt_ids(prompt).ids)
            else:
                text = prompt.with_placeholders.replace("<image>", "")
                image = sum(NUM_IMAGE_TOKENS_PER_TILE * t + 2 for t in tiles)  # + <img> and </img>
                self._cache[key] = image + math.ceil(len(text) / _CHARS_PER_TOKEN)
        return self._cache[key]


@dataclass
class RowPlan:
    id: str
    clips: int = 1  # output rows per task: a video's clips (job/clips.py), else 1
    tiles: int = 0
    status: dict[str, str] = field(default_factory=dict)  # per task
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # per task, rows that reach the engine
    error: str | None = None


def _embedded_header(name: str, data: bytes, cfg: JobConfig) -> Header:
    """An embedded image's header, as read_header reads a fetched one (same limits and statuses)."""
    decode, limit = cfg.preprocess.decode, cfg.preprocess.fetch.max_bytes
    if len(data) > limit:
        return Header(status=Status.TOO_LARGE, error=f"{name}: {len(data)} bytes exceed fetch.max_bytes={limit}")
    try:
        width, height = _size(data[:MAX_HEADER_BYTES], decode)
    except Exception as e:
        why = "not an image in an allowed format" if type(e).__name__ == "UnidentifiedImageError" else e
        return Header(status=Status.DECODE_ERROR, error=f"{name}: no image header: {why}")
    if width * height > decode.max_pixels:
        return Header(width, height, Status.TOO_LARGE, f"{name}: {width}x{height} exceeds decode.max_pixels")
    return Header(width, height)


def _row_question(row: ManifestRow, task: Any) -> tuple[str | None, str | None, str | None]:
    """(question, system message, why it can't be asked) of a row for a task, as the job builds them."""
    own = json.loads(row.request) if row.request else {}
    try:
        question = task.question_for(row.question, row.values)
    except MissingValue as e:
        return None, None, str(e)
    return question, own.get("system_message", task.system_message), None


def plan_row(row: ManifestRow, cfg: JobConfig, headers: dict[str, Header], tokens: PromptTokens) -> RowPlan:
    plan = RowPlan(row.id)
    tasks = [t.name for t in cfg.task]
    failed = (Status.INVALID_ROW, row.error) if row.error else None
    pre, model = cfg.preprocess, cfg.model
    if failed is None and row.video:
        h = headers[row.video]  # checked, and its declared duration: frames come from the video's own index
        failed = (h.status, h.error) if h.status != Status.OK else None
        per_image = (1,) * pre.video.num_segments  # one 448px tile per frame, as the card
        plan.clips = _clips(row, h, pre.video)
    elif failed is None:
        budgets = [pre.max_num] if len(row.images) == 1 else split_tile_budget(len(row.images), pre.multi_image_max_num)
        per_image = ()
        for url, budget in zip(row.images, budgets):
            h = headers[url]
            if h.status != Status.OK:
                failed = (h.status, h.error)
                break
            per_image += (predict_tiles(h.width, h.height, budget, pre.use_thumbnail),)
        if failed is None and len(per_image) > model.max_images_per_prompt:
            failed = (Status.TOO_LARGE, f"{len(per_image)} images exceed model.max_images_per_prompt")
    if failed is not None:
        plan.clips = 1  # one failed row per task, whatever it would have been cut into
        plan.status = dict.fromkeys(tasks, failed[0].value)
        plan.error = failed[1]
        return plan
    plan.tiles = sum(per_image) * plan.clips
    media = "video" if row.video else "image"
    for task in cfg.task:
        question, system, _ = _row_question(row, task)  # prompts filled in from the row's columns
        if question is None:
            plan.status[task.name] = Status.INVALID_ROW.value
            continue
        n = tokens(question, per_image, media, system)
        plan.prompt_tokens[task.name] = n
        limit = tokens.sequence_limit
        over = n >= tokens.max_model_len or (limit is not None and n + task.sampling.max_tokens > limit)
        plan.status[task.name] = (Status.CONTEXT_OVERFLOW if over else Status.OK).value
    return plan


def _clips(row: ManifestRow, header: Header, video: Any) -> int:
    """A video row's clips: its own clips column, else the windows video.clip_s cuts from
    the duration its container declares (MP4/MOV, AVI; 1 when it does not say)."""
    if row.clips:
        return len(row.clips)
    if video.clip_s is None or not header.duration_s:
        return 1
    start, end = row.start or 0.0, header.duration_s if row.end is None else min(row.end, header.duration_s)
    return count_fixed_clips(max(end - start, 0.0), video.clip_s, video.clip_stride_s)


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


def plan_rows(cfg: JobConfig, sample: list[ManifestRow], tokens: PromptTokens | None = None) -> list[RowPlan]:
    """Each sampled row's prediction; the media headers are read concurrently."""
    fetcher = Fetcher(cfg.preprocess.fetch)
    ok = [r for r in sample if not r.error]
    # Embedded media: their own bytes (nothing fetched); the rest by URL.
    embedded = {n: b for r in ok for n, b in zip(r.images, r.image_bytes or ()) if b is not None}
    embedded_videos = {r.video: r.video_bytes for r in ok if r.video_bytes is not None}
    images = sorted({u for r in ok for u in r.images} - set(embedded))
    videos = sorted({r.video for r in ok if r.video} - set(embedded_videos))
    with ThreadPoolExecutor(max_workers=16) as pool:
        # One Fetcher per thread is the rule for fetch(); check() and filesystem_options() keep no state.
        headers = dict(zip(images, pool.map(lambda u: read_header(u, fetcher, cfg.preprocess.decode), images)))
        limit = cfg.preprocess.video.max_bytes
        headers.update(zip(videos, pool.map(lambda u: read_video_header(u, fetcher, limit), videos)))
    headers.update({n: _embedded_header(n, b, cfg) for n, b in embedded.items()})
    headers.update({n: Header(duration_s=declared_duration(io.BytesIO(b))) for n, b in embedded_videos.items()})
    tokens = tokens or PromptTokens(cfg)
    return [plan_row(r, cfg, headers, tokens) for r in sample]


def make_preflight(cfg: JobConfig, n: int = SAMPLE_ROWS, rates: Rates | None = None) -> Preflight:
    check_prompt_columns(cfg.input, cfg.task)
    fs, files = list_files(cfg.input)
    rows, rows_how, floors = count_rows(cfg, fs, files)
    sample, n_files = sample_rows(cfg, fs, files, n, floors)
    tokens = PromptTokens(cfg)
    plans = plan_rows(cfg, sample, tokens)
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
    )  # fmt: skip
