"""The answer text, as `model.chat` makes it from the generated tokens.

`model.chat` does `tokenizer.batch_decode(ids, skip_special_tokens=True)[0]`, then
`response.split(template.sep.strip())[0].strip()`. The split matters where the separator
is not a special token (Phi-3's `<|end|>`): decoding keeps it. Both engines return this
text, so it never depends on an engine's incremental detokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from internvl_batch.model.templates import Template

Decode = Callable[[Sequence[int]], str]


def cut_at_stop_strings(text: str, stop: Sequence[str]) -> str:
    """Text before the first of the task's extra stop strings (`sampling.stop`), as vLLM cuts it."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def answer_text(decode: Decode, token_ids: Sequence[int], template: Template, stop: Sequence[str] = ()) -> str:
    text = cut_at_stop_strings(decode(token_ids), stop)
    return text.split(template.stop)[0].strip()
