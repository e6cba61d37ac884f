"""The slow sentencepiece tokenizers the model cards load (`use_fast=False`), as an oracle.

Reproduced from transformers 4.37 (the cards' pin) and the checkpoints' remote
`tokenization_internlm2.py`, on top of sentencepiece itself: `encode` is
`tokenizer(text).input_ids` of `InternLM2Tokenizer`, `decode` is
`decode(ids, skip_special_tokens=True)` of `InternLM2Tokenizer` or of `LlamaTokenizer`
(legacy=False, Phi-3). Independent of the package's own implementation.
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

    # -- InternLM2Tokenizer(text).input_ids -------------------------------------------
    def encode(self, text: str) -> list[int]:
        assert self.internlm2, "only InternLM2Tokenizer's encode is reproduced"
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
