"""The rebuilt InternLM2 tokenizer is the slow remote-code one, id for id, and answers decode
like the cards' slow sentencepiece tokenizers (oracle: tests/support/slow_tokenizers.py,
on sentencepiece itself)."""

import json
import random
import shutil

import pytest
from tokenizers import Tokenizer

from internvl_batch.devtools.tiny.corpus import MULTILINGUAL, corpus
from internvl_batch.devtools.tiny.tokenizer_files import sentencepiece_model
from internvl_batch.model.spm_tokenizer import (
    SlowDecode,
    build_fast_tokenizer,
    read_spm_checkpoint,
    write_fast_tokenizer,
)
from tests.support.slow_tokenizers import SlowSentencePieceTokenizer

SPECIAL_TEXTS = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nHi<|im_end|>",
    "<s>literal bos</s> and <unk> in text",
    "text<|im_end|>text<|im_start|> spaced <|im_end|>  two spaces",
    "<quad>1,2</quad><ref>a cat</ref><box>[[1,2,3,4]]</box>",
    "<|action_start|><|plugin|>\n{}<|action_end|>",
]
WHITESPACE = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    " leading",
    "trailing ",
    "a  b",
    "a\n\n b",
    "x \t\n y",
    "\u00a0nbsp\u3000ideo",
]
CJK_EMOJI = [
    *MULTILINGUAL,
    "日本語のテキスト",
    "ｆｕｌｌｗｉｄｔｈ ｶﾅ",
    "e\u0301 combining",
    "😀😀😀",
    "👩‍👩‍👧 zwj",
    "🇫🇷 flag",
    "\U0001f9ea new",
]


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = corpus(seed, 300) + SPECIAL_TEXTS + WHITESPACE + CJK_EMOJI
    alphabet = "".join(sorted(set("".join(texts)))) + " \n\t😀中ÿ<>|"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(1500)]
    # special tokens glued into random text
    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<s>", "</s>"]
    texts += [rng.choice(texts) + rng.choice(specials) + rng.choice(texts) for _ in range(500)]
    return texts


@pytest.fixture(scope="module")
def internlm2(twin_dirs):
    d = twin_dirs["internlm2"]
    return d, build_fast_tokenizer(read_spm_checkpoint(d)), SlowSentencePieceTokenizer(d)


def test_twin_has_the_remote_code_layout(internlm2):
    d, _, _ = internlm2
    config = json.loads((d / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "InternLM2Tokenizer"
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_internlm2.InternLM2Tokenizer"
    assert (d / "tokenizer.model").exists() and not (d / "tokenizer.json").exists()


def test_rebuilt_tokenizer_encodes_like_the_slow_one_id_for_id(internlm2):
    _, fast, slow = internlm2
    texts = _corpus()
    mismatches = [t for t in texts if fast.encode(t).ids != slow.encode(t)]
    assert not mismatches, [(t, fast.encode(t).tokens, slow.encode(t)) for t in mismatches[:3]]
    assert len(texts) > 2000


def test_special_tokens_are_single_ids_and_bos_is_added(internlm2):
    d, fast, slow = internlm2
    ids = fast.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and fast.id_to_token(ids[1]) == "<|im_start|>" and fast.id_to_token(ids[-1]) == "<|im_end|>"


@pytest.mark.parametrize(
    "settings,exact",
    [
        (dict(add_dummy_prefix=False), True),
        (dict(remove_extra_whitespaces=True), True),
        (dict(split_digits=False, byte_fallback=False), True),
        # NFKC via a precompiled charsmap: converted only where the probe proves it exact
        (dict(normalization_rule_name="nmt_nfkc"), None),
    ],
)
def test_other_sentencepiece_settings_are_exact_or_refused(tmp_path, twin_dirs, settings, exact):
    import io

    import sentencepiece as spm

    from internvl_batch.devtools.tiny.corpus import multilingual_corpus

    buf = io.BytesIO()
    options = dict(model_type="bpe", vocab_size=600, byte_fallback=True, character_coverage=0.9995, num_threads=1,
                   minloglevel=2, add_dummy_prefix=True, remove_extra_whitespaces=False,
                   normalization_rule_name="identity")  # fmt: skip
    spm.SentencePieceTrainer.train(sentence_iterator=iter(multilingual_corpus(1)), model_writer=buf,
                                   **{**options, **settings})  # fmt: skip
    d = tmp_path / "ck"
    shutil.copytree(twin_dirs["internlm2"], d)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {i: t for i, t in config["added_tokens_decoder"].items() if int(i) < 3}
    config["additional_special_tokens"] = []
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "added_tokens.json").unlink()
    try:
        write_fast_tokenizer(read_spm_checkpoint(d), tmp_path / "fast")
    except ValueError as e:
        assert exact is not True, e
        assert "differently from sentencepiece" in str(e)
        return
    fast, slow = Tokenizer.from_file(str(tmp_path / "fast" / "tokenizer.json")), SlowSentencePieceTokenizer(d)
    texts = [t for t in _corpus(1) if "<" not in t]
    mismatches = [t for t in texts if fast.encode(t).ids != slow.encode(t)]
    assert not mismatches, [(t, fast.encode(t).tokens, slow.encode(t)) for t in mismatches[:3]]


def test_pieces_it_cannot_reproduce_are_refused(tmp_path, twin_dirs):
    from sentencepiece import sentencepiece_model_pb2 as pb

    d = tmp_path / "ck"
    shutil.copytree(twin_dirs["internlm2"], d)
    m = pb.ModelProto()
    m.ParseFromString(sentencepiece_model(0, 600, ["<|extra|>"]))
    (d / "tokenizer.model").write_bytes(m.SerializeToString())
    with pytest.raises(ValueError, match="user-defined|added token"):
        build_fast_tokenizer(read_spm_checkpoint(d))


@pytest.mark.parametrize("family", ["internlm2", "phi3"])
def test_answers_decode_like_the_slow_class(twin_dirs, family):
    d = twin_dirs[family]
    ours, slow = SlowDecode(read_spm_checkpoint(d)), SlowSentencePieceTokenizer(d)
    rng = random.Random(0)
    size = max(int(i) for i in json.loads((d / "tokenizer_config.json").read_text())["added_tokens_decoder"]) + 1
    seqs = [[rng.randrange(size) for _ in range(rng.randint(0, 24))] for _ in range(3000)]
    seqs += [slow_ids for t in _corpus()[:300] if (slow_ids := _encode(d, family, t))]
    mismatches = [s for s in seqs if ours(s) != slow.decode(s)]
    assert not mismatches, [(s, ours(s), slow.decode(s)) for s in mismatches[:3]]


def _encode(d, family, text):
    if family == "internlm2":
        return SlowSentencePieceTokenizer(d).encode(text)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d).encode(text)


def test_a_fast_byte_fallback_decoder_would_not_be_exact(internlm2):
    """Why answers are decoded by sentencepiece: a run of byte pieces with one invalid byte."""
    _, fast, slow = internlm2
    ids = [fast.token_to_id(p) for p in ("<0xE4>", "<0xBD>", "<0xA0>", "<0xFF>")]  # "你" + an invalid byte
    assert slow.decode(ids) == "你\ufffd"
    assert fast.decode(ids) != slow.decode(ids)
