"""The exact InternVL prompt, as the model card's `model.chat` builds it, for any template.

One small module on purpose: a prompt that differs by one newline from what the model
was trained on changes answers silently. The rules, from the cards and InternVL's
`modeling_internvl_chat.py` / `conversation.py` (see `templates.py` for the templates):

- one image: `<image>\\n` is prepended to the question (unless it already has one);
- several images: `Image-1: <image>\\nImage-2: <image>\\n...` then the question;
- video frames: `Frame1: <image>\\nFrame2: <image>\\n...` then the question;
- the question goes into the template (`Template.render`), e.g. for internvl2_5:
  `<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`;
- each `<image>` becomes `<img>` + `<IMG_CONTEXT>` x (256 x tiles of that image) + `</img>`;
- generation stops at the template separator only (`sep.strip()`); the answer is the
  decoded text split on it and stripped (`answers.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from internvl_batch.model.templates import DEFAULT_TEMPLATE, Template, get_template

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"
NUM_IMAGE_TOKENS_PER_TILE = 256  # (448 / 14)^2 patches x downsample_ratio 0.5 squared
SYSTEM_MESSAGE = get_template(DEFAULT_TEMPLATE).system_message

MediaKind = Literal["none", "image", "video"]


@dataclass(frozen=True)
class Prompt:
    """A prompt and what it expects to be fed with.

    `with_placeholders` keeps one `<image>` per image: the form an engine whose
    multimodal processor expands images itself (vLLM) takes. `text` is fully expanded:
    exactly what `model.chat` tokenizes.
    """

    with_placeholders: str
    media: MediaKind
    tiles_per_image: tuple[int, ...]  # one entry per image, or per video frame
    tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE
    template: Template = get_template(DEFAULT_TEMPLATE)

    @property
    def text(self) -> str:
        text = self.with_placeholders
        for n in self.tiles_per_image:
            text = text.replace(IMAGE_PLACEHOLDER, image_tokens(n, self.tokens_per_tile), 1)
        return text

    @property
    def stop(self) -> tuple[str, ...]:
        """The stop tokens `model.chat` uses: the template separator, nothing else."""
        return (self.template.stop,)

    @property
    def num_image_context_tokens(self) -> int:
        return self.tokens_per_tile * sum(self.tiles_per_image)


def image_tokens(num_tiles: int, tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE) -> str:
    return IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END


def _question_with_placeholders(question: str, n: int, media: MediaKind, template: Template) -> str:
    if n == 0:
        return question
    if IMAGE_PLACEHOLDER in question:
        found = question.count(IMAGE_PLACEHOLDER)
        if found != n:
            raise ValueError(f"question has {found} {IMAGE_PLACEHOLDER} placeholders for {n} inputs")
        return question
    if media == "video":
        label = template.frame_label
    elif n == 1:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    else:
        label = template.image_label
    return "".join(f"{label.format(i=i)}{IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1)) + question


def build_prompt(
    question: str,
    tiles_per_image: Sequence[int] = (),
    *,
    media: MediaKind | None = None,
    system_message: str | None = None,
    tokens_per_tile: int = NUM_IMAGE_TOKENS_PER_TILE,
    template: Template | str = DEFAULT_TEMPLATE,
) -> Prompt:
    """Build the prompt for one row.

    `tiles_per_image` has one tile count per image (or per video frame, usually 1 each);
    `media` defaults to "image" when tile counts are given, else "none";
    `system_message` None keeps the template's own; `template` is a Template or its name.
    """
    tmpl = get_template(template) if isinstance(template, str) else template
    tiles = tuple(int(t) for t in tiles_per_image)
    if any(t < 1 for t in tiles):
        raise ValueError(f"every image needs at least one tile, got {tiles}")
    kind: MediaKind = media or ("image" if tiles else "none")
    if kind == "none" and tiles:
        raise ValueError("media='none' with tile counts")
    body = _question_with_placeholders(question, len(tiles), kind, tmpl)
    if system_message and IMAGE_PLACEHOLDER in system_message:
        raise ValueError(f"system_message must not contain {IMAGE_PLACEHOLDER}")
    for text in (question, system_message or ""):
        if any(t in text for t in (IMG_START, IMG_END, IMG_CONTEXT)):
            raise ValueError(f"text must not contain the image tokens {IMG_START} {IMG_CONTEXT} {IMG_END}")
    return Prompt(tmpl.render(body, system_message), kind, tiles, tokens_per_tile, tmpl)
