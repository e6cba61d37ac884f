"""Per-family test helpers: the tiny twins, inputs, and model.chat's behaviour as an oracle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from internvl_batch.devtools.tiny_model import FAMILIES, TWINS, make_tiny_model
from internvl_batch.engines.base import EngineRequest
from internvl_batch.model.prompts import build_prompt
from tests.support import model_chat
from tests.support.engines import image_request
from tests.support.slow_tokenizers import SlowSentencePieceTokenizer, clean_up_tokenization

FAMILY_NAMES = sorted(FAMILIES)  # one engine each in the engine tests
TWIN_NAMES = sorted(TWINS)  # + variants with another checkpoint's template (prompt-id tests)


_TWINS: dict[str, Path] = {}


def twins(tmp_path_factory) -> dict[str, Path]:
    """Every family's twin and variant (seed 0), built once per test session."""
    if not _TWINS:
        root = tmp_path_factory.mktemp("twins")
        _TWINS.update({name: make_tiny_model(root / name, seed=0, family=name) for name in TWIN_NAMES})
    return _TWINS


@dataclass(frozen=True)
class Input:
    """One row: the card's question and what it carries (for the model.chat oracle too)."""

    id: str
    question: str  # as a user writes it (no Image-N/Frame labels)
    sizes_and_max: list[tuple[tuple[int, int], int]]
    media: str | None = None

    def request(self, template) -> EngineRequest:
        if not self.sizes_and_max:
            return EngineRequest(id=self.id, prompt=build_prompt(self.question, template=template))
        return image_request(self.id, self.sizes_and_max, self.question, seed=hash(self.id) % 97, media=self.media,
                             template=template)  # fmt: skip

    def card_question(self) -> str:
        """The question as the card would pass it to model.chat."""
        if "<image>" in self.question:
            return self.question
        return model_chat.card_question(self.question, len(self.sizes_and_max), video=self.media == "video")


# >= 10 inputs: single images of several sizes and max_num, multi-image, video frames, text
INPUTS = [
    Input("img-640x480-4", "Describe the image.", [((640, 480), 4)]),
    Input("img-300x900-6", "What is in the picture?", [((300, 900), 6)]),
    Input("img-1200x300-12", "Please describe the image in detail.", [((1200, 300), 12)]),
    Input("img-97x61-1", "Describe.", [((97, 61), 1)]),
    Input("img-800x800-2", "Is there a cat?", [((800, 800), 2)]),
    Input("multi-2", "Compare the images.", [((640, 480), 4), ((300, 500), 2)]),
    Input("multi-own-placeholders", "First <image> then <image>, which is bigger?", [((400, 300), 2), ((200, 200), 1)]),
    Input("video-8", "What happens in the video?", [((320, 240), 1)] * 8, media="video"),
    Input("video-4", "Describe this video.", [((640, 360), 1)] * 4, media="video"),
    Input("text-hello", "Hello, who are you?", []),
    Input("text-poem", "Write a short poem about the sea.", []),
    Input("text-cjk", "请用中文回答：天空是什么颜色？ 😀", []),
]


def checkpoint_conversation(model_dir: Path, name: str) -> model_chat.Conversation:
    """The template as model.chat gets it: the checkpoint's own conversation.py, run."""
    registered: dict[str, model_chat.Conversation] = {}

    class SeparatorStyle:
        MPT = "MPT"

    def conversation(**kw):
        assert kw.pop("sep_style") == "MPT"
        return model_chat.Conversation(**kw)

    source = (model_dir / "conversation.py").read_text(encoding="utf-8")
    namespace = {"Conversation": conversation, "SeparatorStyle": SeparatorStyle,
                 "register_conv_template": lambda c: registered.__setitem__(c.name, c)}  # fmt: skip
    exec(compile(source, str(model_dir / "conversation.py"), "exec"), namespace)
    return registered[name] if name in registered else model_chat.get_conv_template(name)


def render_chat_template(model_dir: Path, user_message: str) -> str:
    """The twin's own Jinja chat template (tokenizer_config.json), rendered by transformers."""
    from transformers.utils.chat_template_utils import render_jinja_template

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    specials = {k: config[k] for k in ("bos_token", "eos_token") if isinstance(config.get(k), str)}
    return render_jinja_template(
        [[{"role": "user", "content": user_message}]],
        chat_template=config["chat_template"],
        add_generation_prompt=True,
        **specials,
    )[0][0]


class Oracle:
    """model.chat's tokenization and decoding for one twin: the slow sentencepiece classes
    (as the cards load them, `use_fast=False`) where they differ from transformers'."""

    def __init__(self, family: str, model_dir: Path):
        from transformers import AutoTokenizer

        from internvl_batch.model.configs import register_config_classes

        register_config_classes()
        self.slow = SlowSentencePieceTokenizer(model_dir) if (model_dir / "tokenizer.model").exists() else None
        self.fast = None if family == "internlm2" else AutoTokenizer.from_pretrained(model_dir)
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        self.clean_up = bool(config.get("clean_up_tokenization_spaces"))

    def encode(self, text: str) -> list[int]:
        if self.slow is not None:  # InternLM2Tokenizer, LlamaTokenizer (Phi-3): the slow class
            return self.slow.encode(text)
        return list(self.fast(text)["input_ids"])

    def decode(self, ids) -> str:
        if self.slow is not None:
            return self.slow.decode(ids)
        # transformers 4.x's fast `_decode`: the tokenizers decode, then the config's clean-up
        text = self.fast.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return clean_up_tokenization(text) if self.clean_up else text


def twin_with_llm_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a twin whose llm_config has `changes` (e.g. a small
    original_max_position_embeddings, so that sequences beyond it are cheap on a CPU)."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["llm_config"].update(changes)
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return dst


# The phi3 twin with LongRoPE switching at 64 tokens (the card's rule, tested where it is cheap).
SHORT_ORIGINAL = 64
