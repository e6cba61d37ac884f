"""The slow sentencepiece tokenizers the model cards load (`use_fast=False`), as an oracle.

Reproduced from transformers 4.37 (the cards' pin) and the checkpoints' remote
`tokenization_internlm2.py`, on top of sentencepiece itself: `encode` is
`tokenizer(text).input_ids` of `InternLM2Tokenizer` or of `LlamaTokenizer` (Phi-3:
legacy=False, so `'▁' + text` and sentencepiece without its dummy prefix), `decode` is
`decode(ids, skip_special_tokens=True)` of either. Independent of the package's own
implementation (added tokens are found by a scan here, by a regex there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import sentencepiece as spm


def clean_up_tokenization(text: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(a, b)
    return text


class SlowSentencePieceTokenizer:
    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        self.cfg = json.loads((d / "tokenizer_config.json").read_text())
        self.internlm2 = self.cfg["tokenizer_class"] == "InternLM2Tokenizer"
        self.legacy = self.cfg.get("legacy", True) is not False
        self.sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        if not self.legacy:  # the slow Llama class reloads it without the dummy prefix
            from sentencepiece import sentencepiece_model_pb2 as pb

            m = pb.ModelProto()
            m.ParseFromString(self.sp.serialized_model_proto())
            m.normalizer_spec.add_dummy_prefix = False
            self.sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
        self.added = {int(i): t for i, t in self.cfg["added_tokens_decoder"].items()}
        self.added_ids = {t["content"]: i for i, t in self.added.items()}
        specials = [self.cfg.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
        self.all_special_tokens = {t for t in specials if t} | set(self.cfg.get("additional_special_tokens", []))
        self.all_special_ids = {self._id(t) for t in self.all_special_tokens}
        by_length = sorted(self.added_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in by_length) + ")")

    def _id(self, token: str) -> int:
        return self.added_ids[token] if token in self.added_ids else self.sp.piece_to_id(token)

    def _token(self, i: int) -> str:
        return self.added[i]["content"] if i in self.added else self.sp.id_to_piece(i)

    # -- LlamaTokenizer(text).input_ids (transformers 4.37) --------------------------
    def _trie_split(self, text: str) -> list[str]:
        """PreTrainedTokenizer.tokenize's `tokens_trie.split`: at the leftmost position where an
        added token starts, the longest one; the text between stays as it is."""
        out, start, i = [], 0, 0
        while i < len(text):
            hits = [t for t in self.added_ids if text.startswith(t, i)]
            if not hits:
                i += 1
                continue
            tok = max(hits, key=len)
            out += [text[start:i], tok]
            i = start = i + len(tok)
        return [p for p in out + [text[start:]] if p != ""]

    def _llama_tokenize_chunk(self, text: str) -> list[str]:  # LlamaTokenizer._tokenize
        tokens = self.sp.encode(text, out_type=str)
        if self.legacy or not text.startswith(("▁", " ")):
            return tokens
        unk = self.cfg.get("unk_token") or "<unk>"
        unk_token_length = len(self.sp.encode(str(unk)))
        tokens = self.sp.encode(unk + text, out_type=str)
        return tokens[unk_token_length:] if len(tokens) >= unk_token_length else tokens

    def _llama_tokenize(self, text: str) -> list[str]:  # LlamaTokenizer.tokenize
        if not self.legacy and len(text) > 0:
            text = "▁" + text.replace("▁", " ")
        tokens = self._trie_split(text)
        for i, token in enumerate(tokens):  # PreTrainedTokenizer.tokenize
            if token in self.added_ids:
                spec = self.added[self.added_ids[token]]
                left = tokens[i - 1] if i > 0 else None
                right = tokens[i + 1] if i < len(tokens) - 1 else None
                if spec.get("rstrip") and right:
                    tokens[i + 1] = right.lstrip()
                if spec.get("lstrip") and left:
                    tokens[i - 1] = left.rstrip()
                assert not spec.get("single_word")
        out: list[str] = []
        for token in tokens:
            if not token:
                continue
            out += [token] if token in self.added_ids else self._llama_tokenize_chunk(token)
        if not self.legacy and len(out) > 1 and out[0] == "▁" and out[1] in self.all_special_tokens:
            out = out[1:]
        return out

    def encode(self, text: str) -> list[int]:
        if self.internlm2:
            return self._internlm2_encode(text)
        ids = [self._id(t) for t in self._llama_tokenize(text)]
        bos = [self._id(self.cfg["bos_token"])] if self.cfg.get("add_bos_token", True) else []
        return bos + ids + ([self._id(self.cfg["eos_token"])] if self.cfg.get("add_eos_token") else [])

    # -- InternLM2Tokenizer(text).input_ids -------------------------------------------
    def _internlm2_encode(self, text: str) -> list[int]:
        parts = [p for p in self._split.split(text)]
        for i, part in enumerate(parts):
            if part in self.added_ids:
                spec = self.added[self.added_ids[part]]
                if spec.get("rstrip") and i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
                if spec.get("lstrip") and i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
        ids = [self.sp.bos_id()] if self.cfg.get("add_bos_token", True) else []
        for part in parts:
            if not part:
                continue
            if part in self.added_ids:
                ids.append(self.added_ids[part])
            else:
                ids += [self.sp.piece_to_id(p) for p in self.sp.encode(part, out_type=str)]
        return ids

    # -- decode(ids, skip_special_tokens=True) ------------------------------------------
    def _tokens_to_string(self, tokens: list[str]) -> str:
        if self.internlm2:  # tokenization_internlm2.py: the prefix-space dance is a no-op
            out = ""
            run: list[str] = []
            prev_special = False
            for t in tokens:
                if t in self.all_special_tokens:
                    if not prev_special:
                        out += " "
                    out += self.sp.decode(run) + t
                    prev_special, run = True, []
                else:
                    run.append(t)
                    prev_special = False
            out += self.sp.decode(run)
            return (" " + clean_up_tokenization(out))[1:]
        tokens = list(tokens)
        if tokens[0].startswith("▁"):
            tokens[0] = tokens[0][1:]
        return self.sp.decode(tokens)

    def decode(self, ids) -> str:
        tokens = [self._token(int(i)) for i in ids if int(i) not in self.all_special_ids]
        size = self.sp.get_piece_size()
        legacy_added = (set(self.added_ids) - self.all_special_tokens) | {
            t for t in self.cfg.get("additional_special_tokens", []) if self._id(t) >= size
        }
        sub_texts: list[str] = []
        current: list[str] = []
        for t in tokens:
            if t in legacy_added:
                if current:
                    s = self._tokens_to_string(current)
                    if s:
                        sub_texts.append(s)
                    current = []
                sub_texts.append(t)
            else:
                current.append(t)
        if current:
            sub_texts.append(self._tokens_to_string(current))
        text = " ".join(sub_texts)
        return clean_up_tokenization(text) if self.cfg.get("clean_up_tokenization_spaces") else text
