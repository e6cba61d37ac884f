"""Sentencepiece checkpoints (InternLM2, Phi-3, Yi): their slow tokenizers' behaviour, no remote code.

Why: InternVL2/2.5 checkpoints on InternLM2 name `InternLM2Tokenizer`, a sentencepiece
class shipped as remote code (transformers can't load it without `trust_remote_code`),
and the model cards load every tokenizer with `use_fast=False`. What `model.chat` feeds
the model and returns is therefore the *slow* classes' behaviour:

- encode: the text is split at added tokens (honouring their lstrip/rstrip), each other
  chunk is `sp.encode`d on its own (so each gets sentencepiece's dummy prefix), and `<s>`
  is prepended (`add_bos_token`). `build_fast_tokenizer` makes a `tokenizers` tokenizer
  that does exactly that (tests prove it id for id against sentencepiece), for vLLM;
- decode (`SlowDecode`): special tokens dropped, runs of the other pieces decoded by
  sentencepiece itself (a fast ByteFallback decoder turns a whole run of byte pieces into
  U+FFFD when one byte is invalid; sentencepiece keeps the valid ones), non-special
  added tokens joined with spaces, and InternLM2's `convert_tokens_to_string` always
  applies `clean_up_tokenization` (" ." -> "."), whatever the config says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPIECE_UNDERLINE = "▁"
# Part of the cache key of converted tokenizers: bump when the conversion changes.
CONVERTER_VERSION = 1
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "pad_token")
# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _USER_DEFINED = 1, 4


@dataclass(frozen=True)
class AddedTokenSpec:
    id: int
    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass(frozen=True)
class SpmCheckpoint:
    """A checkpoint's sentencepiece tokenizer files, read as the slow classes read them."""

    proto: bytes
    tokenizer_class: str
    added: tuple[AddedTokenSpec, ...]
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... -> content
    additional_special: tuple[str, ...] = ()
    add_bos_token: bool = True
    add_eos_token: bool = False
    legacy: bool = True
    clean_up_tokenization_spaces: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def always_cleans_up(self) -> bool:
        return self.tokenizer_class.startswith("InternLM2")


def _content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def read_spm_checkpoint(model_dir: str | Path) -> SpmCheckpoint:
    d = Path(model_dir)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    special_map_file = d / "special_tokens_map.json"
    special_map = json.loads(special_map_file.read_text()) if special_map_file.exists() else {}
    special = {a: c for a in _SPECIAL_ATTRS if (c := _content(cfg.get(a) or special_map.get(a)))}
    additional = cfg.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []
    added = {
        int(i): AddedTokenSpec(
            int(i),
            t["content"],
            bool(t.get("special", True)),
            bool(t.get("lstrip")),
            bool(t.get("rstrip")),
            bool(t.get("single_word")),
        )
        for i, t in (cfg.get("added_tokens_decoder") or {}).items()
    }
    added_file = d / "added_tokens.json"
    if added_file.exists():
        for content, i in json.loads(added_file.read_text()).items():
            added.setdefault(int(i), AddedTokenSpec(int(i), content, content in additional))
    return SpmCheckpoint(
        proto=(d / "tokenizer.model").read_bytes(),
        tokenizer_class=str(cfg.get("tokenizer_class") or ""),
        added=tuple(sorted(added.values(), key=lambda t: t.id)),
        special=special,
        additional_special=tuple(_content(t) for t in additional),
        add_bos_token=bool(cfg.get("add_bos_token", True)),
        add_eos_token=bool(cfg.get("add_eos_token", False)),
        legacy=cfg.get("legacy", True) is not False,
        clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)),
        config=cfg,
    )


def _model_proto(proto: bytes):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    return m


def _bpe_model(m):
    """sentencepiece BPE merges the adjacent pair whose merged piece scores highest; a
    `tokenizers` BPE merges the lowest-ranked pair: every split of a piece into two pieces
    becomes a merge, ranked by the piece's score."""
    from tokenizers import models

    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    merges = []
    for i, p in enumerate(m.pieces):
        if p.type != _NORMAL:
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in vocab and right in vocab:
                merges.append((-p.score, i, left, right))
    merges.sort()
    return models.BPE(
        vocab=vocab,
        merges=[(left, right) for *_, left, right in merges],
        unk_token=m.pieces[m.trainer_spec.unk_id].piece,
        byte_fallback=m.trainer_spec.byte_fallback,
        fuse_unk=True,
    )


