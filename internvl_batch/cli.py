"""The `internvl-batch` command line. Subcommands stay thin: parse, call the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_TINY_DIR = Path(".cache/tiny-internvl2_5")


def _make_tiny_model(args: argparse.Namespace) -> int:
    from internvl_batch.tiny_model import make_tiny_model

    start = time.perf_counter()
    out = make_tiny_model(args.dir, seed=args.seed, fmt=args.format)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"tiny InternVL2.5 checkpoint ({args.format}) in {out}: {size / 1e6:.2f} MB, "
          f"built in {time.perf_counter() - start:.1f}s")
    return 0


def _ensure_tiny_model(model_dir: Path) -> Path:
    if not (model_dir / "config.json").exists():
        from internvl_batch.tiny_model import make_tiny_model

        make_tiny_model(model_dir)
    return model_dir


def _smoke(args: argparse.Namespace) -> int:
    from internvl_batch import smoke

    model = args.model or _ensure_tiny_model(DEFAULT_TINY_DIR)
    images = [smoke.sample_image(seed=i) for i in range(2)]
    start = time.perf_counter()
    results = smoke.generate(model, images, args.question, max_tokens=args.max_tokens)
    print(f"vLLM generated for {len(images)} images in {time.perf_counter() - start:.1f}s "
          f"(engine start included), model={model}")
    for i, r in enumerate(results):
        print(f"image {i}: prompt_tokens={r.num_prompt_tokens} token_ids={list(r.token_ids)}")
        print(f"image {i}: text={r.text!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvl-batch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="build the tiny random InternVL2.5 checkpoint")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["original", "hf"], default="original")
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser("smoke", help="generate with vLLM for two sample images (tiny model by default)")
    p.add_argument("--model", help="hub name or local dir; default: the tiny checkpoint, built on first use")
    p.add_argument("--question", default="Please describe the image shortly.")
    p.add_argument("--max-tokens", type=int, default=16)
    p.set_defaults(func=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
