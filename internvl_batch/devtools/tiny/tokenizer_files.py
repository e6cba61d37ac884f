"""The tiny twins' tokenizers, trained here, written in each LLM family's published layout.

- byte-level BPE (`tokenizers`): Qwen2/2.5/3 (`tokenizer.json`, as before) and Llama-3
  (its pre-tokenizer regex, `<|begin_of_text|>` added by the post-processor);
- sentencepiece BPE with byte fallback (`sentencepiece` itself): InternLM2 (the remote-code
  `InternLM2Tokenizer` layout: `tokenizer.model`, `auto_map`, its special pieces at the end
  of the sentencepiece vocabulary) and Phi-3 (`LlamaTokenizer`, its added tokens with
  `rstrip`, and `<|end|>` not special).

Each writer returns the token -> id map of the tokens the config needs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from internvl_batch.devtools.tiny.corpus import corpus, multilingual_corpus
from internvl_batch.model.prompts import IMG_CONTEXT, IMG_END, IMG_START

BPE_VOCAB_SIZE = 1024
SPM_VOCAB_SIZE = 1000
# InternVL's own tokens, added to every LLM's tokenizer
INTERNVL_TOKENS = [IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
# `<|video_pad|>` is what makes vLLM enable video input for a Qwen2-based InternVL.
QWEN2_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *INTERNVL_TOKENS, "<|video_pad|>"]
QWEN3_SPECIAL_TOKENS = [*QWEN2_SPECIAL_TOKENS, "<think>", "</think>"]
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", *INTERNVL_TOKENS,
]  # fmt: skip
# InternLM2's chat tokens: user-defined pieces at the end of its sentencepiece vocabulary
INTERNLM2_PIECES = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
# Phi-3-mini's added tokens (rstrip=True but <|endoftext|>), in id order; <|end|> is not special
PHI3_TOKENS = [
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
    "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>",
]  # fmt: skip
# Llama-3's pre-tokenizer split (Qwen2's differs only in single digits)
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def _added_entry(content: str, special: bool = True, rstrip: bool = False) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": rstrip, "single_word": False,
            "special": special}  # fmt: skip


def byte_bpe(seed: int, special_tokens: list[str], split_regex: str | None = None):
    """A byte-level BPE tokenizer trained locally (Qwen2-style, or Llama-3's regex split)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if split_regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    tok.add_special_tokens(special_tokens)
    return tok


def qwen_files(out: Path, seed: int, special_tokens: list[str], chat_template: str) -> dict[str, int]:
    tok = byte_bpe(seed, special_tokens)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": special_tokens[1:],
        "chat_template": chat_template,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    return tok.get_vocab()


def llama3_files(out: Path, seed: int, chat_template: str) -> dict[str, int]:
    from tokenizers import processors

    tok = byte_bpe(seed, LLAMA3_SPECIAL_TOKENS, LLAMA3_SPLIT)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
            ),
        ]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<|end_of_text|>",
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": True,
        "additional_special_tokens": INTERNVL_TOKENS,
        "chat_template": chat_template,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {"bos_token": bos, "eos_token": "<|end_of_text|>"})
    return tok.get_vocab()


def sentencepiece_model(seed: int, vocab_size: int, extra_pieces: list[str] = ()) -> bytes:
    """A sentencepiece BPE model (byte fallback, Llama-2 / InternLM2 normalisation);
    `extra_pieces` are appended as user-defined pieces, as InternLM2 has its chat tokens."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(multilingual_corpus(seed)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size - len(extra_pieces),
        byte_fallback=True,
        character_coverage=0.9995,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    model = pb.ModelProto()
    model.ParseFromString(buf.getvalue())
    for piece in extra_pieces:
        model.pieces.add(piece=piece, score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED)
    return model.SerializeToString()


def internlm2_files(out: Path, seed: int, chat_template: str) -> dict[str, int]:
    """InternVL2/2.5's InternLM2 tokenizer layout: sentencepiece + the remote-code class."""
    (out / "tokenizer.model").write_bytes(sentencepiece_model(seed, SPM_VOCAB_SIZE, INTERNLM2_PIECES))
    ids = {"<unk>": 0, "<s>": 1, "</s>": 2}
    ids |= {p: SPM_VOCAB_SIZE - len(INTERNLM2_PIECES) + i for i, p in enumerate(INTERNLM2_PIECES)}
    ids |= {t: SPM_VOCAB_SIZE + i for i, t in enumerate(INTERNVL_TOKENS)}
    additional = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                  "<|plugin|>", *INTERNVL_TOKENS]  # fmt: skip
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False,
        "model_max_length": 16384,
        "sp_model_kwargs": {},
        "added_tokens_decoder": {str(i): _added_entry(t) for t, i in sorted(ids.items(), key=lambda x: x[1])},
        "additional_special_tokens": additional,
        "chat_template": chat_template,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {**special, "additional_special_tokens": additional})
    _write_json(out / "added_tokens.json", {t: ids[t] for t in INTERNVL_TOKENS})
    return ids


def phi3_files(out: Path, seed: int, chat_template: str) -> dict[str, int]:
    """Phi-3-mini's tokenizer as InternVL ships it: LlamaTokenizer (legacy=False), the
    tokenizer.json transformers' converter wrote, Phi-3's added tokens, InternVL's after them."""
    from tokenizers import AddedToken, processors

    from internvl_batch.model.spm_tokenizer import SpmCheckpoint, build_fast_tokenizer

    proto = sentencepiece_model(seed, SPM_VOCAB_SIZE)
    (out / "tokenizer.model").write_bytes(proto)
    entries = {0: _added_entry("<unk>"), 1: _added_entry("<s>"), 2: _added_entry("</s>", special=False, rstrip=True)}
    for i, t in enumerate(PHI3_TOKENS):
        entries[SPM_VOCAB_SIZE + i] = _added_entry(t, special=t != "<|end|>", rstrip=t != "<|endoftext|>")
    for i, t in enumerate(INTERNVL_TOKENS):
        entries[SPM_VOCAB_SIZE + len(PHI3_TOKENS) + i] = _added_entry(t)
    # transformers' 2024 converter: the legacy normaliser, whatever `legacy` says
    tok = build_fast_tokenizer(SpmCheckpoint(proto=proto, tokenizer_class="LlamaTokenizer", added=()))
    for i, e in sorted(entries.items()):
        if i >= SPM_VOCAB_SIZE:
            token = AddedToken(e["content"], rstrip=e["rstrip"], normalized=False, special=e["special"])
            (tok.add_special_tokens if e["special"] else tok.add_tokens)([token])
            assert tok.token_to_id(e["content"]) == i, e
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "padding_side": "left",
        "sp_model_kwargs": {},
        "use_default_system_prompt": False,
        "added_tokens_decoder": {str(i): e for i, e in sorted(entries.items())},
        "additional_special_tokens": INTERNVL_TOKENS,
        "chat_template": chat_template,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {**special, "additional_special_tokens": INTERNVL_TOKENS})
    return {e["content"]: i for i, e in entries.items()}
