"""The text the tiny tokenizers are trained on: captions-like English, plus (for the
sentencepiece families) CJK, emoji and odd whitespace, so that their vocabularies have
multi-byte pieces and byte fallback is exercised. Deterministic per seed."""

from __future__ import annotations

import random

# fmt: off
WORDS = [
    "a", "an", "the", "this", "that", "photo", "picture", "image", "video", "frame", "of", "with", "on",
    "in", "at", "near", "under", "over", "cat", "dog", "bird", "horse", "person", "man", "woman", "child",
    "people", "car", "bus", "bike", "train", "boat", "plane", "tree", "flower", "grass", "sky", "cloud",
    "sun", "water", "river", "sea", "beach", "mountain", "road", "street", "building", "house", "room",
    "table", "chair", "bed", "window", "door", "wall", "floor", "red", "green", "blue", "yellow", "white",
    "black", "brown", "gray", "orange", "pink", "small", "large", "big", "old", "young", "sitting",
    "standing", "walking", "running", "flying", "is", "are", "was", "were", "and", "or", "but", "two",
    "three", "many", "some", "one", "shows", "describe", "detail", "color", "background", "foreground",
    "left", "right", "top", "bottom", "center", "bright", "dark", "sunny", "rainy", "night", "day", "what",
    "where", "who", "how", "why", "which", "does", "do", "can", "see", "there", "it", "its", "they", "their",
    "question", "answer", "short", "caption", "detailed", "describe", "the", "image", "please", "yes", "no",
    "count", "number", "text", "sign", "label",]
# fmt: on

MULTILINGUAL = [
    "你好，世界。这是一张图片，图中有一只猫和一条狗。",
    "请详细描述这张图片。天空是蓝色的，草地是绿色的。",
    "書生・万象 こんにちは、世界。写真に猫がいます。",
    "한국어 문장도 조금 있습니다.",
    "emoji 😀🐱🚗🌳 and symbols © ® ™ € £ ¥ → ✓",
    "tabs\tand  double  spaces,   triple   spaces\n\nand blank lines",
    "numbers 1234567890 3.14159 2026-01-01 12:34",
]


def corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":", "\n"])
        if rng.random() < 0.3:
            line += f" {rng.randint(0, 9999)}"
        lines.append(line)
    return lines


def multilingual_corpus(seed: int) -> list[str]:
    return corpus(seed, 3000) + MULTILINGUAL * 40
