"""The production engine: one vLLM replica (its async engine), fed pre-tiled uint8 tiles.

Each request goes to vLLM as soon as it is handed over and its result comes back as soon
as it finishes, so the scheduler's queue holds everything the caller has in flight: a
batch's slowest row never idles the GPU. vLLM's `AsyncLLM` runs on an event loop of its
own (a thread), so callers on any loop (Ray Data's) or none (tests) share one engine.

The engine's front-end does no decoding and no tiling (see pretiled.py); it tokenizes,
counts, and hands tensors to vLLM's scheduler. Per-row problems become results; a dead
engine or out-of-memory raises `EngineFatalError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from internvl_batch.engines.base import EngineBase, EngineFatalError, EngineRequest, EngineResult
from internvl_batch.engines.model_path import resolve_model_path
from internvl_batch.engines.occupancy import Occupancy
from internvl_batch.engines.vllm.plugin import PRETILED_ARCHITECTURE
from internvl_batch.engines.vllm.stat_logger import logger_class
from internvl_batch.model.prompts import IMAGE_PLACEHOLDER
from internvl_batch.status import Status

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig, SamplingConfig

# Exceptions vLLM raises while validating one request's input: that row fails alone.
_PER_REQUEST_ERRORS = (ValueError, TypeError)
log = logging.getLogger(__name__)
CPU_KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
CPU_KVCACHE_DEFAULT_GIB = 4
_SAMPLE_INTERVAL_S = 0.05


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM engine needs vLLM: pip install 'internvl-batch[gpu]' (CUDA) or 'internvl-batch[cpu]' (CPU build)"
        ) from e
    return vllm


def _is_fatal(exc: BaseException) -> bool:
    import torch
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, (torch.OutOfMemoryError, EngineDeadError))


# ModelConfig fields that are vLLM engine arguments of the same name and meaning.
_ENGINE_FIELDS = ("dtype", "tensor_parallel_size", "max_model_len", "max_num_seqs", "gpu_memory_utilization",
                  "quantization", "trust_remote_code")  # fmt: skip
# SamplingConfig fields that are vLLM sampling parameters of the same name and meaning.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "min_tokens", "repetition_penalty", "seed", "n")
# SamplingParams kept per distinct sampling config; rows with their own sampling (OpenAI
# batch lines) bring many: the cache starts over rather than grow with the rows.
_MAX_CACHED_PARAMS = 256


def engine_args(model: ModelConfig, tokenizer: str | None = None, max_model_len: int | None = None) -> dict[str, Any]:
    """`tokenizer`: a local stand-in for a remote-code tokenizer (model/tokenizer.py);
    `max_model_len`: the engine's own (model/rope.py), else model.max_model_len."""
    path = resolve_model_path(model.path, model.download_dir, model.storage_options)
    kwargs = dict(
        model=path,
        **{k: getattr(model, k) for k in _ENGINE_FIELDS},
        limit_mm_per_prompt={"image": model.max_images_per_prompt},
        hf_overrides={"architectures": [PRETILED_ARCHITECTURE], "max_dynamic_patch": model.max_dynamic_patch},
        # vLLM's engine-wide seed; each request's own is sampling.seed (none: this one).
        seed=0,
        # vLLM files dict-of-tensor image items under "embeddings" and gates them behind
        # this flag; our pre-tiled tiles travel that way.
        enable_mm_embeds=True,
        # Compact constrained JSON: free whitespace only costs tokens (and lets a weak
        # model loop on it). engine_kwargs can override.
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        # Our stat logger (occupancy) needs vLLM's scheduler statistics.
        disable_log_stats=False,
    )
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if tokenizer:
        kwargs["tokenizer"] = tokenizer
    kwargs.update(model.engine_kwargs)
    return kwargs


