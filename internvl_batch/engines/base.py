"""What every engine shares: requests, results, the protocol, and the per-request checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from internvl_batch.engines.occupancy import Occupancy
from internvl_batch.model.prompts import Prompt
from internvl_batch.model.templates import Template
from internvl_batch.status import Status

if TYPE_CHECKING:
    import numpy as np

    from internvl_batch.config import ModelConfig, SamplingConfig


@dataclass(frozen=True)
class EngineRequest:
    """One already-preprocessed prompt.

    `tiles` holds every tile of every image (or video frame) of the row, in prompt order,
    as uint8 (T, 448, 448, 3): 4x smaller than float32 to ship between workers; the
    engine normalises where that is cheapest. `prompt.tiles_per_image` splits them.
    """

    id: str
    prompt: Prompt
    tiles: np.ndarray | None = None
    sampling: SamplingConfig | None = None  # None: the engine's default
    media_key: str | None = None  # stable id of the media content, for engine-side caches

    @property
    def num_tiles(self) -> int:
        return 0 if self.tiles is None else int(self.tiles.shape[0])


@dataclass(frozen=True)
class EngineResult:
    id: str
    status: Status
    text: str | None = None
    finish_reason: str | None = None
    num_prompt_tokens: int | None = None
    num_output_tokens: int | None = None
    token_ids: tuple[int, ...] = ()
    error: str | None = None
    # Every answer when sampling.n > 1 (the first is also text / finish_reason / num_output_tokens).
    texts: tuple[str, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    output_token_counts: tuple[int, ...] = ()

    @classmethod
    def failed(cls, request_id: str, status: Status, error: str) -> EngineResult:
        return cls(id=request_id, status=status, error=error)

    @classmethod
    def answers(cls, request_id: str, num_prompt_tokens: int, answers: Sequence[tuple[str, str, Sequence[int]]]):
        """An ok result of one or more (text, finish reason, token ids) answers, in order."""
        text, finish, ids = answers[0]
        return cls(
            id=request_id, status=Status.OK, text=text, finish_reason=finish, num_prompt_tokens=num_prompt_tokens,
            num_output_tokens=len(ids), token_ids=tuple(ids), texts=tuple(a[0] for a in answers),
            finish_reasons=tuple(a[1] for a in answers), output_token_counts=tuple(len(a[2]) for a in answers),
        )  # fmt: skip


class EngineFatalError(RuntimeError):
    """The engine itself is gone (dead process, out of memory): fail the job fast."""


class Engine(Protocol):
    # The checkpoint's conversation template (model/check.py): prompts are built with it.
    template: Template
    # How busy the engine's scheduler kept the device; None for an engine that can't tell.
    occupancy: Occupancy | None

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """One result per request, in order. Per-row failures are results, not raises;
        a dead engine raises EngineFatalError."""

    def shutdown(self) -> None: ...


def stop_token_ids(vocab: dict[str, int], stop: Sequence[str]) -> list[int]:
    """The ids of the prompt's stop strings that are single tokens of this tokenizer."""
    return [vocab[s] for s in stop if s in vocab]


def request_stop_token_ids(vocab: dict[str, int], prompt: Prompt, extra: Sequence[str] = ()) -> list[int]:
    """What ends generation: the template's separator, as in model.chat, then the
    explicitly configured extra stop tokens (`model.extra_stop_tokens`). Nothing else:
    not the tokenizer's EOS, not generation_config.json's (model.chat ignores both)."""
    return stop_token_ids(vocab, (*prompt.stop, *extra))


def check_request(req: EngineRequest, model: ModelConfig) -> EngineResult | None:
    """The failed result for a request the engine can't take, or None. Shared by engines."""
    tiles = req.prompt.tiles_per_image
    if len(tiles) > model.max_images_per_prompt:
        msg = f"{len(tiles)} images/frames exceed model.max_images_per_prompt={model.max_images_per_prompt}"
        return EngineResult.failed(req.id, Status.TOO_LARGE, msg)
    # max_dynamic_patch tiles plus the thumbnail
    if tiles and max(tiles) > model.max_dynamic_patch + 1:
        msg = (
            f"an image has {max(tiles)} tiles; model.max_dynamic_patch={model.max_dynamic_patch} "
            f"allows {model.max_dynamic_patch + 1} with the thumbnail"
        )
        return EngineResult.failed(req.id, Status.TOO_LARGE, msg)
    t = req.tiles
    if t is not None and (t.ndim != 4 or t.shape[3] != 3 or str(t.dtype) != "uint8"):
        msg = f"tiles must be uint8 (T, H, W, 3), got {t.dtype} {tuple(t.shape)}"
        return EngineResult.failed(req.id, Status.ENGINE_ERROR, msg)
    if sum(tiles) != req.num_tiles:
        msg = f"prompt expects {sum(tiles)} tiles but the request carries {req.num_tiles}"
        return EngineResult.failed(req.id, Status.ENGINE_ERROR, msg)
    return None


