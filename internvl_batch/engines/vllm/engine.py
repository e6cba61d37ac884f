"""The production engine: one vLLM replica, fed pre-tiled uint8 tiles.

The engine's front-end process does no decoding and no tiling (see vllm_model.py); it
tokenizes, counts, and hands tensors to vLLM's scheduler. Per-row problems become
results; a dead engine or out-of-memory raises `EngineFatalError` at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from internvl_batch.engines.base import (
    EngineFatalError,
    EngineRequest,
    EngineResult,
    check_request,
    context_overflow,
    stop_token_ids,
)
from internvl_batch.engines.model_path import resolve_model_path
from internvl_batch.engines.vllm.plugin import PRETILED_ARCHITECTURE
from internvl_batch.status import Status

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig, SamplingConfig

# Exceptions vLLM raises while validating one request's input: that row fails alone.
_PER_REQUEST_ERRORS = (ValueError, TypeError)


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

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - layout of other vLLM versions
        return False
    return isinstance(exc, EngineDeadError)


class VLLMEngine:
    def __init__(self, model: ModelConfig, sampling: SamplingConfig):
        vllm = _import_vllm()
        self.model = model
        self.default_sampling = sampling
        # Read by the CPU build only; sized from the config unless the operator set it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(model.cpu_kvcache_gib))
        path = resolve_model_path(model.path, model.download_dir, model.storage_options)
        overrides = {"architectures": [PRETILED_ARCHITECTURE], "max_dynamic_patch": model.max_dynamic_patch}
        kwargs = dict(
            model=path,
            dtype=model.dtype,
            tensor_parallel_size=model.tensor_parallel_size,
            max_model_len=model.max_model_len,
            max_num_seqs=model.max_num_seqs,
            gpu_memory_utilization=model.gpu_memory_utilization,
            quantization=model.quantization,
            trust_remote_code=model.trust_remote_code,
            enforce_eager=model.enforce_eager,
            seed=model.seed,
            limit_mm_per_prompt={"image": model.max_images_per_prompt},
            hf_overrides=overrides,
            # vLLM files dict-of-tensor image items under "embeddings" and gates them
            # behind this flag; our pre-tiled tiles travel that way.
            enable_mm_embeds=True,
            # Compact constrained JSON: free whitespace only costs tokens (and lets a
            # weak model loop on it). engine_kwargs can override.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        kwargs.update(model.engine_kwargs)
        self._llm = vllm.LLM(**kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self._params: dict[int, object] = {}

    # -- sampling ---------------------------------------------------------------------
    def _stop_token_ids(self, stop: Sequence[str]) -> list[int]:
        return stop_token_ids(self._tokenizer.get_vocab(), stop)

    def sampling_params(self, req: EngineRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        cfg = req.sampling or self.default_sampling
        key = id(cfg)
        if key not in self._params:
            structured = StructuredOutputsParams(json=cfg.json_schema) if cfg.json_schema else None
            self._params[key] = (
                cfg,  # keeps id(cfg) from being reused while cached
                SamplingParams(
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    top_k=cfg.top_k,
                    max_tokens=cfg.max_tokens,
                    repetition_penalty=cfg.repetition_penalty,
                    seed=cfg.seed,
                    stop=list(cfg.stop) or None,
                    stop_token_ids=self._stop_token_ids(req.prompt.stop),
                    structured_outputs=structured,
                ),
            )
        return self._params[key][1]

    # -- requests ---------------------------------------------------------------------
    def _vllm_input(self, req: EngineRequest) -> dict:
        inp: dict = {"prompt": req.prompt.with_placeholders}
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

    def _num_prompt_tokens(self, req: EngineRequest) -> int:
        return len(self._tokenizer.encode(req.prompt.text, add_special_tokens=False))

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        results: list[EngineResult | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            failed = check_request(req, self.model) or context_overflow(
                req, self._num_prompt_tokens(req), self.model.max_model_len
            )
            if failed is not None:
                results[i] = failed
            else:
                todo.append(i)
        for i, res in zip(todo, self._generate_isolating([requests[i] for i in todo])):
            results[i] = res
        return results  # type: ignore[return-value]

    def _generate_isolating(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """Run a batch; if vLLM rejects its input, split it to find the row(s) at fault."""
        if not requests:
            return []
        try:
            outputs = self._llm.generate(
                [self._vllm_input(r) for r in requests],
                [self.sampling_params(r) for r in requests],
                use_tqdm=False,
            )
        except _PER_REQUEST_ERRORS as e:
            if len(requests) == 1:
                return [EngineResult.failed(requests[0].id, Status.ENGINE_ERROR, f"{type(e).__name__}: {e}")]
            mid = len(requests) // 2
            return self._generate_isolating(requests[:mid]) + self._generate_isolating(requests[mid:])
        except Exception as e:
            if _is_fatal(e):
                raise EngineFatalError(f"vLLM engine failed: {type(e).__name__}: {e}") from e
            raise
        return [self._result(r, o) for r, o in zip(requests, outputs)]

    @staticmethod
    def _result(req: EngineRequest, out) -> EngineResult:
        completion = out.outputs[0]
        return EngineResult(
            id=req.id,
            status=Status.OK,
            text=completion.text,
            finish_reason=completion.finish_reason,
            num_prompt_tokens=len(out.prompt_token_ids),
            num_output_tokens=len(completion.token_ids),
            token_ids=tuple(completion.token_ids),
        )

    def prompt_token_ids(self, req: EngineRequest) -> list[int]:
        """The token ids vLLM built for a request's prompt (for fidelity tests)."""
        from vllm import SamplingParams

        out = self._llm.generate([self._vllm_input(req)], SamplingParams(max_tokens=1), use_tqdm=False)
        return list(out[0].prompt_token_ids)

    def shutdown(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
