"""Templates against InternVL's conversation.py (reproduced in tests/support/model_chat.py),
and which template a checkpoint gets."""

import json

import pytest

from internvl_batch.model.conversation_file import TemplateError, read_conversation_file, resolve_template
from internvl_batch.model.templates import TEMPLATES, Template, get_template
from tests.support import model_chat


@pytest.mark.parametrize("name", sorted(model_chat.CONV_TEMPLATES))
def test_every_internvl_template_is_built_in_as_conversation_py_defines_it(name):
    t = get_template(name)
    ref = model_chat.CONV_TEMPLATES[name]
    assert (t.system_template, t.system_message, t.roles, t.sep) == (
        ref["system_template"], ref["system_message"], ref["roles"], ref["sep"],
    )  # fmt: skip
    assert set(TEMPLATES) == set(model_chat.CONV_TEMPLATES)


@pytest.mark.parametrize("name", sorted(model_chat.CONV_TEMPLATES))
@pytest.mark.parametrize("system", [None, "", "Be brief."])
def test_render_is_get_prompt_of_one_user_turn(name, system):
    conv = model_chat.get_conv_template(name, system)
    conv.append_message(conv.roles[0], "Hi <image>")
    conv.append_message(conv.roles[1], None)
    assert get_template(name).render("Hi <image>", system) == conv.get_prompt()


def test_stop_is_what_model_chat_converts_to_the_eos_id():
    assert {n: t.stop for n, t in TEMPLATES.items()} == {
        n: model_chat.get_conv_template(n).sep.strip() for n in TEMPLATES
    }


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ValueError, match="internvl2_5"):
        get_template("vicuna_v1.1")


CONVERSATION_PY = """
import dataclasses
class SeparatorStyle: ...
register_conv_template(
    Conversation(
        name='phi3-chat',
        system_template='<|system|>\\n{system_message}',
        system_message='You are an AI assistant ' 'whose name is Phi-3.',
        roles=('<|user|>\\n', '<|assistant|>\\n'),
        sep_style=SeparatorStyle.MPT,
        sep='<|end|>',
    )
)
register_conv_template(Conversation(name='internvl_zh', system_template='', roles=('<human>', '<bot>'),
                                    sep_style=SeparatorStyle.INTERNVL_ZH, sep='</s>', sep2=' '))
register_conv_template(Conversation(name='computed', system_message=make_message(), roles=('a', 'b'),
                                    sep_style=SeparatorStyle.MPT, sep='x'))
register_conv_template(Conversation(name='concat', system_message='a' + 'b', roles=('u', 'v'),
                                    sep_style=SeparatorStyle.MPT))
"""


def test_a_checkpoints_conversation_py_is_read_as_data():
    found = read_conversation_file(CONVERSATION_PY)
    assert found["phi3-chat"] == Template(
        "phi3-chat", "<|system|>\n{system_message}", "You are an AI assistant whose name is Phi-3.",
        ("<|user|>\n", "<|assistant|>\n"), "<|end|>",
    )  # fmt: skip
    assert found["internvl_zh"] == "INTERNVL_ZH"  # another separator style: named, not guessed
    assert "computed" not in found  # not a literal: never evaluated
    assert found["concat"] == Template("concat", "{system_message}", "ab", ("u", "v"), "\n")


def _checkpoint(tmp_path, config: dict, conversation: str | None = None):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if conversation is not None:
        (tmp_path / "conversation.py").write_text(conversation)
    return tmp_path


def test_the_checkpoints_own_definition_wins(tmp_path):
    d = _checkpoint(tmp_path, {"model_type": "internvl_chat", "template": "phi3-chat"}, CONVERSATION_PY)
    assert resolve_template(d).system_message == "You are an AI assistant whose name is Phi-3."
    assert resolve_template(d, "internlm2-chat") == get_template("internlm2-chat")  # not in the file: built in


def test_config_names_the_template(tmp_path):
    d = _checkpoint(tmp_path, {"model_type": "internvl_chat", "template": "Hermes-2"})
    assert resolve_template(d) == get_template("Hermes-2")
    assert resolve_template(d, "internvl2_5") == get_template("internvl2_5")
    # transformers' own InternVL layout (InternVL3+) names none: internvl2_5
    (tmp_path / "hf").mkdir()
    hf = _checkpoint(tmp_path / "hf", {"model_type": "internvl"})
    assert resolve_template(hf) == get_template("internvl2_5")


@pytest.mark.parametrize(
    "config,conversation,override,match",
    [
        ({"model_type": "internvl_chat"}, None, None, "names no `template`; set model.template"),
        ({"model_type": "internvl_chat", "template": "vicuna_v1.1"}, None, None, "set model.template"),
        ({"model_type": "internvl_chat", "template": "internvl_zh"}, CONVERSATION_PY, None, "INTERNVL_ZH, not MPT"),
        ({"model_type": "internvl_chat", "template": "internvl2_5"}, None, "nope", "unknown conversation template"),
    ],
)
def test_unresolvable_templates_say_what_to_set(tmp_path, config, conversation, override, match):
    d = _checkpoint(tmp_path, config, conversation)
    with pytest.raises(TemplateError, match=match) as e:
        resolve_template(d, override)
    assert "model.template" in str(e.value)