def context_overflow(
    req: EngineRequest, num_prompt_tokens: int, max_model_len: int, sequence_limit: int | None = None,
    max_tokens: int = 0,
) -> EngineResult | None:  # fmt: skip
    """At least one token must fit after the prompt; with a `sequence_limit` (a LongRoPE
    checkpoint run as its card, model/rope.py), the whole answer must fit it too."""
    what = (
        f"prompt is {num_prompt_tokens} tokens ({req.prompt.num_image_context_tokens} image tokens "
        f"from {sum(req.prompt.tiles_per_image)} tiles)"
    )
    if num_prompt_tokens >= max_model_len:
        msg = f"{what}; model.max_model_len={max_model_len}"
    elif sequence_limit is not None and num_prompt_tokens + max_tokens > sequence_limit:
        msg = (
            f"{what} + sampling.max_tokens {max_tokens} exceeds {sequence_limit}, where this checkpoint's "
            f"LongRoPE changes factors; vLLM can't follow that change (see model.rope_factors)"
        )
    else:
        return None
    return EngineResult(id=req.id, status=Status.CONTEXT_OVERFLOW, error=msg, num_prompt_tokens=num_prompt_tokens)


async def run_requests(engine: Engine, requests: Sequence[EngineRequest]) -> list[tuple[EngineResult, float]]:
    """(result, milliseconds from submission to result) per request, in order.

    An engine with `submit` (vLLM) gets every request at once and each is timed on its
    own; one without (the HF reference) runs the batch in a thread, off the caller's loop.
    """
    import asyncio
    import time

    submit = getattr(engine, "submit", None)
    if submit is None:
        start = time.perf_counter()
        results = await asyncio.to_thread(engine.generate, requests)
        ms = (time.perf_counter() - start) * 1000 / max(len(results), 1)
        return [(r, ms) for r in results]

    async def timed(req: EngineRequest) -> tuple[EngineResult, float]:
        start = time.perf_counter()
        result = await asyncio.wrap_future(submit(req))
        return result, (time.perf_counter() - start) * 1000

    tasks = [asyncio.ensure_future(timed(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()  # what is still queued in the engine is aborted
        raise


class EngineBase:
    """What both engines do the same way, as model.chat does it: the checkpoint's template,
    tokenizer and stops (model/check.py), the refusal of requests the engine can't take,
    and the answer text made from the generated tokens."""

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, files: str | None = None, reference=False):
        """`reference`: run the checkpoint as model.chat does (its own template whatever
        model.template says, the card's RoPE at every length), for `verify`."""
        from internvl_batch.engines.checkpoint import checkpoint_files
        from internvl_batch.model.check import inspect_model

        if reference:
            model = model.model_copy(update={"template": None, "rope_factors": "card"})
        self.model = model
        self.default_sampling = sampling
        files = files if files is not None else checkpoint_files(model)
        self.checkpoint = inspect_model(model, files, reference=reference)
        self.template = self.checkpoint.template
        # What the engine runs with (model/rope.py): vLLM's max_model_len may be capped
        # below model.max_model_len so that vLLM uses the RoPE factors the card uses.
        self.max_model_len = self.checkpoint.rope_plan.max_model_len
        self.sequence_limit = self.checkpoint.rope_plan.sequence_limit
        self.occupancy: Occupancy | None = None

    def sampling_for(self, req: EngineRequest) -> SamplingConfig:
        return req.sampling or self.default_sampling

    def refusal(self, req: EngineRequest, count_prompt_tokens: Callable[[], int]) -> EngineResult | None:
        """The failed result of a request this engine can't take, or None; the prompt is
        tokenized only for a request that passed the cheaper checks."""
        if failed := check_request(req, self.model):
            return failed
        max_tokens = self.sampling_for(req).max_tokens
        return context_overflow(req, count_prompt_tokens(), self.max_model_len, self.sequence_limit, max_tokens)

    def stop_ids(self, vocab: dict[str, int], req: EngineRequest) -> list[int]:
        return request_stop_token_ids(vocab, req.prompt, self.model.extra_stop_tokens)

    def answer(self, req: EngineRequest, token_ids: Sequence[int]) -> str:
        """model.chat's answer from the tokens (model/answers.py), not an engine's streamed text."""
        from internvl_batch.model.answers import answer_text

        return answer_text(
            self.checkpoint.tokenizer.decode, token_ids, req.prompt.template, self.sampling_for(req).stop
        )