def cpu_kvcache_default() -> str | None:
    """The CPU build of vLLM sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); unset, it
    asks for most of the node's memory and fails later with an error that doesn't say so.
    Unset on the CPU build: CPU_KVCACHE_DEFAULT_GIB, said once in the log. Returns what was set."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or os.environ.get(CPU_KVCACHE_ENV, "").strip():
        return None
    os.environ[CPU_KVCACHE_ENV] = str(CPU_KVCACHE_DEFAULT_GIB)
    log.info("%s is unset: the CPU build of vLLM gets %d GiB of KV cache (set it to change)",
             CPU_KVCACHE_ENV, CPU_KVCACHE_DEFAULT_GIB)  # fmt: skip
    return os.environ[CPU_KVCACHE_ENV]


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class VLLMEngine(EngineBase):
    def __init__(self, model: ModelConfig, sampling: SamplingConfig):
        _import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cpu_kvcache_default()
        super().__init__(model, sampling)
        self.occupancy = Occupancy(model.max_num_seqs)
        self._params: dict[tuple, tuple[Any, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**engine_args(model, self.checkpoint.vllm_tokenizer, self.max_model_len))

        async def start():
            # Built on its loop: AsyncLLM binds its output handler to the running loop.
            llm = AsyncLLM.from_engine_args(args, stat_loggers=[logger_class(self.occupancy)])
            self._sampler = asyncio.ensure_future(self._sample())
            return llm

        try:
            self._llm = self._call(start()).result()
        except BaseException:
            self._stop_loop()
            raise
        self.tokenizer = self._llm.get_tokenizer()
        # What vLLM's InternVL processor searches for to expand each image (pretiled.py).
        self._image_placeholder_ids = self.tokenizer.encode(IMAGE_PLACEHOLDER, add_special_tokens=False)

    # -- the loop ---------------------------------------------------------------------
    def _call(self, coro: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(_SAMPLE_INTERVAL_S)
            self.occupancy.sample()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            # Cancelled and awaited first: a stopped loop's pending tasks (our sampler, vLLM's
            # output handler) would be reported as destroyed while pending at exit.
            # A task that ignores cancellation must not keep shutdown() from returning.
            with contextlib.suppress(TimeoutError, RuntimeError):
                self._call(_cancel_other_tasks()).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- sampling ---------------------------------------------------------------------
    def _stop_token_ids(self, req: EngineRequest) -> list[int]:
        return self.stop_ids(self.tokenizer.get_vocab(), req)

    def sampling_params(self, req: EngineRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        cfg = self.sampling_for(req)
        key = (id(cfg), tuple(req.prompt.stop))
        if key not in self._params:
            if len(self._params) >= _MAX_CACHED_PARAMS:
                self._params.clear()
            structured = StructuredOutputsParams(json=cfg.json_schema) if cfg.json_schema else None
            self._params[key] = (
                cfg,  # keeps id(cfg) from being reused while cached
                SamplingParams(
                    **{k: getattr(cfg, k) for k in _SAMPLING_FIELDS},
                    stop=list(cfg.stop) or None,
                    stop_token_ids=self._stop_token_ids(req),
                    # model.chat stops at the template separator only, not at the tokenizer's
                    # EOS; but a JSON schema's grammar ends by forcing that EOS, so it must stop there.
                    ignore_eos=cfg.json_schema is None,
                    structured_outputs=structured,
                    # One output when the request is done, with all n answers: streamed (the
                    # default) the last output of an n > 1 request can lack answers that
                    # finished in an earlier step (seen: 2 of 3).
                    output_kind=RequestOutputKind.FINAL_ONLY,
                ),
            )
        return self._params[key][1]

    # -- requests ---------------------------------------------------------------------
    def _vllm_input(self, req: EngineRequest, prompt_ids=None) -> dict:
        # Token ids, as model.chat tokenizes the prompt (model/prompt_ids.py says why)
        prompt_ids = prompt_ids or self.checkpoint.tokenizer.prompt_ids(req.prompt)
        inp: dict = {"prompt_token_ids": prompt_ids.with_placeholders(self._image_placeholder_ids)}
        if req.tiles is not None and req.num_tiles:
            import torch

            inp["multi_modal_data"] = {
                "image": {
                    "pixel_values_flat": torch.from_numpy(req.tiles),
                    "image_num_patches": torch.tensor(req.prompt.tiles_per_image, dtype=torch.int64),
                }
            }
            if req.media_key:
                # Content ids let vLLM skip hashing the tiles (and share its encoder
                # cache across tasks over the same media); they must be unique per content.
                n = len(req.prompt.tiles_per_image)
                inp["multi_modal_uuids"] = {"image": [f"{req.media_key}#{i}" for i in range(n)]}
        return inp

    async def _one(self, req: EngineRequest, params=None) -> EngineResult:
        """One request, on the engine's loop."""
        prompt_ids = None

        def count() -> int:
            nonlocal prompt_ids
            prompt_ids = self.checkpoint.tokenizer.prompt_ids(req.prompt)
            return len(prompt_ids.ids)

        failed = self.refusal(req, count)
        if failed is not None:
            return failed
        from vllm.v1.engine.exceptions import EngineGenerateError

        final = None
        self.occupancy.submitted()
        try:
            rid = f"{req.id}-{uuid.uuid4().hex[:8]}"  # unique even when a retried batch resends a row
            inputs = self._vllm_input(req, prompt_ids)
            async for out in self._llm.generate(inputs, params or self.sampling_params(req), rid):
                final = out
        except EngineGenerateError as e:
            cause = e.__cause__ or e
            if isinstance(cause, _PER_REQUEST_ERRORS):
                return EngineResult.failed(req.id, Status.ENGINE_ERROR, f"{type(cause).__name__}: {cause}")
            raise EngineFatalError(f"vLLM engine failed: {type(cause).__name__}: {cause}") from e
        except Exception as e:
            if _is_fatal(e):
                raise EngineFatalError(f"vLLM engine failed: {type(e).__name__}: {e}") from e
            raise
        finally:
            self.occupancy.finished()
        return self._result(req, final)

    def submit(self, req: EngineRequest) -> Future:
        """Hand one request to vLLM now; the future resolves when it finishes."""
        return self._call(self._one(req))

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """One result per request, in order. Per-row failures are results; a dead engine raises."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def _result(self, req: EngineRequest, out) -> EngineResult:
        answers = []
        for completion in sorted(out.outputs, key=lambda c: c.index):  # n > 1: every answer, in order
            answer_ids = completion.token_ids
            # A JSON grammar may end on any EOS id of generation_config.json (Phi-3's
            # <|assistant|>), which is no special token and would be decoded into the answer.
            if completion.finish_reason == "stop" and answer_ids and completion.stop_reason in (None, answer_ids[-1]):
                answer_ids = answer_ids[:-1]
            answers.append((self.answer(req, answer_ids), completion.finish_reason, completion.token_ids))
        return EngineResult.answers(req.id, len(out.prompt_token_ids), answers)

    def prompt_token_ids(self, req: EngineRequest) -> list[int]:
        """The token ids vLLM built for a request's prompt (for fidelity tests)."""
        from vllm import SamplingParams

        return list(self.raw_generate(self._vllm_input(req), SamplingParams(max_tokens=1)).prompt_token_ids)

    def raw_generate(self, inputs: dict, params) -> Any:
        """vLLM's own output for raw inputs (e.g. a PIL image on vLLM's stock tiling path):
        for fidelity tests that compare our path with vLLM's."""

        async def last():
            final = None
            async for out in self._llm.generate(inputs, params, uuid.uuid4().hex):
                final = out
            return final

        return self._call(last()).result()

    def shutdown(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            # Our tasks first (the sampler, vLLM's output handler): an output handler still
            # waiting when the engine core stops logs EngineDeadError, as if it had crashed.
            with contextlib.suppress(TimeoutError, RuntimeError):
                self._call(_cancel_other_tasks()).result(timeout=10)
            llm.shutdown()
        self._stop_loop()
