"""What `verify` compares the job with: the checkpoint as its own card runs it.

- `RemoteChat`: the checkpoint's remote code (its auto_map's classes) and its
  `model.chat`, with the tokenizer loaded as the cards load it (`use_fast=False`); its
  `generate` is watched to read the prompt ids model.chat built, the tokens it chose and
  the scores it chose them from. Used when `model.trust_remote_code` is true and the
  checkpoint ships the code.
- `HFReference`: the project's HF reference engine as model.chat runs the checkpoint
  (engines/hf.py with `reference=True`): transformers' InternVL on the same weights, the
  checkpoint's own template and slow-tokenizer prompt ids, the card's RoPE at every length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from internvl_batch.engines.base import EngineRequest, EngineResult
from internvl_batch.model.check import ModelCheckError
from internvl_batch.model.tokenizer import load_tokenizer
from internvl_batch.status import Status

if TYPE_CHECKING:
    from internvl_batch.config import JobConfig, ModelConfig, SamplingConfig


@dataclass(frozen=True)
class Step:
    """The reference's scores at one generated position (what greedy chose from)."""

    best: tuple[int, float]
    second: tuple[int, float]
    job_logit: float | None = None  # the score of the token the job chose here
    job_rank: int | None = None  # 1 = the reference's own choice


class ScoreTrace:
    """A transformers LogitsProcessor that records each step's two best scores and the score
    and rank of the job's token there; it changes nothing."""

    def __init__(self, follow: Sequence[int] = ()):
        self.follow = list(follow)
        self.steps: list[Step] = []

    def __call__(self, input_ids, scores):
        import torch

        row = scores[0].float()
        top = torch.topk(row, 2)
        job_logit = job_rank = None
        i = len(self.steps)
        if i < len(self.follow) and 0 <= self.follow[i] < row.shape[0]:
            job_logit = float(row[self.follow[i]])
            job_rank = int((row > row[self.follow[i]]).sum()) + 1
        best, second = ((int(top.indices[k]), float(top.values[k])) for k in range(2))
        self.steps.append(Step(best, second, job_logit, job_rank))
        return scores


def token_name(tokenizer, i: int) -> str:
    """A token as text, with its vocabulary piece where that reads otherwise ('▁the', 'Ġthe')."""
    piece = str(tokenizer.convert_ids_to_tokens(int(i)))
    text = tokenizer.decode([int(i)])
    return repr(text) if text == piece else f"{text!r} [{piece}]"


class HFReference:
    def __init__(self, model: ModelConfig, sampling: SamplingConfig):
        from internvl_batch.engines.hf import HFEngine

        self.engine = HFEngine(model, sampling, reference=True)
        self.template = self.engine.template
        self.dtype = model.dtype

    def token_name(self, i: int) -> str:
        return token_name(self.engine.tokenizer, i)

    def trace(self, req: EngineRequest, follow=()) -> tuple[EngineResult, list[int], list[Step]]:
        steps = ScoreTrace(follow)
        result = self.engine.generate_one(req, logits_processor=steps)
        return result, self.engine.checkpoint.tokenizer.prompt_ids(req.prompt).ids, steps.steps

    def describe(self) -> str:
        ck = self.engine.checkpoint
        tok = type(ck.tokenizer.tokenizer).__name__ + (" (its slow class's ids)" if ck.tokenizer.slow_encode else "")
        return (
            f"the HF reference engine as model.chat runs the checkpoint: transformers' InternVL on its weights, "
            f"the checkpoint's template {self.template.name!r}, tokenizer {tok}, RoPE {ck.rope.kind} as the "
            f"card's code at every length, dtype {self.dtype}, greedy"
        )

    def shutdown(self) -> None:
        self.engine.shutdown()


def _question(req: EngineRequest) -> tuple[str, str]:
    """The user message and system message of a rendered single-turn prompt (Template.render)."""
    t, text = req.prompt.template, req.prompt.with_placeholders
    start = text.index(t.sep + t.roles[0])
    system = text[:start]
    head = t.system_template.split("{system_message}")
    system_message = system[len(head[0]) : len(system) - len(head[1]) or None]
    return text[start + len(t.sep + t.roles[0]) : len(text) - len(t.sep + t.roles[1])], system_message


class _SlowIds:
    """A tokenizer whose `__call__` gives the slow class's ids; all else is the tokenizer's."""

    def __init__(self, tokenizer, encode):
        self._tokenizer, self._encode = tokenizer, encode

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text: str, return_tensors=None, **kwargs):
        import torch

        ids = self._encode(text)
        if return_tensors != "pt":
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