def _normalizer(m):
    """sentencepiece's own normalisation, applied to each chunk between added tokens."""
    from tokenizers import Regex, normalizers

    spec = m.normalizer_spec
    if m.trainer_spec.treat_whitespace_as_suffix:
        raise ValueError("sentencepiece models with treat_whitespace_as_suffix are not supported")
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(r" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    return normalizers.Sequence(steps)


def build_fast_tokenizer(ck: SpmCheckpoint):
    """A `tokenizers.Tokenizer` that encodes exactly like the slow legacy sentencepiece class."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors

    if not ck.legacy:
        raise ValueError(
            f"{ck.tokenizer_class} with legacy=False is transformers' own class; load it with transformers"
        )
    m = _model_proto(ck.proto)
    if m.trainer_spec.model_type != 2:  # BPE
        raise ValueError(f"only sentencepiece BPE models are converted, not model_type={m.trainer_spec.model_type}")
    tok = Tokenizer(_bpe_model(m))
    tok.normalizer = _normalizer(m)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # sentencepiece matches its user-defined pieces inside a chunk, after the dummy prefix;
    # as added tokens they would be split out first, so only covered ones are exact.
    uncovered = {p.piece for p in m.pieces if p.type == _USER_DEFINED} - {t.content for t in ck.added}
    if uncovered:
        raise ValueError(f"user-defined sentencepiece pieces that are not added tokens: {sorted(uncovered)}")
    for spec in ck.added:
        token = AddedToken(
            spec.content,
            single_word=spec.single_word,
            lstrip=spec.lstrip,
            rstrip=spec.rstrip,
            normalized=False,
            special=spec.special,
        )
        (tok.add_special_tokens if spec.special else tok.add_tokens)([token])
        if (got := tok.token_to_id(spec.content)) != spec.id:
            raise ValueError(f"added token {spec.content!r} has id {spec.id} in the checkpoint but {got} here")
    # build_inputs_with_special_tokens: [<s>] + ids (+ second ids) + [</s>], as configured
    bos = [b] if ck.add_bos_token and (b := ck.special.get("bos_token")) else []
    eos = [e] if ck.add_eos_token and (e := ck.special.get("eos_token")) else []
    tok.post_processor = processors.TemplateProcessing(
        single=[*bos, "$A", *eos],
        pair=[*bos, "$A", "$B:1", *eos],
        special_tokens=[(t, tok.token_to_id(t)) for t in {*bos, *eos}],
    )
    return tok


# Checked on every conversion: text sentencepiece normalises or segments in unusual ways.
PROBE_TEXTS = (
    "Hello, world! It's a test: 3.14159, 2026-01-01 12:34.", "  two  leading, inner   and trailing  ",
    "tab\there\nnew line\n\n\nblank lines\r\nCRLF", " ", "\n", "\u00a0non-breaking\u3000ideographic\u2009thin",
    "你好，世界。这是一张图片。", "書生・万象 こんにちは、ｆｕｌｌｗｉｄｔｈ ｶﾀｶﾅ", "한국어 문장", "emoji 😀🐱🚗 👩‍👩‍👧 🇫🇷 ❤️",
    "combining e\u0301 vs \u00e9, ligature ﬁ, Ⅻ, ①, ㎏", "zero\u200bwidth\u200djoiner\ufeffbom", "▁ already ▁▁ escaped",
    "code:\n    def f(x):\n\treturn x  # comment", "ÿ\x00\x01 control \x7f chars", "<not a token> <s text>",
)  # fmt: skip


def verify_against_sentencepiece(tok, proto: bytes, texts=PROBE_TEXTS) -> None:
    """Raise unless `tok` splits every probe text (and each of its halves) as sentencepiece does."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    for text in texts:
        for chunk in (text, text[: len(text) // 2], text[len(text) // 2 :]):
            ours = tok.encode(chunk, add_special_tokens=False).ids
            if ours != sp.encode(chunk):
                raise ValueError(f"the rebuilt tokenizer splits {chunk!r} differently from sentencepiece")


def write_fast_tokenizer(ck: SpmCheckpoint, out_dir: str | Path) -> Path:
    """tokenizer.json + tokenizer_config.json that transformers (and so vLLM) load as a
    plain fast tokenizer, no remote code."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_fast_tokenizer(ck)
    verify_against_sentencepiece(tok, ck.proto)
    tok.save(str(out / "tokenizer.json"))
    keep = ("chat_template", "model_max_length", "padding_side")
    config = {k: ck.config[k] for k in keep if k in ck.config}
    config |= {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **ck.special,
        "additional_special_tokens": list(ck.additional_special),
        "clean_up_tokenization_spaces": ck.always_cleans_up or ck.clean_up_tokenization_spaces,
        "converted_from": ck.tokenizer_class,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: spaces before punctuation and English contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


class SlowDecode:
    """`tokenizer.decode(ids, skip_special_tokens=True)` of the slow sentencepiece classes."""

    def __init__(self, ck: SpmCheckpoint):
        import sentencepiece as spm

        m = _model_proto(ck.proto)
        if not ck.legacy:
            m.normalizer_spec.add_dummy_prefix = False  # the slow Llama class loads it so when legacy=False
        self._sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
        self._ck = ck
        by_content = {t.content: t.id for t in ck.added}
        special = set(ck.special.values()) | set(ck.additional_special)
        self._skip = {by_content[c] if c in by_content else self._sp.piece_to_id(c) for c in special}
        # added tokens decoded as themselves, each its own space-separated chunk
        self._added = {t.id: t.content for t in ck.added if t.content not in special}

    def _run(self, ids: list[int]) -> str:
        text = self._sp.decode(ids)
        if not self._ck.legacy and ids and self._sp.id_to_piece(ids[0]).startswith(SPIECE_UNDERLINE):
            text = text[1:]  # the slow Llama class strips the prefix space it added itself
        return clean_up_tokenization(text) if self._ck.always_cleans_up else text

    def __call__(self, ids) -> str:
        chunks: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in self._skip:
                continue
            if i in self._added:
                if run and (s := self._run(run)):
                    chunks.append(s)
                run = []
                chunks.append(self._added[i])
            else:
                run.append(i)
        if run:
            chunks.append(self._run(run))
        text = " ".join(chunks)
        return clean_up_tokenization(text) if self._ck.clean_up_tokenization_spaces else text
