"""The `internvl-batch` command line. Subcommands stay thin: parse, call the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_TINY_DIR = Path(".cache/tiny-internvl2_5")


def _make_tiny_model(args: argparse.Namespace) -> int:
    from internvl_batch.devtools.tiny_model import make_tiny_model

    start = time.perf_counter()
    out = make_tiny_model(args.dir, seed=args.seed, fmt=args.format)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"tiny InternVL2.5 checkpoint ({args.format}) in {out}: {size / 1e6:.2f} MB, "
        f"built in {time.perf_counter() - start:.1f}s"
    )
    return 0


def _ensure_tiny_model(model_dir: Path) -> Path:
    if not (model_dir / "config.json").exists():
        from internvl_batch.devtools.tiny_model import make_tiny_model

        make_tiny_model(model_dir)
    return model_dir


def _smoke(args: argparse.Namespace) -> int:
    from internvl_batch.devtools import smoke
    from internvl_batch.devtools.sample_media import sample_image

    model = args.model or _ensure_tiny_model(DEFAULT_TINY_DIR)
    images = [sample_image(seed=i) for i in range(2)]
    start = time.perf_counter()
    results = smoke.generate(model, images, args.question, max_tokens=args.max_tokens)
    print(
        f"vLLM generated for {len(images)} images in {time.perf_counter() - start:.1f}s "
        f"(engine start included), model={model}"
    )
    for i, r in enumerate(results):
        print(f"image {i}: prompt_tokens={r.num_prompt_tokens} token_ids={list(r.token_ids)}")
        print(f"image {i}: text={r.text!r}")
    return 0


def _load(args: argparse.Namespace):
    from internvl_batch.config.loader import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    print(
        f"config ok: {len(cfg.task)} task(s) {[t.name for t in cfg.task]}, model {cfg.model.path}, "
        f"output {cfg.output.path}"
    )
    if args.config_only:
        return 0
    from internvl_batch.job.manifest import ManifestError, sample_manifest

    try:
        report = sample_manifest(cfg.input, cfg.preprocess, n=args.sample)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    from internvl_batch.job.runner import run_job

    summary = run_job(cfg, dry_run=args.dry_run)
    return 0 if summary.finished else 1


def _demo(args: argparse.Namespace) -> int:
    from internvl_batch.devtools.demo import DEMO_CONFIG, prepare_demo

    prepare_demo()
    args.config, args.dry_run = DEMO_CONFIG, False
    code = _run(args)
    import ray

    ray.shutdown()  # first, so the replicas' shutdown logs don't bury the sample below
    if code == 0:
        import pyarrow.parquet as pq

        from internvl_batch.config.loader import load_config

        table = pq.read_table(load_config(DEMO_CONFIG, args.set).output.path)
        print("\nsample of the output (tiny random model: the text is gibberish, the tokens are real):")
        for row in table.select(["id", "task", "status", "response", "error"]).to_pylist()[:8]:
            detail = row["response"] if row["status"] == "ok" else row["error"]
            print(f"  {row['id']:>10} {row['task']:>8} {row['status']:>13}  {detail!r:.90}")
    return code


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="job config YAML (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set output.path=/tmp/x (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvl-batch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a job: manifest -> CPU preprocessing -> engine replicas -> parquet")
    _add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="resolve what would run (rows to do), run nothing")
    p.set_defaults(func=_run)

    p = sub.add_parser("validate", help="check a config and a sample of manifest rows; no inference")
    _add_config_args(p)
    p.add_argument("--config-only", action="store_true", help="do not read the manifest")
    p.add_argument("--sample", type=int, default=20, help="manifest rows to check")
    p.set_defaults(func=_validate)

    p = sub.add_parser("demo", help="configs/demo.yaml on generated media: tiny model, local Ray, CPU vLLM")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_demo)

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