class RemoteChat:
    """`model.chat` of the checkpoint's own code."""

    def __init__(self, model: ModelConfig, model_dir: Path):
        import torch
        from transformers import AutoTokenizer
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        from internvl_batch.model.conversation_file import resolve_template

        dtype = getattr(torch, model.dtype) if model.dtype != "auto" else "auto"
        # The checkpoint's own classes, named by its auto_map, not through AutoConfig/AutoModel:
        # those would find the package's registered `internvl_chat` config class (whose Phi-3
        # llm_config says "longrope" where the card's code expects "su") and register the
        # remote model for the whole process.
        auto_map = json.loads((Path(model_dir) / "config.json").read_text())["auto_map"]
        config_class = get_class_from_dynamic_module(auto_map["AutoConfig"], str(model_dir))
        model_class = get_class_from_dynamic_module(auto_map["AutoModel"], str(model_dir))
        config = config_class.from_pretrained(model_dir)
        self.model = model_class.from_pretrained(model_dir, config=config, torch_dtype=dtype).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True, use_fast=False)
        self.tokenizer_note = f"{type(self.tokenizer).__name__}, use_fast=False"
        slow = load_tokenizer(model_dir, trust_remote_code=True).slow_encode
        if slow is not None and getattr(self.tokenizer, "is_fast", True):
            # transformers 5 has no slow LlamaTokenizer: `use_fast=False` still loads the fast
            # one, whose ids the card's pin never made; model.chat gets the slow class's ids.
            self.tokenizer = _SlowIds(self.tokenizer, slow)
            self.tokenizer_note += " (no slow class in this transformers: the slow class's ids, llama_slow.py)"
        self.template = resolve_template(model_dir)  # what model.chat's conversation.py defines
        self.dtype = model.dtype

    def token_name(self, i: int) -> str:
        return token_name(self.tokenizer, i)

    def trace(self, req: EngineRequest, follow=()) -> tuple[EngineResult, list[int], list[Step]]:
        import torch
        from transformers import LogitsProcessorList

        from internvl_batch.media.normalize import normalize_tiles

        question, system_message = _question(req)
        steps, seen = ScoreTrace(follow), {}
        inner = self.model.generate

        def watched(*args, **kwargs):  # model.chat -> self.generate(pixel_values, input_ids, ...)
            seen["prompt"] = kwargs["input_ids"][0].tolist()
            seen["out"] = inner(*args, **kwargs)
            return seen["out"]

        pixel_values = None
        if req.num_tiles:
            pixel_values = normalize_tiles(torch.from_numpy(req.tiles)).to(self.model.dtype).to(self.device)
        sampling = req.sampling
        generation = dict(num_beams=1, do_sample=False, max_new_tokens=sampling.max_tokens,
                          logits_processor=LogitsProcessorList([steps]))  # fmt: skip
        if sampling.min_tokens:
            generation["min_new_tokens"] = sampling.min_tokens
        if sampling.repetition_penalty != 1.0:
            generation["repetition_penalty"] = sampling.repetition_penalty
        own_system = getattr(self.model, "system_message", None)
        self.model.generate = watched
        try:
            if own_system is not None:
                self.model.system_message = system_message
            with torch.inference_mode():
                text = self.model.chat(self.tokenizer, pixel_values, question, generation,
                                       num_patches_list=list(req.prompt.tiles_per_image) or None)  # fmt: skip
        except Exception as e:  # the checkpoint's own code: report, whatever it raised
            return EngineResult.failed(req.id, Status.ENGINE_ERROR, f"model.chat: {type(e).__name__}: {e}"), [], []
        finally:
            del self.model.generate
            if own_system is not None:
                self.model.system_message = own_system
        tokens = tuple(int(t) for t in seen["out"][0].tolist())
        result = EngineResult(req.id, Status.OK, text=text, num_prompt_tokens=len(seen["prompt"]),
                              num_output_tokens=len(tokens), token_ids=tokens)  # fmt: skip
        return result, seen["prompt"], steps.steps

    def describe(self) -> str:
        return (
            f"model.chat of the checkpoint's own code ({type(self.model).__name__}, trust_remote_code), its "
            f"tokenizer as the cards load it ({self.tokenizer_note}), template "
            f"{self.template.name!r}, dtype {self.dtype}, greedy"
        )

    def shutdown(self) -> None:
        self.model = None


def has_remote_chat(model_dir: Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {"AutoConfig", "AutoModel"} <= set(config.get("auto_map") or {})


def load_reference(cfg: JobConfig):
    """model.chat of the checkpoint's code when allowed and shipped, else the HF reference."""
    if cfg.model.trust_remote_code:
        from internvl_batch.engines.model_path import resolve_model_path

        model_dir = Path(resolve_model_path(cfg.model.path, cfg.model.download_dir, cfg.model.storage_options))
        if not model_dir.is_dir():
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
            model_dir = Path(snapshot_download(str(model_dir), allow_patterns=patterns))
        if has_remote_chat(model_dir):
            try:
                return RemoteChat(cfg.model, model_dir)
            except Exception as e:  # the checkpoint's own code, written for its transformers pin
                import transformers

                raise ModelCheckError(
                    "model.trust_remote_code",
                    f"the checkpoint's remote code does not load under transformers {transformers.__version__}: "
                    f"{type(e).__name__}: {e}; set model.trust_remote_code: false to compare with the HF "
                    "reference engine instead",
                ) from e
    return HFReference(cfg.model, cfg.task[0].sampling)
