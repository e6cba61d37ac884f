"""The longest sequence a job can build: the bound the RoPE plan (`rope.py`) is checked against.

A job's config bounds every row it can send (JobConfig.workload): the tile layouts its
preprocessing can make (one image at `preprocess.max_num` tiles plus the thumbnail, n
images sharing `multi_image_max_num`, a video's `num_segments` frames) and, per task, the
question, system message and `max_tokens`. The prompt's length is exact: the checkpoint's
template and tokenizer, as the engine builds it. A task that asks each row's own question
is counted with an empty one: its real rows are checked one by one by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from internvl_batch.model.prompts import build_prompt
from internvl_batch.model.templates import Template


@dataclass(frozen=True)
class TaskShape:
    name: str
    question: str | None  # None: each row's own question
    system_message: str | None
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    layouts: tuple[tuple[str, tuple[int, ...]], ...]  # (media, tiles per image or frame)
    tasks: tuple[TaskShape, ...]


def longest_sequence(prompt_len, template: Template, workload: Workload) -> tuple[int, str]:
    """(prompt + max_tokens, what it is) of the longest sequence; `prompt_len(prompt)` counts
    a prompt's ids as the engine builds them."""
    best = (0, "")
    for media, tiles in workload.layouts:
        for task in workload.tasks:
            kwargs = {"system_message": task.system_message} if task.system_message is not None else {}
            prompt = build_prompt(task.question or "", tiles, media=media, template=template, **kwargs)  # type: ignore[arg-type]
            n = prompt_len(prompt)
            if n + task.max_tokens > best[0]:
                what = f"{len(tiles)} {'frame' if media == 'video' else 'image'}(s) of {sum(tiles)} tiles"
                row_q = ", row questions counted empty" if task.question is None else ""
                best = (
                    n + task.max_tokens,
                    f"task {task.name!r}, {what}: prompt {n} + sampling.max_tokens {task.max_tokens}{row_q}",
                )
    return best
