"""The job's sections (input, preprocess, task, runtime, output) and `JobConfig`, which
composes them with the model section and checks them against each other in one place.

Every section forbids unknown keys, so a typo fails with the field's name instead of being
ignored.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from internvl_batch.config.base import Section, given, with_default
from internvl_batch.config.model import ModelConfig, SamplingConfig
from internvl_batch.config.runtime import RuntimeConfig
from internvl_batch.media.decode import DecodeConfig
from internvl_batch.media.fetch import FetchConfig
from internvl_batch.media.video import VideoConfig
from internvl_batch.model.checkpoint_facts import tiling_facts
from internvl_batch.model.prompt_template import fill, template_fields
from internvl_batch.model.workload import TaskShape, Workload
from internvl_batch.records import check_passthrough
from internvl_batch.storage.redact import secret_values

log = logging.getLogger(__name__)


class WebDatasetConfig(Section):
    """Which tar members of a WebDataset sample are its media (by the extension after the key)."""

    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
    video_extensions: tuple[str, ...] = ("mp4", "webm", "mkv", "mov", "avi")

    @field_validator("image_extensions", "video_extensions")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower().lstrip(".") for e in v)


class InputConfig(Section):
    path: str = Field(description="manifest file, directory or glob on any fsspec URL (s3://, gs://, local)")
    format: Literal["auto", "jsonl", "parquet", "csv", "webdataset", "openai_batch"] = Field(
        "auto",
        description="auto: by file name (.jsonl/.json/.ndjson, .parquet, .csv, .tar/.tar.gz/.tgz: webdataset); "
        "openai_batch (OpenAI Batch API request JSONL) is never guessed",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (no secrets in files)")
    id_column: str = "id"
    image_column: str = "image"
    video_column: str = "video"
    question_column: str = "question"
    start_column: str = "start"
    end_column: str = "end"
    clips_column: str = Field("clips", description="a video row's own clips: a list of [start, end] seconds")
    passthrough: tuple[str, ...] = Field((), description="manifest columns copied to the output")
    limit: int | None = Field(None, ge=1, description="first N rows only (smoke runs)")
    shard_rows: int = Field(
        20_000, ge=1, description="rows per shard: the unit of resume and bookkeeping (a part file never spans two)"
    )
    on_change: Literal["refuse", "redo"] = Field(
        "refuse",
        description="a shard whose manifest rows changed since it was processed: refuse the run, or redo the shard",
    )
    webdataset: WebDatasetConfig = Field(default_factory=WebDatasetConfig)


class PreprocessConfig(Section):
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    max_num: int = Field(12, ge=1, description="max tiles per single image (the card's max_num)")
    multi_image_max_num: int = Field(
        12, ge=1, description="tile budget shared by the images of one multi-image row (n_max)"
    )
    use_thumbnail: bool = Field(
        True,
        description="add the card's thumbnail tile to a tiled image; unset: the checkpoint's config.json "
        "(true, the card's, where it can't be read offline); a value that disagrees is used, with a warning",
    )


# Requests in flight per replica by default, per sequence vLLM decodes at once (measured:
# see RuntimeConfig.engine_batches_in_flight).
IN_FLIGHT_PER_SEQ = 8

CAPTION_PRESETS = {
    "short_caption": "Please describe the image shortly.",
    "detailed_caption": "Please describe the image in detail.",
}


class TaskConfig(Section):
    """One question asked of every row. Several tasks share one fetch and one tiling."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    preset: Literal["short_caption", "detailed_caption"] | None = None
    prompt: str | None = Field(
        None,
        description="a prompt for every row; {column} names fill in the row's value of that column "
        "(str.format names; {{ }} for literal braces)",
    )
    use_row_question: bool = Field(False, description="ask each row's own question column")
    system_message: str | None = Field(None, description="None: InternVL2.5's own")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        sources = [self.preset is not None, self.prompt is not None, self.use_row_question]
        if sum(sources) != 1:
            raise ValueError(f"task {self.name!r}: set exactly one of preset, prompt, use_row_question")
        if self.prompt is not None:
            try:
                template_fields(self.prompt)
            except ValueError as e:
                raise ValueError(f"task {self.name!r}: prompt: {e} (a literal brace is written {{{{ or }}}})") from None
        return self

    @property
    def prompt_columns(self) -> tuple[str, ...]:
        """The manifest columns this task's prompt names (a template), else ()."""
        return template_fields(self.prompt) if self.prompt is not None else ()

    def question_for(self, row_question: str | None, values: dict[str, str | None] | None = None) -> str | None:
        """The row's question for this task; None when it asks the row's own and there is
        none. A template naming a column the row has no value for raises MissingValue."""
        if self.use_row_question:
            return row_question or None
        if self.prompt is None:
            return CAPTION_PRESETS[self.preset]  # type: ignore[index]
        return fill(self.prompt, values or {})  # a fixed prompt too: its {{ }} are braces


def _fixed_part(task: TaskConfig) -> str | None:
    """A task's question as far as the config knows it: a template without its row values,
    None for each row's own (the engine checks each row's real prompt)."""
    if task.prompt is not None and template_fields(task.prompt):
        return fill(task.prompt, dict.fromkeys(template_fields(task.prompt), ""))
    return task.question_for(None)


