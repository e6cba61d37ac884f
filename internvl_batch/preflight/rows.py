"""The one per-row check `plan` and `validate` share: what the job would make of each sampled row.

For each row it reads only its media's headers (`media/headers.py`), predicts its tiles
exactly as tiling will cut them, fills in each task's prompt from the row's columns, counts
the prompt's tokens (the checkpoint's template and tokenizer when the model's files are
reachable, else an estimate that says so) and holds it to the engine's context length, and
so predicts the status the job would give the row per task, with the reason. `validate`
prints it row by row; `plan` (`estimate.py`) scales it to the manifest. With `--strict` both
exit 1 when a sampled row is predicted refused.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.config import JobConfig
from internvl_batch.job.clips import count_fixed_clips
from internvl_batch.job.readers import ManifestRow, check_prompt_columns, list_files
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
from internvl_batch.preflight.sample import sample_rows
from internvl_batch.status import Status

_CHARS_PER_TOKEN = 4.0  # the estimate's rule of thumb for text without a tokenizer

# -- what a row costs ---------------------------------------------------------------------------


class PromptTokens:
    """Prompt length per (task, row): exact from the checkpoint's files, else estimated."""

    def __init__(self, cfg: JobConfig, info: Any = None):
        """`info`: the model's `inspect_model` result when the caller has it already."""
        from internvl_batch.engines.checkpoint import inspect_checkpoint
        from internvl_batch.model.check import ModelCheckError
        from internvl_batch.model.templates import DEFAULT_TEMPLATE, get_template

        self.tokenizer = None
        self._cache: dict[tuple, int] = {}
        # What the engine will hold a row to (model/rope.py): vLLM's max_model_len, and for a
        # LongRoPE checkpoint run as its card, prompt + max_tokens within the original length.
        self.max_model_len, self.sequence_limit = cfg.model.max_model_len, None
        self.rope = "unknown (model not reachable)"
        try:
            info = info or inspect_checkpoint(cfg.model)
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
    error: str | None = None  # why the whole row fails (then every task has its status)
    reasons: dict[str, str] = field(default_factory=dict)  # per task: why that task alone is refused

    @property
    def refused(self) -> dict[str, str]:
        """{task: status} of the tasks the job would not run this row for."""
        return {t: s for t, s in self.status.items() if s != Status.OK}

    def line(self) -> str:
        """`validate`'s line: the status (per task when they differ) and why."""
        statuses = set(self.status.values())
        shown = next(iter(statuses)) if len(statuses) == 1 else ", ".join(f"{t} {s}" for t, s in self.status.items())
        why = self.error or "; ".join(f"{t}: {r}" for t, r in self.reasons.items())
        return f"{self.id}: {shown}" + (f": {why}" if why else "")


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
    if question is None:
        return None, None, "it asks each row's question; this row has none"  # the inference stage's words
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
        question, system, why = _row_question(row, task)  # prompts filled in from the row's columns
        if question is None:
            plan.status[task.name], plan.reasons[task.name] = Status.INVALID_ROW.value, why
            continue
        n = tokens(question, per_image, media, system)
        plan.prompt_tokens[task.name] = n
        limit = tokens.sequence_limit
        if n >= tokens.max_model_len:
            plan.reasons[task.name] = f"{n} prompt tokens reach the engine's max_model_len={tokens.max_model_len}"
        elif limit is not None and n + task.sampling.max_tokens > limit:
            plan.reasons[task.name] = (f"{n} prompt tokens + max_tokens={task.sampling.max_tokens} exceed "
                                       f"{limit} (the checkpoint's RoPE)")  # fmt: skip
        over = task.name in plan.reasons
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


# -- the shared check ---------------------------------------------------------------------------


@dataclass
class SampleCheck:
    """Sampled rows as the job would treat them: what `validate` prints and `plan` scales up."""

    plans: list[RowPlan]
    files_read: int
    tokens: PromptTokens

    def refused_rows(self) -> Counter:
        """{status: sampled rows with a task of that status} over the statuses that are not ok."""
        return Counter(s for p in self.plans for s in set(p.refused.values()))

    def strict_error(self) -> str | None:
        """`--strict`'s refusal: how many sampled rows would not be answered and with which statuses."""
        rows = sum(1 for p in self.plans if p.refused)
        if not rows:
            return None
        statuses = ", ".join(f"{s} {k}" for s, k in sorted(self.refused_rows().items(), key=lambda x: (-x[1], x[0])))
        return (f"--strict: {rows} of {len(self.plans)} sampled row(s) predicted refused ({statuses}); "
                "without --strict they are output rows with that status")  # fmt: skip

    def text(self) -> str:
        """`validate`'s report: one line per sampled row."""
        head = (f"manifest: {len(self.plans)} sampled row(s), the first of {self.files_read} file(s) spread over the "
                f"manifest, checked as `plan` checks them (media headers, tiles, prompt tokens: {self.tokens.source})")  # fmt: skip
        counts = Counter(s for p in self.plans for s in p.status.values())
        tail = "predicted status (row x task): " + ", ".join(f"{s} {k}" for s, k in counts.most_common())
        return "\n".join([head, *(f"  {p.line()}" for p in self.plans), tail])


def check_sample(
    cfg: JobConfig,
    n: int,
    fs: Any = None,
    files: list | None = None,
    floors: dict[str, int] | None = None,
    info: Any = None,
) -> SampleCheck:
    """The check both verbs make: the prompts' columns against the manifest, then the sampled
    rows predicted one by one. `fs, files, floors`: the listing and row counts when the
    caller has them (`plan`); `info`: the model's `inspect_model` result (`validate`)."""
    check_prompt_columns(cfg.input, cfg.task)
    if files is None:
        fs, files = list_files(cfg.input)
    sample, files_read = sample_rows(cfg, fs, files, n, floors)
    tokens = PromptTokens(cfg, info)
    return SampleCheck(plan_rows(cfg, sample, tokens), files_read, tokens)
