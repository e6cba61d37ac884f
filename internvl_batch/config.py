"""Typed configuration: one nested pydantic model per concern, validated in one place.

Every model forbids unknown keys, so a typo fails with the field's name instead of being
ignored. The job-level `JobConfig` (input, preprocess, task, runtime, output) composes
these sections.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from internvl_batch.media.decode import DecodeConfig
from internvl_batch.media.fetch import FetchConfig
from internvl_batch.media.video import VideoConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Which checkpoint, and how one replica of it is held."""

    path: str = Field(
        description="hub name (OpenGVLab/InternVL2_5-8B), local dir, or object-storage prefix (s3://...)"
    )
    engine: Literal["vllm", "hf"] = "vllm"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica; 26B/38B/78B need more than one")
    max_model_len: int = Field(8192, ge=512)
    max_num_seqs: int = Field(64, ge=1, description="sequences a replica decodes at once")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    quantization: Literal["awq", "awq_marlin", "gptq", "fp8"] | None = Field(
        None, description="e.g. 'awq' for OpenGVLab/InternVL2_5-78B-AWQ; None reads it from the checkpoint"
    )
    max_dynamic_patch: int = Field(12, ge=1, description="most tiles per image the engine accepts (thumbnail excluded)")
    max_images_per_prompt: int = Field(8, ge=1, description="images (or video frames) one prompt may carry")
    trust_remote_code: bool = Field(False, description="explicit opt-in; not needed for InternVL2.5")
    enforce_eager: bool = Field(False, description="skip CUDA graphs / torch.compile (faster start, slower steps)")
    seed: int = 0
    cpu_kvcache_gib: int = Field(2, ge=1, description="KV cache GiB on the CPU build of vLLM (whole GiB)")
    download_dir: str | None = Field(None, description="local cache for object-storage checkpoints")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for an object-storage `path` (credentials: use the environment)"
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vllm.LLM(...) arguments, for knobs not modelled here"
    )


class SamplingConfig(_Strict):
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, description="-1: off")
    max_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = Field(None, description="constrain the answer to this JSON schema")

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("top_k must be -1 (off) or >= 1")
        return v

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from jsonschema.exceptions import SchemaError
            from jsonschema.validators import validator_for

            try:
                validator_for(v).check_schema(v)
            except SchemaError as e:
                raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return v


# -- the job ------------------------------------------------------------------------


class InputConfig(_Strict):
    path: str = Field(description="manifest file, directory or glob on any fsspec URL (s3://, gs://, local)")
    format: Literal["auto", "jsonl", "parquet", "csv"] = "auto"
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (no secrets in files)")
    id_column: str = "id"
    image_column: str = "image"
    video_column: str = "video"
    question_column: str = "question"
    start_column: str = "start"
    end_column: str = "end"
    passthrough: tuple[str, ...] = Field((), description="manifest columns copied to the output")
    limit: int | None = Field(None, ge=1, description="first N rows only (smoke runs)")


class PreprocessConfig(_Strict):
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    max_num: int = Field(12, ge=1, description="max tiles per single image (the card's max_num)")
    multi_image_max_num: int = Field(
        12, ge=1, description="tile budget shared by the images of one multi-image row (n_max)"
    )
    use_thumbnail: bool = True


CAPTION_PRESETS = {
    "short_caption": "Please describe the image shortly.",
    "detailed_caption": "Please describe the image in detail.",
}


class TaskConfig(_Strict):
    """One question asked of every row. Several tasks share one fetch and one tiling."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    preset: Literal["short_caption", "detailed_caption"] | None = None
    prompt: str | None = Field(None, description="a fixed prompt for every row")
    use_row_question: bool = Field(False, description="ask each row's own question column")
    system_message: str | None = Field(None, description="None: InternVL2.5's own")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        sources = [self.preset is not None, self.prompt is not None, self.use_row_question]
        if sum(sources) != 1:
            raise ValueError(f"task {self.name!r}: set exactly one of preset, prompt, use_row_question")
        return self

    def question_for(self, row_question: str | None) -> str | None:
        if self.use_row_question:
            return row_question or None
        return self.prompt if self.prompt is not None else CAPTION_PRESETS[self.preset]  # type: ignore[index]


class RuntimeConfig(_Strict):
    ray_address: str | None = Field(None, description="None: start/join a local Ray; 'auto': the cluster's")
    use_gpu: bool = Field(True, description="replicas ask Ray for GPUs; false with the CPU build of vLLM")
    replicas: int = Field(1, ge=1, description="engine actors, one model replica each")
    cpu_workers: int = Field(2, ge=1, description="concurrent preprocess (fetch/decode/tile) workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    preprocess_batch_size: int = Field(4, ge=1, description="rows per preprocess task")
    engine_batch_size: int = Field(32, ge=1, description="rows per engine call; keep >= max_num_seqs")
    engine_cpus: float = Field(1.0, ge=0, description="CPUs reserved for each engine actor")
    op_resource_reservation: bool = Field(
        False, description="Ray Data's per-operator reservation; off lets small nodes run CPU work in parallel"
    )
    retry_failed: bool = Field(False, description="redo rows whose status is not ok")
    progress_interval_s: float = Field(10.0, gt=0)


class OutputConfig(_Strict):
    path: str = Field(description="output prefix on any fsspec URL; parquet part files + _SUCCESS")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    rows_per_file: int = Field(5000, ge=1, description="rows per committed part file (resume granularity)")
    flush_interval_s: float = Field(60.0, gt=0, description="commit a part at least this often")


class JobConfig(_Strict):
    input: InputConfig
    model: ModelConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    task: list[TaskConfig] = Field(description="one task, or a list of tasks asked over the same media")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output: OutputConfig

    @field_validator("task", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

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
        from internvl_batch.output import BASE_FIELDS

        clash = {f.name for f in BASE_FIELDS}.intersection(self.input.passthrough)
        if clash:
            raise ValueError(f"input.passthrough: {sorted(clash)} clash with output columns; rename them")
        frames = self.preprocess.video.num_segments
        if frames > self.model.max_images_per_prompt:
            raise ValueError(
                f"preprocess.video.num_segments={frames} exceeds model.max_images_per_prompt="
                f"{self.model.max_images_per_prompt} (each frame is one image)"
            )
        return self