class OutputConfig(Section):
    path: str = Field(description="output prefix on any fsspec URL; parquet part files + _SUCCESS")
    format: Literal["parquet", "openai_batch"] = Field(
        "parquet",
        description="openai_batch: also the OpenAI Batch API's response JSONL, one line per input row "
        "(_openai_batch/<shard>.jsonl), written when the run finishes",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)
    rows_per_file: int = Field(5000, ge=1, description="rows per committed part file (resume granularity)")
    flush_interval_s: float = Field(60.0, gt=0, description="commit a part at least this often")


class JobConfig(Section):
    input: InputConfig
    model: ModelConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    task: list[TaskConfig] = Field(
        description="one task, or a list of tasks asked over the same media (input.format=openai_batch: "
        "by default one task 'chat' asking each line's own messages)",
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output: OutputConfig

    @field_validator("task", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    def secret_values(self) -> list[str]:
        """The credentials this config holds (storage options, engine kwargs), for `scrub`."""
        m = self.model
        return secret_values([self.input.storage_options, self.output.storage_options,
                              self.preprocess.fetch.storage_options, m.storage_options, m.engine_kwargs])  # fmt: skip

    def engine_batches_in_flight(self) -> int:
        """`runtime.engine_batches_in_flight`, or the default sized from max_num_seqs and the tasks."""
        rt = self.runtime
        if rt.engine_batches_in_flight is not None:
            return rt.engine_batches_in_flight
        requests_per_batch = rt.engine_batch_size * len(self.task)
        return max(4, math.ceil(IN_FLIGHT_PER_SEQ * self.model.max_num_seqs / requests_per_batch))

    def prompt_columns(self) -> tuple[str, ...]:
        """The manifest columns the tasks' prompt templates name (read with every row)."""
        return tuple(sorted({c for t in self.task for c in t.prompt_columns}))

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """What a section leaves unset that another section knows: the checkpoint's thumbnail
        rule (its config.json), and engine batches as large as vLLM's batch."""
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        path = given(model, "path")
        if isinstance(path, str):
            facts = tiling_facts(path)
            thumb = given(data.get("preprocess"), "use_thumbnail")
            if thumb is None:
                data = {
                    **data,
                    "preprocess": with_default(data.get("preprocess"), "use_thumbnail", facts.use_thumbnail),
                }
            elif facts.source is not None and thumb != facts.use_thumbnail:
                log.warning(
                    "preprocess.use_thumbnail=%s disagrees with the checkpoint's use_thumbnail=%s (%s): using %s",
                    thumb, facts.use_thumbnail, facts.source, thumb,
                )  # fmt: skip
        seqs = given(model, "max_num_seqs")
        if isinstance(seqs, int) and given(data.get("runtime"), "engine_batch_size") is None:
            data = {**data, "runtime": with_default(data.get("runtime"), "engine_batch_size", seqs)}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_chat_task(cls, data: Any) -> Any:
        """An OpenAI batch file asks each line's own messages: one task, given or not."""
        if isinstance(data, dict) and not data.get("task"):
            fmt = data.get("input", {}).get("format") if isinstance(data.get("input"), dict) else None
            fmt = getattr(data.get("input"), "format", fmt)
            if fmt == "openai_batch":
                data = {**data, "task": [{"name": "chat", "use_row_question": True}]}
        return data

    @model_validator(mode="after")
    def _openai_batch(self) -> JobConfig:
        asks_rows = len(self.task) == 1 and self.task[0].use_row_question
        if self.input.format == "openai_batch" and not asks_rows:
            raise ValueError(
                "input.format=openai_batch: each line is its own request; give one task with "
                "use_row_question: true (its sampling is the default for what a line leaves out), or none"
            )
        if self.output.format == "openai_batch" and len(self.task) != 1:
            raise ValueError(
                f"output.format=openai_batch writes one response per input line: give one task, not {len(self.task)}"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        names = [t.name for t in self.task]
        if not names:
            raise ValueError("task: at least one task is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"task: names must be unique, got {names}")
        if self.preprocess.max_num > self.model.max_dynamic_patch:
            raise ValueError(
                f"preprocess.max_num={self.preprocess.max_num} exceeds model.max_dynamic_patch="
                f"{self.model.max_dynamic_patch}: the engine would refuse those images"
            )
        check_passthrough(self.input.passthrough)
        frames = self.preprocess.video.num_segments
        if frames > self.model.max_images_per_prompt:
            raise ValueError(
                f"preprocess.video.num_segments={frames} exceeds model.max_images_per_prompt="
                f"{self.model.max_images_per_prompt} (each frame is one image)"
            )
        self.model._workload = self.workload()
        return self

    def workload(self) -> Workload:
        """Every tile layout a row can reach the engine with, and what each task asks."""
        from internvl_batch.media.tiling import split_tile_budget

        pre = self.preprocess

        def tiles(max_num: int) -> int:  # a grid of up to max_num tiles, plus the thumbnail
            return max_num + (1 if pre.use_thumbnail and max_num > 1 else 0)

        layouts = [("image", (tiles(pre.max_num),)), ("video", (1,) * pre.video.num_segments)]
        for n in range(2, self.model.max_images_per_prompt + 1):
            layouts.append(("image", tuple(tiles(b) for b in split_tile_budget(n, pre.multi_image_max_num))))
        tasks = tuple(TaskShape(t.name, _fixed_part(t), t.system_message, t.sampling.max_tokens) for t in self.task)
        return Workload(tuple(layouts), tasks)
