"""Prompt text and token ids against the internvl2_5 template (InternVL's conversation.py)."""

import pytest

from internvl_batch.model.prompts import IMG_CONTEXT, SYSTEM_MESSAGE, build_prompt

HEAD = f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def card_chat_query(question: str, num_patches_list: list[int]) -> str:
    """The model card's `model.chat` query building, written out from its source."""
    if num_patches_list and "<image>" not in question:
        question = "<image>\n" + question
    query = HEAD + question + TAIL
    for n in num_patches_list:
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 256 * n + "</img>", 1)
    return query


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_text_only():
    p = build_prompt("Hello, who are you?")
    assert p.text == HEAD + "Hello, who are you?" + TAIL
    assert p.media == "none" and p.num_image_context_tokens == 0


@pytest.mark.parametrize("tiles", [1, 5, 13])
def test_single_image_matches_card_chat(tiles):
    p = build_prompt("Describe the image.", [tiles])
    assert p.text == card_chat_query("Describe the image.", [tiles])
    assert p.with_placeholders == HEAD + "<image>\nDescribe the image." + TAIL


def test_multi_image_labels():
    p = build_prompt("Compare them.", [7, 3])
    question = "Image-1: <image>\nImage-2: <image>\nCompare them."
    assert p.with_placeholders == HEAD + question + TAIL
    assert p.text == card_chat_query(question, [7, 3])
    assert p.num_image_context_tokens == 256 * 10


def test_video_frame_labels():
    p = build_prompt("What happens?", [1] * 4, media="video")
    question = "".join(f"Frame{i}: <image>\n" for i in range(1, 5)) + "What happens?"
    assert p.with_placeholders == HEAD + question + TAIL
    assert p.text == card_chat_query(question, [1] * 4)


def test_user_placeholders_are_kept_when_counts_match():
    q = "First <image> then <image>, which is bigger?"
    assert build_prompt(q, [2, 2]).with_placeholders == HEAD + q + TAIL
    with pytest.raises(ValueError, match="placeholders"):
        build_prompt(q, [2])


@pytest.mark.parametrize("bad", [[0], [-1, 2]])
def test_tile_counts_must_be_positive(bad):
    with pytest.raises(ValueError, match="tile"):
        build_prompt("q", bad)


@pytest.mark.parametrize(
    "question,tiles,media",
    [("Hi", [], None), ("Describe.", [5], None), ("Compare.", [2, 3], None), ("Go?", [1, 1, 1], "video")],
)
def test_token_ids_match_chat_template(tok, question, tiles, media):
    p = build_prompt(question, tiles, media=media)
    body = p.with_placeholders[len(HEAD) : -len(TAIL)]
    rendered = tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    for n in tiles:
        rendered = rendered.replace("<image>", "<img>" + IMG_CONTEXT * 256 * n + "</img>", 1)
    ids = tok.encode(p.text, add_special_tokens=False)
    assert ids == tok.encode(rendered, add_special_tokens=False)
    ctx = tok.convert_tokens_to_ids(IMG_CONTEXT)
    assert ids.count(ctx) == 256 * sum(tiles)
    assert ids.count(tok.convert_tokens_to_ids("<img>")) == len(tiles)
    assert ids[-3:] == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-3:]


def test_stop_strings_are_the_template_separator():
    assert build_prompt("q").stop[0] == "<|im_end|>"
