"""The prompt's token ids, exactly as `model.chat` tokenizes its query, and the form vLLM takes.

Why token ids: vLLM expands each `<image>` by finding the placeholder's token ids in the
tokenized prompt. With sentencepiece tokenizers (InternLM2, Phi-3) `<image>` is several
pieces whose ids depend on what precedes them, so the search fails and vLLM falls back to
decoding the whole prompt, replacing text and re-encoding it, which changes other ids
(dummy prefixes, stripped newlines). So the engine tokenizes the prompt itself, like
model.chat, and hands vLLM ids in which each image is exactly the placeholder ids vLLM
searches for; vLLM's replacement then restores model.chat's ids.

Cheap on purpose: `<img>` and `</img>` are added tokens, so the text between them never
changes how the rest is split; the text is encoded with each image as `<img></img>` and
the `<IMG_CONTEXT>` ids are inserted, never tokenizing thousands of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from internvl_batch.model.prompts import IMAGE_PLACEHOLDER, IMG_CONTEXT, IMG_END, IMG_START, Prompt


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]  # what the model reads (model.chat's `tokenizer(query).input_ids`)
    spans: list[tuple[int, int]]  # each image's <img> ... </img>, [start, end)

    def with_placeholders(self, placeholder: Sequence[int]) -> list[int]:
        """`ids` with each image span replaced by `placeholder` (vLLM re-expands it)."""
        out: list[int] = []
        prev = 0
        for start, end in self.spans:
            out += self.ids[prev:start] + list(placeholder)
            prev = end
        return out + self.ids[prev:]


def prompt_ids(encode, token_id, prompt: Prompt) -> PromptIds:
    """`encode(text)` is model.chat's tokenization (with <s> where the tokenizer adds one);
    `token_id(token)` the id of a token."""
    img_start, img_end, ctx = token_id(IMG_START), token_id(IMG_END), token_id(IMG_CONTEXT)
    short = encode(prompt.with_placeholders.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_END))
    pairs = [i for i in range(len(short) - 1) if short[i] == img_start and short[i + 1] == img_end]
    if len(pairs) != len(prompt.tiles_per_image) or short.count(img_start) != len(pairs):
        raise ValueError(f"the prompt has {len(pairs)} image slots for {len(prompt.tiles_per_image)} images")
    ids: list[int] = []
    spans = []
    prev = 0
    for pos, tiles in zip(pairs, prompt.tiles_per_image):
        ids += short[prev:pos]
        start = len(ids)
        ids += [img_start] + [ctx] * (prompt.tokens_per_tile * tiles) + [img_end]
        spans.append((start, len(ids)))
        prev = pos + 2
    return PromptIds(ids + short[prev:], spans)
