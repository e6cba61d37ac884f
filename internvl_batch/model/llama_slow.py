"""`tokenizer(text).input_ids` of the slow `LlamaTokenizer` the cards load (Phi-3, Yi).

Why: InternVL2-4B's card loads its tokenizer with `use_fast=False` and InternVL trained
with the slow class, so what the model reads is the *slow* class's ids. With
`legacy: false` (Phi-3's tokenizer_config sets it) that class prepends `'▁'` to the whole
text and keeps it as a token of its own when the text starts with an added token that is
not one of its `all_special_tokens`: `<s> ▁ <|system|> ...`. transformers' fast tokenizers
(4.x's and 5.x's) give `<s> <|system|> ...`, one token fewer, on every prompt, and the
answers change. So the prompt ids of these checkpoints are made here, by the slow class's
algorithm (transformers 4.37-4.40, the cards' pin) on top of sentencepiece itself:

- `LlamaTokenizer.tokenize`: legacy=False: `'▁' + text` (its own `'▁'` become spaces), and
  the leading `'▁'` dropped again only when an `all_special_tokens` token follows it;
- `PreTrainedTokenizer.tokenize`: split at every added token (leftmost, longest), each
  added token's `rstrip`/`lstrip` eating the whitespace beside it;
- `_tokenize`: legacy=False loads sentencepiece without its dummy prefix, and a chunk that
  starts with a space or `'▁'` is encoded behind `unk_token` so that its `'▁'` survives;
  legacy=True: plain `sp.encode` (dummy prefix per chunk);
- `<s>` in front (`add_bos_token`), `</s>` behind (`add_eos_token`).
"""

from __future__ import annotations

import re
from pathlib import Path

from internvl_batch.model.spm_tokenizer import SPIECE_UNDERLINE, SpmCheckpoint, _model_proto, read_spm_checkpoint

SLOW_LLAMA_CLASSES = ("LlamaTokenizer",)


class SlowLlamaEncode:
    """Callable: text -> ids, as `LlamaTokenizer(text, add_special_tokens=True).input_ids`."""

    def __init__(self, ck: SpmCheckpoint):
        import sentencepiece as spm

        m = _model_proto(ck.proto)
        if not ck.legacy:
            m.normalizer_spec.add_dummy_prefix = False  # get_spm_processor() of legacy=False
        self._sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
        self._legacy = ck.legacy
        self._added = {t.content: t for t in ck.added}
        if any(t.single_word for t in ck.added):
            raise ValueError("added tokens with single_word=True are not reproduced")
        self._special = set(ck.special.values()) | set(ck.additional_special)
        self._unk = ck.special.get("unk_token", "<unk>")
        self._unk_len = len(self._sp.encode(self._unk, out_type=str))
        by_length = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, by_length)) + ")") if by_length else None
        self._bos = self._id(ck.special["bos_token"]) if ck.add_bos_token and "bos_token" in ck.special else None
        self._eos = self._id(ck.special["eos_token"]) if ck.add_eos_token and "eos_token" in ck.special else None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> SlowLlamaEncode:
        return cls(read_spm_checkpoint(model_dir))

    def _id(self, token: str) -> int:
        return self._added[token].id if token in self._added else self._sp.piece_to_id(token)

    def _pieces(self, chunk: str) -> list[str]:
        if self._legacy or not chunk.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(chunk, out_type=str)
        pieces = self._sp.encode(self._unk + chunk, out_type=str)
        return pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces

    def tokens(self, text: str) -> list[str]:
        """`tokenize(text)`: pieces and added tokens, without <s>."""
        if not self._legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = [p for p in self._split.split(text) if p] if self._split else [text]
        for i, part in enumerate(parts):
            spec = self._added.get(part)
            if spec is None:
                continue
            if spec.rstrip and i + 1 < len(parts) and parts[i + 1] not in self._added:
                parts[i + 1] = parts[i + 1].lstrip()
            if spec.lstrip and i > 0 and parts[i - 1] not in self._added:
                parts[i - 1] = parts[i - 1].rstrip()
        out: list[str] = []
        for part in parts:
            if part in self._added:
                out.append(part)
            elif part:
                out += self._pieces(part)
        if not self._legacy and len(out) > 1 and out[0] == SPIECE_UNDERLINE and out[1] in self._special:
            out = out[1:]
        return out

    def __call__(self, text: str) -> list[int]:
        ids = [self._id(t) for t in self.tokens(text)]
        return ([self._bos] if self._bos is not None else []) + ids + ([self._eos] if self._eos is not None else [])
