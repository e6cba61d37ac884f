"""Load a checkpoint's tokenizer the one way both engines (and `validate`) use.

- InternLM2 checkpoints name `InternLM2Tokenizer`, remote code. Without it transformers
  refuses them ("requires you to execute the tokenizer file"); with it, a slow Python
  tokenizer runs in every engine process. Instead an equivalent fast tokenizer is built
  from their `tokenizer.model` (`spm_tokenizer.py`, proven id for id against
  sentencepiece) and cached on local disk, so vLLM can load it as `tokenizer=`.
- Every other family loads with transformers itself; the slow `LlamaTokenizer` (Phi-3,
  Yi) encodes prompts by the slow class's own algorithm (`llama_slow.py`): transformers'
  fast tokenizers differ from it on every prompt of these checkpoints.
- Answers are decoded the way the cards' slow tokenizers (`use_fast=False`) decode:
  sentencepiece itself for sentencepiece checkpoints, the tokenizer otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_batch.model.answers import Decode
from internvl_batch.model.llama_slow import SLOW_LLAMA_CLASSES, SlowLlamaEncode
from internvl_batch.model.prompt_ids import PromptIds, prompt_ids
from internvl_batch.model.prompts import Prompt
from internvl_batch.model.spm_tokenizer import CONVERTER_VERSION, clean_up_tokenization, read_spm_checkpoint

CONVERTED_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")
SLOW_SPM_CLASSES = (*CONVERTED_CLASSES, "LlamaTokenizer", "LlamaTokenizerFast")
# config.json goes along: vLLM reads a config from its `tokenizer=` directory too.
_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "config.json",
)


class TokenizerError(ValueError):
    """The tokenizer can't be loaded; the message names the config key to change."""


@dataclass(frozen=True)
class CheckpointTokenizer:
    tokenizer: Any  # a transformers tokenizer: what prompts are encoded with
    path: str  # what vLLM loads as `tokenizer=`
    decode: Decode  # model.chat's `batch_decode(ids, skip_special_tokens=True)`
    converted_from: str | None = None  # the remote-code class it stands in for
    slow_encode: Callable[[str], list[int]] | None = None  # the card's slow class, where fast differs

    def encode_prompt(self, text: str) -> list[int]:
        """`tokenizer(query)` as model.chat calls it: with the tokenizer's own <s>, if any."""
        if self.slow_encode is not None:
            return self.slow_encode(text)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prompt_ids(self, prompt: Prompt) -> PromptIds:
        """The prompt's ids as model.chat feeds them, and where its images are."""
        return prompt_ids(self.encode_prompt, self.tokenizer.convert_tokens_to_ids, prompt)


def tokenizer_config(model_dir: str | Path) -> dict[str, Any]:
    f = Path(model_dir) / "tokenizer_config.json"
    return json.loads(f.read_text()) if f.exists() else {}


def tokenizer_cache_dir() -> Path:
    default = Path.home() / ".cache" / "internvl-batch" / "tokenizers"
    return Path(os.environ.get("INTERNVL_BATCH_TOKENIZER_CACHE", default))


def converted_tokenizer_dir(model_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The fast stand-in for a sentencepiece remote-code tokenizer, built once per content."""
    from internvl_batch.model.spm_tokenizer import write_fast_tokenizer

    model_dir = Path(model_dir)
    digest = hashlib.sha256(f"converter-{CONVERTER_VERSION}".encode())
    for name in _TOKENIZER_FILES:
        if (model_dir / name).exists():
            digest.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
    target = Path(cache_dir or tokenizer_cache_dir()) / digest.hexdigest()[:20]
    if not (target / "tokenizer.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            write_fast_tokenizer(read_spm_checkpoint(model_dir), tmp)
            if (model_dir / "config.json").exists():
                shutil.copyfile(model_dir / "config.json", tmp / "config.json")
            tmp.rename(target)  # atomic; another process may have won the race
        except OSError:
            if not (target / "tokenizer.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _decoder(model_dir: Path, cls: str, tokenizer) -> Decode:
    if cls in SLOW_SPM_CLASSES and (model_dir / "tokenizer.model").exists():
        from internvl_batch.model.spm_tokenizer import SlowDecode

        return SlowDecode(read_spm_checkpoint(model_dir))

    # transformers 4.x (the cards' pin) applied clean_up_tokenization when the config asks
    # for it (Llama-3's does); transformers 5 ignores it for BPE tokenizers.
    clean_up = bool(tokenizer_config(model_dir).get("clean_up_tokenization_spaces"))

    def decode(ids: Sequence[int]) -> str:
        text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return clean_up_tokenization(text) if clean_up else text

    return decode


def load_tokenizer(
    model_dir: str | Path, *, trust_remote_code: bool = False, cache_dir: str | Path | None = None
) -> CheckpointTokenizer:
    from transformers import AutoTokenizer

    from internvl_batch.model.configs import register_config_classes

    register_config_classes()  # AutoTokenizer reads config.json too
    model_dir = Path(model_dir)
    cls = str(tokenizer_config(model_dir).get("tokenizer_class") or "")
    if cls in CONVERTED_CLASSES and (model_dir / "tokenizer.model").exists():
        try:
            path = converted_tokenizer_dir(model_dir, cache_dir)
        except ValueError as e:
            if not trust_remote_code:
                raise TokenizerError(
                    f"{cls} in {model_dir} could not be rebuilt without remote code ({e}); "
                    "set model.trust_remote_code: true to run its own tokenizer code"
                ) from e
        else:
            tok = AutoTokenizer.from_pretrained(path)
            return CheckpointTokenizer(tok, str(path), _decoder(model_dir, cls, tok), converted_from=cls)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, ImportError) as e:
        hint = "" if trust_remote_code else "; if it is remote code, set model.trust_remote_code: true"
        raise TokenizerError(
            f"tokenizer of {model_dir} ({cls or 'no tokenizer_class'}) does not load: {e}{hint}"
        ) from e
    slow = None
    if cls in SLOW_LLAMA_CLASSES and (model_dir / "tokenizer.model").exists():
        try:
            slow = SlowLlamaEncode.from_dir(model_dir)
        except ValueError as e:
            raise TokenizerError(f"{cls} of {model_dir} can't be reproduced: {e}") from e
    return CheckpointTokenizer(tok, str(model_dir), _decoder(model_dir, cls, tok), slow_encode=slow)
