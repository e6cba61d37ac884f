"""Answers are what model.chat's post-processing makes of the tokens, per family."""

import random

import pytest

from internvl_batch.model.answers import answer_text, cut_at_stop_strings
from internvl_batch.model.check import inspect_model
from internvl_batch.model.templates import get_template
from tests.support import model_chat
from tests.support.engines import tiny_model_config
from tests.support.families import FAMILY_NAMES, Oracle


def test_split_on_the_separator_then_strip():
    t = get_template("phi3-chat")
    assert answer_text(lambda ids: "  A cat.<|end|> trailing", [], t) == "A cat."
    assert answer_text(lambda ids: "\n two lines \n", [], get_template("internvl2_5")) == "two lines"


def test_task_stop_strings_cut_first():
    t = get_template("internvl2_5")
    assert cut_at_stop_strings("a. b\n\nc", ["\n\n", "b"]) == "a. "
    assert answer_text(lambda ids: " one.\n\ntwo", [], t, stop=["\n\n"]) == "one."
    assert cut_at_stop_strings("abc", []) == cut_at_stop_strings("abc", [""]) == "abc"


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def twin(request, twin_dirs):
    d = twin_dirs[request.param]
    return inspect_model(tiny_model_config(d), d), Oracle(request.param, d)


def test_generated_tokens_become_model_chats_answer(twin):
    """Sequences as generation ends them (with the stop token, or cut by max_tokens),
    with special and non-special added tokens inside: our answer == model.chat's."""
    info, oracle = twin
    vocab = info.tokenizer.tokenizer.get_vocab()
    stop = vocab[info.template.stop]
    specials = [i for t, i in vocab.items() if t.startswith("<") and t.endswith(">") and len(t) > 3]
    rng = random.Random(0)
    words = info.tokenizer.tokenizer.encode(" It 's a cat . Is it ? yes , 天空 😀 isn't it!", add_special_tokens=False)
    for n in range(400):
        ids = [
            rng.choice(words) if rng.random() < 0.5 else rng.randrange(len(vocab)) for _ in range(rng.randint(0, 16))
        ]
        if n % 3 == 0:
            ids.insert(rng.randint(0, len(ids)), rng.choice(specials))
        if n % 2 == 0:
            ids.append(stop)
        expected = model_chat.chat_answer(oracle.decode(ids), info.template.sep)
        assert answer_text(info.tokenizer.decode, ids, info.template) == expected, ids
