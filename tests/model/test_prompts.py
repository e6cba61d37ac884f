"""Prompt text and token ids against model.chat (tests/support/model_chat.py), every template."""

import pytest

from internvl_batch.model.prompts import IMG_CONTEXT, SYSTEM_MESSAGE, build_prompt
from internvl_batch.model.templates import TEMPLATES, get_template
from tests.support import model_chat

HEAD = f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
TEMPLATE_NAMES = sorted(TEMPLATES)

CASES = [  # (question as the user writes it, tiles per image, media)
    ("Hello, who are you?", [], None),
    ("Describe the image.", [1], None),
    ("Describe the image.", [13], None),
    ("Compare them.", [7, 3], None),
    ("Which is red?", [2, 1, 3], None),
    ("First <image> then <image>, which is bigger?", [2, 2], None),
    ("What happens?", [1] * 4, "video"),
]


def _card(question, tiles, media):
    if "<image>" in question:
        return question
    return model_chat.card_question(question, len(tiles), video=media == "video")


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("question,tiles,media", CASES)
def test_text_is_model_chat_query(name, question, tiles, media):
    p = build_prompt(question, tiles, media=media, template=name)
    assert p.text == model_chat.chat_query(model_chat.get_conv_template(name), _card(question, tiles, media), tiles)
    assert p.num_image_context_tokens == 256 * sum(tiles)
    assert p.media == (media or ("image" if tiles else "none"))


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_system_message_none_keeps_the_templates_and_empty_is_empty(name):
    conv = model_chat.get_conv_template(name, "")
    assert build_prompt("q", system_message="", template=name).text == model_chat.chat_query(conv, "q", [])
    assert build_prompt("q", template=name).text == build_prompt("q", template=get_template(name)).text
    assert get_template(name).system_message in build_prompt("q", template=name).text


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_stop_is_the_template_separator_only(name):
    assert build_prompt("q", template=name).stop == (model_chat.get_conv_template(name).sep.strip(),)


def test_default_is_internvl2_5():
    p = build_prompt("Describe the image.", [5])
    assert p.with_placeholders == HEAD + "<image>\nDescribe the image." + TAIL
    assert p.template.name == "internvl2_5" and p.stop == ("<|im_end|>",)


def test_user_placeholders_must_match_the_image_count():
    with pytest.raises(ValueError, match="placeholders"):
        build_prompt("First <image> then <image>", [2])


@pytest.mark.parametrize("bad", [[0], [-1, 2]])
def test_tile_counts_must_be_positive(bad):
    with pytest.raises(ValueError, match="tile"):
        build_prompt("q", bad)


@pytest.mark.parametrize("text", ["<img>", "a </img> b", "<IMG_CONTEXT>"])
def test_image_tokens_in_the_text_are_refused(text):
    # they would shift where the engine puts the image features
    with pytest.raises(ValueError, match="image tokens"):
        build_prompt(text, [1])
    with pytest.raises(ValueError, match="image tokens"):
        build_prompt("q", system_message=text)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("question,tiles,media", CASES)
def test_token_ids_match_chat_template(tok, question, tiles, media):
    p = build_prompt(question, tiles, media=media)
    body = p.with_placeholders[len(HEAD) : -len(TAIL)]
    rendered = tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    for n in tiles:
        rendered = rendered.replace("<image>", "<img>" + IMG_CONTEXT * 256 * n + "</img>", 1)
    ids = tok.encode(p.text, add_special_tokens=False)
    assert ids == tok.encode(rendered, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(IMG_CONTEXT)) == 256 * sum(tiles)
    assert ids.count(tok.convert_tokens_to_ids("<img>")) == len(tiles)
