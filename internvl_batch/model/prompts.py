"""The exact InternVL2.5 prompt, as the model card's `model.chat` builds it.

One small module on purpose: a prompt that differs by one newline from what the model
was trained on changes answers silently. The rules, from the card and InternVL's
`conversation.py` (template `internvl2_5`, separator style MPT):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

- one image: `<image>\\n` is prepended to the question (unless it already has one);
- several images: `Image-1: <image>\\nImage-2: <image>\\n...` then the question;
- video frames: `Frame1: <image>\\nFrame2: <image>\\n...` then the question;
- each `<image>` becomes `<img>` + `<IMG_CONTEXT>` x (256 x tiles of that image) + `</img>`;
- generation stops at `<|im_end|>` (the template separator), or `<|endoftext|>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"
NUM_IMAGE_TOKENS_PER_TILE = 256  # (448 / 14)^2 patches x downsample_ratio 0.5 squared
SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")

MediaKind = Literal["none", "image", "video"]


@dataclass(frozen=True)
class Prompt:
    """A prompt and what it expects to be fed with.

    `with_placeholders` keeps one `<image>` per image: the form an engine whose
    multimodal processor expands images itself (vLLM) takes. `text` is fully expanded:
    exactly what the model reads.
    """

    with_placeholders: str
    media: MediaKind
    tiles_per_image: tuple[int, ...]  # one entry per image, or per video frame
    tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE
    stop: tuple[str, ...] = STOP_STRINGS

    @property
    def text(self) -> str:
        text = self.with_placeholders
        for n in self.tiles_per_image:
            text = text.replace(IMAGE_PLACEHOLDER, image_tokens(n, self.tokens_per_tile), 1)
        return text

    @property
    def num_image_context_tokens(self) -> int:
        return self.tokens_per_tile * sum(self.tiles_per_image)


def image_tokens(num_tiles: int, tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE) -> str:
    return IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END


def _question_with_placeholders(question: str, n: int, media: MediaKind) -> str:
    if n == 0:
        return question
    if IMAGE_PLACEHOLDER in question:
        found = question.count(IMAGE_PLACEHOLDER)
        if found != n:
            raise ValueError(f"question has {found} {IMAGE_PLACEHOLDER} placeholders for {n} inputs")
        return question
    if media == "video":
        return "".join(f"Frame{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1)) + question
    if n == 1:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1)) + question


def build_prompt(
    question: str,
    tiles_per_image: Sequence[int] = (),
    *,
    media: MediaKind | None = None,
    system_message: str = SYSTEM_MESSAGE,
    tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE,
) -> Prompt:
    """Build the prompt for one row.

    `tiles_per_image` has one tile count per image (or per video frame, usually 1 each);
    `media` defaults to "image" when tile counts are given, else "none".
    """
    tiles = tuple(int(t) for t in tiles_per_image)
    if any(t < 1 for t in tiles):
        raise ValueError(f"every image needs at least one tile, got {tiles}")
    kind: MediaKind = media or ("image" if tiles else "none")
    if kind == "none" and tiles:
        raise ValueError("media='none' with tile counts")
    body = _question_with_placeholders(question, len(tiles), kind)
    if system_message and IMAGE_PLACEHOLDER in system_message:
        raise ValueError(f"system_message must not contain {IMAGE_PLACEHOLDER}")
    text = (
        f"<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    )
    return Prompt(text, kind, tiles, tokens_per_tile)
