"""Loading each family's tokenizer the way the engines do, without remote code."""

import json
import shutil

import pytest

from internvl_batch.model.tokenizer import TokenizerError, load_tokenizer
from tests.support.families import FAMILY_NAMES


def test_transformers_alone_refuses_the_internlm2_tokenizer(twin_dirs):
    """The problem: InternLM2Tokenizer is remote code (OpenGVLab/InternVL #116)."""
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="custom code|trust_remote_code|does not exist"):
        AutoTokenizer.from_pretrained(twin_dirs["internlm2"], trust_remote_code=False)


def test_internlm2_loads_without_remote_code_as_a_cached_fast_tokenizer(twin_dirs, tmp_path):
    d = twin_dirs["internlm2"]
    tok = load_tokenizer(d, cache_dir=tmp_path)
    assert tok.converted_from == "InternLM2Tokenizer"
    assert tok.tokenizer.is_fast and tok.path.startswith(str(tmp_path))
    built = (tmp_path / tok.path).stat().st_mtime_ns
    again = load_tokenizer(d, cache_dir=tmp_path)
    assert again.path == tok.path and (tmp_path / tok.path).stat().st_mtime_ns == built  # built once
    # vLLM loads the stand-in through transformers like any fast tokenizer
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tok.path).get_vocab() == tok.tokenizer.get_vocab()
    assert json.loads((d / "config.json").read_text()) == json.loads((tmp_path / tok.path / "config.json").read_text())


def test_another_tokenizer_gets_another_stand_in(twin_dirs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(twin_dirs["internlm2"], other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    a, b = load_tokenizer(twin_dirs["internlm2"], cache_dir=tmp_path), load_tokenizer(other, cache_dir=tmp_path)
    assert a.path != b.path
    assert a.encode_prompt("hi")[0] == 1 and b.encode_prompt("hi")[0] != 1


def test_a_tokenizer_that_cannot_be_rebuilt_names_trust_remote_code(twin_dirs, tmp_path):
    from internvl_batch.devtools.tiny.tokenizer_files import sentencepiece_model

    d = tmp_path / "ck"
    shutil.copytree(twin_dirs["internlm2"], d)
    (d / "tokenizer.model").write_bytes(sentencepiece_model(0, 600, ["<|not-an-added-token|>"]))
    with pytest.raises(TokenizerError, match="model.trust_remote_code"):
        load_tokenizer(d, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_loads_with_its_internvl_tokens(twin_dirs, family, tmp_path):
    tok = load_tokenizer(twin_dirs[family], cache_dir=tmp_path)
    vocab = tok.tokenizer.get_vocab()
    for t in ("<img>", "</img>", "<IMG_CONTEXT>"):
        assert tok.tokenizer.encode(t, add_special_tokens=False) == [vocab[t]]
    assert (tok.converted_from is not None) == (family == "internlm2")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table, as the slow Qwen2Tokenizer uses it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


@pytest.mark.parametrize("family", ["qwen2", "llama3", "qwen3"])
def test_byte_level_answers_decode_like_the_slow_qwen2_class(twin_dirs, family, tmp_path):
    """Its decode: special tokens dropped, the rest back to bytes, UTF-8 with errors='replace'.
    (Llama-3 checkpoints have only a fast tokenizer: the same, by its tokens' special flags.)"""
    import random

    tok = load_tokenizer(twin_dirs[family], cache_dir=tmp_path)
    special = {i for i, t in tok.tokenizer.added_tokens_decoder.items() if t.special}
    byte_of = _byte_decoder()
    clean_up = json.loads((twin_dirs[family] / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"]
    rng = random.Random(0)
    n = len(tok.tokenizer.get_vocab())
    spaced = ["It 's a cat . Is it ? yes , it is n't ! they 're , we 've", "a ' b . . c"]
    seqs = [tok.tokenizer.encode(t, add_special_tokens=False) for t in spaced]
    seqs += [[rng.randrange(n) for _ in range(rng.randint(0, 20))] for _ in range(500)]
    for ids in seqs:
        pieces = "".join(tok.tokenizer.convert_ids_to_tokens([i])[0] for i in ids if i not in special)
        expected = bytes(byte_of[c] for c in pieces).decode("utf-8", errors="replace")
        if clean_up:  # transformers 4.x's `_decode` then ran clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
                expected = expected.replace(a, b)
        assert tok.decode(ids) == expected, ids
