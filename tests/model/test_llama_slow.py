"""Phi-3 prompt ids are the card's slow LlamaTokenizer's (legacy=False), for the template of
each checkpoint on Phi-3 (Mini-InternVL-Chat-4B-V1-5, InternVL2-4B). Oracle: the slow class
reproduced from transformers 4.37 in tests/support/slow_tokenizers.py."""

import json
import random

import pytest

from internvl_batch.model.prompts import build_prompt
from internvl_batch.model.spm_tokenizer import PROBE_TEXTS
from internvl_batch.model.tokenizer import load_tokenizer
from tests.support import model_chat
from tests.support.families import INPUTS, checkpoint_conversation
from tests.support.slow_tokenizers import SlowSentencePieceTokenizer

PHI3_TWINS = ["phi3", "phi3-internvl2"]


@pytest.fixture(scope="module", params=PHI3_TWINS)
def phi3(request, twin_dirs, tmp_path_factory):
    d = twin_dirs[request.param]
    tok = load_tokenizer(d, cache_dir=tmp_path_factory.mktemp("tok"))
    return request.param, d, tok, SlowSentencePieceTokenizer(d)


def _query(d, template_name: str, inp) -> tuple[str, object]:
    """model.chat's query (the checkpoint's conversation.py, run) and our prompt for one input."""
    tiles = [2] * len(inp.sizes_and_max)  # any tile counts: the text around the images matters
    conv = checkpoint_conversation(d, template_name)
    query = model_chat.chat_query(conv, inp.card_question(), tiles)
    media = inp.media or ("image" if tiles else None)
    return query, build_prompt(inp.question, tiles, media=media, template=load_template(d))


def load_template(d):
    from internvl_batch.model.conversation_file import resolve_template

    return resolve_template(d)


def test_every_input_gets_model_chats_ids_with_the_slow_class(phi3):
    name, d, tok, oracle = phi3
    template = load_template(d)
    for inp in INPUTS:
        query, prompt = _query(d, template.name, inp)
        assert prompt.text == query, inp.id
        assert tok.prompt_ids(prompt).ids == oracle.encode(query), inp.id


def test_the_slow_class_keeps_a_space_token_before_the_system_tag(phi3):
    """The bug of issue 23: `<s> ▁ <|system|>`, where the fast tokenizers give `<s> <|system|>`."""
    name, d, tok, oracle = phi3
    query, prompt = _query(d, load_template(d).name, INPUTS[0])
    ids = tok.prompt_ids(prompt).ids
    vocab = tok.tokenizer.get_vocab()
    assert ids[:3] == [vocab["<s>"], vocab["▁"], vocab["<|system|>"]]
    fast = list(tok.tokenizer(query)["input_ids"])  # transformers' own (what the job ran before)
    assert fast != ids and len(fast) == len(ids) - 1


def test_the_two_phi3_checkpoints_have_their_own_system_messages(twin_dirs):
    mini, internvl2 = (load_template(twin_dirs[n]) for n in PHI3_TWINS)
    assert mini.name == internvl2.name == "phi3-chat" and mini.sep == internvl2.sep == "<|end|>"
    assert mini.system_message.startswith("You are an AI assistant whose name is Phi-3")
    assert internvl2.system_message.startswith("你是由上海人工智能实验室")


def test_any_text_encodes_as_the_slow_class(phi3):
    """Probes, and random mixes of every added token with whitespace, text and literal '▁'."""
    name, d, tok, oracle = phi3
    added = [
        t["content"] for t in json.loads((d / "tokenizer_config.json").read_text())["added_tokens_decoder"].values()
    ]
    pool = [*PROBE_TEXTS, " ", "\n", "  ", "▁", "x", " y ", "\n z"]
    rng = random.Random(0)
    texts = list(PROBE_TEXTS)
    for _ in range(400):
        parts = [rng.choice(added) if rng.random() < 0.4 else rng.choice(pool)[: rng.randint(0, 12)] for _ in range(8)]
        texts.append("".join(parts[: rng.randint(1, 8)]))
    mismatches = [t for t in texts if tok.encode_prompt(t) != oracle.encode(t)]
    assert not mismatches, mismatches[:3]
    assert sum(list(tok.tokenizer(t)["input_ids"]) != oracle.encode(t) for t in texts) > 50  # the fast one differs
