"""InternVL's conversation templates, as its `conversation.py` defines them.

Why: `model.chat` builds every prompt from the template the checkpoint names in its
config.json (`template`), and stops and cuts answers at that template's separator. Every
template InternVL2+ checkpoints use has separator style MPT:

    system_template.format(system_message) + sep + roles[0] + question + sep + roles[1]

Only the strings differ. They are data here, one record per template; a checkpoint's own
`conversation.py` (which may carry another system message: InternVL 1.5 shipped English
ones) overrides them, read without running it (see `conversation_file.py`).

Multi-image (`Image-N: <image>`) and video (`FrameN: <image>`) labels are the model cards'
conventions; every InternVL card uses the same ones, so they are fields with one default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_TEMPLATE = "internvl2_5"


@dataclass(frozen=True)
class Template:
    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    image_label: str = "Image-{i}: "
    frame_label: str = "Frame{i}: "

    @property
    def stop(self) -> str:
        """The token `model.chat` stops at and splits answers on: `sep.strip()`."""
        return self.sep.strip()

    def render(self, question: str, system_message: str | None = None) -> str:
        """One user turn and the assistant's opening: `get_prompt()` of the MPT style."""
        message = self.system_message if system_message is None else system_message
        system = self.system_template.format(system_message=message)
        return system + self.sep + self.roles[0] + question + self.sep + self.roles[1]

    def with_system_message(self, system_message: str) -> Template:
        return replace(self, system_message=system_message)


_IM = ("<|im_start|>user\n", "<|im_start|>assistant\n")
# The InternVL2 system message (Hermes-2, internlm2-chat, phi3-chat); InternVL2.5 got its own.
_INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
_INTERNVL2_5_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        # InternVL2.5, 3, 3.5 (Qwen2.5, InternLM2.5, Qwen3 LLMs): the only one whose separator ends in "\n".
        Template("internvl2_5", "<|im_start|>system\n{system_message}", _INTERNVL2_5_SYSTEM, _IM, "<|im_end|>\n"),
        # InternVL2-1B/40B/76B (Qwen2, Yi, Llama-3 LLMs)
        Template("Hermes-2", "<|im_start|>system\n{system_message}", _INTERNVL2_SYSTEM, _IM, "<|im_end|>"),
        # InternVL2-2B/8B/26B, InternVL-Chat-V1-5, Mini-InternVL-Chat-2B-V1-5 (InternLM2 LLMs)
        Template("internlm2-chat", "<|im_start|>system\n{system_message}", _INTERNVL2_SYSTEM, _IM, "<|im_end|>"),
        # InternVL2-4B, Mini-InternVL-Chat-4B-V1-5 (Phi-3 LLMs)
        Template(
            "phi3-chat", "<|system|>\n{system_message}", _INTERNVL2_SYSTEM, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"
        ),
    )
}


class UnknownTemplateError(ValueError):
    pass


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UnknownTemplateError(
            f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)} "
            "(InternVL 1.0-1.2 templates such as internvl_zh are not supported)"
        ) from None
