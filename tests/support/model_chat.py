"""What OpenGVLab's own code does, reproduced as an oracle for the tests.

- `Conversation`: InternVL's `conversation.py` class, MPT separator style (the only one
  InternVL 1.5+ templates use), with the definitions as its current file registers them;
- `chat_query` / `chat_answer`: the query `InternVLChatModel.chat` builds (the card's
  path) and how it turns generated tokens into the answer.

Written from the upstream sources on purpose without importing anything of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Conversation:
    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = "\n"
    messages: list[list] = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:  # SeparatorStyle.MPT
        ret = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            ret += role + message + self.sep if message else role
        return ret


_INTERNVL2 = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
CONV_TEMPLATES = {
    "Hermes-2": dict(
        system_template="<|im_start|>system\n{system_message}",
        system_message=_INTERNVL2,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>",
    ),
    "internlm2-chat": dict(
        system_template="<|im_start|>system\n{system_message}",
        system_message=_INTERNVL2,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>",
    ),
    "phi3-chat": dict(
        system_template="<|system|>\n{system_message}",
        system_message=_INTERNVL2,
        roles=("<|user|>\n", "<|assistant|>\n"),
        sep="<|end|>",
    ),
    "internvl2_5": dict(
        system_template="<|im_start|>system\n{system_message}",
        system_message="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>\n",
    ),
}


def get_conv_template(name: str, system_message: str | None = None) -> Conversation:
    conv = Conversation(name=name, **CONV_TEMPLATES[name])
    if system_message is not None:
        conv.system_message = system_message
    return conv


def card_question(question: str, n_images: int, video: bool = False) -> str:
    """The question as the cards write it for several images / video frames."""
    if video:
        return "".join(f"Frame{i + 1}: <image>\n" for i in range(n_images)) + question
    if n_images > 1:
        return "".join(f"Image-{i + 1}: <image>\n" for i in range(n_images)) + question
    return question


def chat_query(conv: Conversation, question: str, num_patches_list: list[int]) -> str:
    """`InternVLChatModel.chat`'s query (history=None), before tokenization."""
    if num_patches_list and "<image>" not in question:
        question = "<image>\n" + question
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    query = conv.get_prompt()
    for n in num_patches_list:
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 256 * n + "</img>", 1)
    return query


def chat_answer(decoded: str, sep: str) -> str:
    """`batch_decode(..., skip_special_tokens=True)[0]` -> `split(sep.strip())[0].strip()`."""
    return decoded.split(sep.strip())[0].strip()
