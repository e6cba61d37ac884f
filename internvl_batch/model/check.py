"""Everything a checkpoint needs besides its weights, loaded the way the engines load it.

Both engines start from `inspect_model` (config, tokenizer, template, stop tokens), and
`internvl-batch validate` runs the same function without weights or a GPU, so a config
that validates is one whose engines start. Every failure is a `ModelCheckError` naming
the config key that fixes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internvl_batch.model.conversation_file import TemplateError, resolve_template
from internvl_batch.model.prompts import IMG_CONTEXT, IMG_END, IMG_START
from internvl_batch.model.rope import Rope, RopeError, RopePlan, plan_rope
from internvl_batch.model.templates import Template
from internvl_batch.model.tokenizer import CheckpointTokenizer, TokenizerError, load_tokenizer

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig


class ModelCheckError(ValueError):
    """`retryable`: the hub or the store failed (network, 5xx); the same check may pass later."""

    def __init__(self, key: str, message: str, retryable: bool = False):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.retryable = retryable


@dataclass(frozen=True)
class ModelInfo:
    files: Path  # a local directory with the checkpoint's config and tokenizer files
    config: dict[str, Any]
    tokenizer: CheckpointTokenizer
    template: Template
    stop_token_ids: tuple[int, ...]  # the template separator, then model.extra_stop_tokens
    rope: Rope
    rope_plan: RopePlan  # vLLM's max_model_len and the per-row limit that keep the card's RoPE

    @property
    def vllm_tokenizer(self) -> str | None:
        """What to pass vLLM as `tokenizer=`: the converted stand-in, else nothing."""
        return self.tokenizer.path if self.tokenizer.converted_from else None

    def summary(self) -> str:
        llm = (self.config.get("llm_config", {}).get("architectures") or ["?"])[0]
        tok = type(self.tokenizer.tokenizer).__name__
        if self.tokenizer.converted_from:
            tok = f"{self.tokenizer.converted_from} (rebuilt from tokenizer.model, no remote code)"
        if self.tokenizer.slow_encode is not None:
            tok += " (prompts encoded as its slow class does, as the card)"
        return (
            f"model ok: LLM {llm}, template {self.template.name!r} (stop {self.template.stop!r}), tokenizer {tok}\n"
            f"rope: {self.rope_plan.note}"
        )


def _load_config(files: Path, trust_remote_code: bool) -> dict[str, Any]:
    from transformers import AutoConfig

    from internvl_batch.model.configs import register_config_classes

    config_file = files / "config.json"
    if not config_file.exists():
        raise ModelCheckError("model.path", f"no config.json in {files}: not a checkpoint")
    config = json.loads(config_file.read_text())
    if config.get("model_type") not in ("internvl_chat", "internvl"):
        raise ModelCheckError("model.path", f"model_type {config.get('model_type')!r} is not an InternVL checkpoint")
    register_config_classes()
    try:
        AutoConfig.from_pretrained(files, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ModelCheckError("model.path", f"config.json does not load: {type(e).__name__}: {e}") from e
    return config


def _single_token_ids(tokenizer, tokens, key: str, what: str) -> tuple[int, ...]:
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ModelCheckError(key, f"{what} {missing} not a token of this checkpoint's tokenizer")
    return tuple(vocab[t] for t in tokens)


def inspect_model(model: ModelConfig, files: str | Path, reference: bool = False) -> ModelInfo:
    """Load config, tokenizer and template as the engines do (no weights) from `files`, a
    local directory with the checkpoint's non-weight files (engines/model_path.py's
    `inspect_checkpoint` fetches them first). `reference`: as model.chat runs the checkpoint
    (the card's RoPE at every length, no plan for vLLM)."""
    files = Path(files)
    config = _load_config(files, model.trust_remote_code)
    try:
        tokenizer = load_tokenizer(files, trust_remote_code=model.trust_remote_code)
    except TokenizerError as e:
        raise ModelCheckError("model.trust_remote_code", str(e)) from e
    try:
        template = resolve_template(files, model.template)
    except TemplateError as e:
        raise ModelCheckError("model.template", str(e)) from e
    tok = tokenizer.tokenizer
    _single_token_ids(tok, [IMG_START, IMG_END, IMG_CONTEXT], "model.path", "not an InternVL tokenizer:")
    why = f"the separator of template {template.name!r} (the checkpoint uses another template?) is"
    stop = _single_token_ids(tok, [template.stop], "model.template", why)
    extra = _single_token_ids(tok, model.extra_stop_tokens, "model.extra_stop_tokens", "is")
    llm_config = config.get("llm_config") or config.get("text_config") or {}
    try:
        rope = Rope.of(llm_config)
        if reference:
            limit = max(model.max_model_len, rope.max_position_embeddings)
            plan = RopePlan(limit, None, f"RoPE {rope.kind} as the card's own code runs it, at every length")
            return ModelInfo(files, config, tokenizer, template, stop + extra, rope, plan)
        longest = None
        if model.workload is not None:
            from internvl_batch.model.workload import longest_sequence

            longest = longest_sequence(lambda p: len(tokenizer.prompt_ids(p).ids), template, model.workload)
        plan = plan_rope(rope, model.max_model_len, model.rope_factors, longest)
    except RopeError as e:
        raise ModelCheckError(e.key, str(e)) from e
    return ModelInfo(files, config, tokenizer, template, stop + extra, rope, plan)
