"""Prompt token ids per LLM family: exactly model.chat's, and what vLLM is handed."""

import pytest

from internvl_batch.model.check import inspect_model
from internvl_batch.model.prompts import IMAGE_PLACEHOLDER, IMG_CONTEXT, build_prompt
from tests.support import model_chat
from tests.support.engines import tiny_model_config
from tests.support.families import FAMILY_NAMES, Oracle, checkpoint_conversation, render_chat_template

CASES = [
    ("Hello, who are you?", [], None),
    ("Describe the image.", [3], None),
    ("  leading spaces, a\ttab and\n\ntwo newlines ", [1], None),
    ("Compare them.", [2, 1], None),
    ("First <image> then <image>, which is bigger?", [1, 2], None),
    ("请描述这张图片。😀", [1, 1, 1], "video"),
]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def twin(request, twin_dirs):
    d = twin_dirs[request.param]
    return request.param, d, inspect_model(tiny_model_config(d), d), Oracle(request.param, d)


@pytest.mark.parametrize("question,tiles,media", CASES)
def test_ids_are_model_chat_ids(twin, question, tiles, media):
    name, d, info, oracle = twin
    p = build_prompt(question, tiles, media=media, template=info.template)
    card_q = question if "<image>" in question else model_chat.card_question(question, len(tiles), media == "video")
    query = model_chat.chat_query(checkpoint_conversation(d, info.template.name), card_q, tiles)
    ids = info.tokenizer.prompt_ids(p).ids
    assert ids == oracle.encode(query)
    assert ids == info.tokenizer.encode_prompt(p.text)


@pytest.mark.parametrize("question,tiles,media", CASES)
def test_ids_are_the_twins_chat_template_rendered_by_transformers(twin, question, tiles, media):
    name, d, info, oracle = twin
    p = build_prompt(question, tiles, media=media, template=info.template)
    body = p.with_placeholders.split(info.template.roles[0], 1)[1].rsplit(info.template.sep, 1)[0]
    text = render_chat_template(d, body)
    for n in tiles:
        text = text.replace(IMAGE_PLACEHOLDER, "<img>" + IMG_CONTEXT * 256 * n + "</img>", 1)
    assert info.tokenizer.prompt_ids(p).ids == oracle.encode(text)


def test_vllm_gets_each_image_as_the_placeholder_ids_it_expands(twin):
    name, d, info, oracle = twin
    p = build_prompt("Compare them.", [2, 1], template=info.template)
    pids = info.tokenizer.prompt_ids(p)
    placeholder = [-1, -2]  # whatever vLLM's processor searches for
    handed = pids.with_placeholders(placeholder)
    assert handed.count(-1) == 2
    assert len(handed) == len(pids.ids) - sum(1 + 256 * n + 1 for n in (2, 1)) + 2 * len(placeholder)
    # expanding the placeholders back, as vLLM does, gives model.chat's ids
    ctx, start, end = (info.tokenizer.tokenizer.convert_tokens_to_ids(t) for t in (IMG_CONTEXT, "<img>", "</img>"))
    expanded, images = [], iter([2, 1])
    for i in range(len(handed)):
        if handed[i] == -1:
            expanded += [start] + [ctx] * 256 * next(images) + [end]
        elif handed[i] != -2:
            expanded.append(handed[i])
    assert expanded == pids.ids
