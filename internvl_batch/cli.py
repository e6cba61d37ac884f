"""The `internvl-batch` command line. Subcommands stay thin: parse, call the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Run InternVL vision-language models over millions of images and videos on a Ray cluster
with vLLM, and write every answer to parquet: each manifest row exactly once per task,
with a status, resumable after any crash.

Start with `internvl-batch demo` (a tiny model on generated media, no GPU needed), then
`validate` and `plan` a config of your own before you `run` it."""

EPILOG = """\
exit codes: 0 done (rows that failed on their own are in the output with their status);
1 the job failed and may pass on a rerun, which resumes; 2 a problem that will repeat (config,
manifest, model; validate/plan --strict: sampled rows predicted refused): fix it first."""

DEFAULT_TINY_DIR = Path(".cache/tiny-internvl2_5")


def _make_tiny_model(args: argparse.Namespace) -> int:
    from internvl_batch.devtools.tiny_model import TWINS, make_tiny_model

    start = time.perf_counter()
    out = make_tiny_model(args.dir, seed=args.seed, fmt=args.format, family=args.family)
    size = sum(f.stat().st_size for f in out.iterdir())
    fam = TWINS[args.family]
    print(
        f"tiny twin of {fam.mirrors} ({args.family}, template {fam.template.name}, {args.format} layout) in {out}: "
        f"{size / 1e6:.2f} MB, built in {time.perf_counter() - start:.1f}s"
    )
    return 0


def _mirror_model(args: argparse.Namespace) -> int:
    from internvl_batch.engines.model_mirror import MirrorError, mirror_model

    try:
        result = mirror_model(args.source, args.dest, revision=args.revision, staging_dir=args.staging)
    except MirrorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def _ensure_tiny_model(model_dir: Path, family: str = "qwen2") -> Path:
    if not (model_dir / "config.json").exists():
        from internvl_batch.devtools.tiny_model import make_tiny_model

        make_tiny_model(model_dir, family=family)
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


def _error(e: BaseException, cfg=None, prefix: str = "", suffix: str = "") -> None:
    """An error for the terminal (and the RayJob's log): no URL signature, no credential."""
    print(_scrub(f"error: {prefix}{e}{suffix}", cfg), file=sys.stderr)


def _scrub(text: str, cfg=None) -> str:
    from internvl_batch.storage.redact import scrub

    return scrub(text, cfg.secret_values() if cfg is not None else ())


def _load(args: argparse.Namespace):
    from internvl_batch.config.loader import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as e:
        _error(e)  # a YAML error quotes the line it stopped at, which may hold a secret
        return None


def _validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    from internvl_batch.storage.redact import redacted

    shown = redacted(cfg)
    print(
        f"config ok: {len(cfg.task)} task(s) {[t.name for t in cfg.task]}, model {shown['model']['path']}, "
        f"output {shown['output']['path']}"
    )
    if args.config_only:
        return 0  # no I/O: the model's files and the manifest are not read
    from internvl_batch.engines.checkpoint import inspect_checkpoint
    from internvl_batch.job.readers import ManifestError
    from internvl_batch.model.check import ModelCheckError
    from internvl_batch.preflight.rows import check_sample

    try:
        info = inspect_checkpoint(cfg.model)
    except ModelCheckError as e:
        _error(e, cfg, suffix=" (may pass on a retry)" if e.retryable else "")
        return 1 if e.retryable else 2
    print(_scrub(info.summary(), cfg))
    try:
        check = check_sample(cfg, args.sample, info=info)  # plan's own per-row check
    except (ManifestError, ValueError) as e:
        _error(e, cfg)
        return 2
    except OSError as e:
        return _io_error(e, cfg)
    print(_scrub(check.text(), cfg))  # its rows name their media URLs
    return _strict(args, check.strict_error(), cfg)


def _io_error(e: OSError, cfg) -> int:
    """A store that failed for now (retries spent, a timeout) may answer later: not "fix it first"."""
    from internvl_batch.storage.retry import StorageError, kind_of

    may_pass = isinstance(e, StorageError) or kind_of(e) == "transient"
    _error(e, cfg, suffix=" (may pass on a retry)" if may_pass else "")
    return 1 if may_pass else 2


def _strict(args: argparse.Namespace, refused: str | None, cfg) -> int:
    """`--strict`: exit 2 (a problem that will repeat) when a sampled row is predicted refused;
    else a bad row is data."""
    if args.strict and refused:
        _error(refused, cfg)
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    from internvl_batch.job.monitor import JobFailed
    from internvl_batch.job.plan import PlanError
    from internvl_batch.job.readers import ManifestError
    from internvl_batch.job.runner import run_job

    try:
        summary = run_job(cfg, dry_run=args.dry_run)
    except (ManifestError, PlanError) as e:
        _error(e, cfg)
        return 2  # will fail the same way on a retry
    except JobFailed as e:
        _error(e, cfg, "the job failed: ", "\nits output is resumable: rerun the same command")
        return 1
    return 0 if summary.finished else 1


def _plan(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    import json

    from internvl_batch.job.readers import ManifestError
    from internvl_batch.preflight.estimate import Rates, make_preflight

    try:
        rates = None
        if args.from_run:
            rates = Rates.from_success(args.from_run, cfg.output.storage_options)
        elif args.pairs_per_s or args.tokens_per_s:
            rates = Rates("the command line", pairs_per_s=args.pairs_per_s, tokens_per_s=args.tokens_per_s)
        result = make_preflight(cfg, args.sample, rates)
    except (ManifestError, ValueError) as e:
        _error(e, cfg)
        return 2
    except OSError as e:
        return _io_error(e, cfg)
    print(_scrub(json.dumps(result.to_dict(), indent=1) if args.json else result.text(), cfg))
    return _strict(args, result.refused, cfg)


def _verify(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    import json

    from internvl_batch.job.readers import ManifestError
    from internvl_batch.model.check import ModelCheckError
    from internvl_batch.preflight.verify import run_verify

    try:
        report = run_verify(cfg, args.rows, args.tie_margin, args.max_tokens, source=args.config)
    except (ManifestError, ModelCheckError) as e:
        _error(e, cfg)
        return 1 if getattr(e, "retryable", False) else 2
    print(_scrub(json.dumps(report.to_dict(), indent=1) if args.json else report.text(), cfg))
    return 0 if report.ok else 1


def _report(args: argparse.Namespace) -> int:
    import fsspec

    from internvl_batch.job.output import OutputDir
    from internvl_batch.observe.report import write_report

    path, options = args.path, {}
    if path.endswith((".yaml", ".yml")):
        args.config = path
        cfg = _load(args)
        if cfg is None:
            return 2
        path, options = cfg.output.path, cfg.output.storage_options
    fs, root = fsspec.core.url_to_fs(path, **options)
    expected = "a job's output.path (the folder that holds _state/ and, once finished, _SUCCESS)"
    if not fs.exists(root):
        _error(f"{path} does not exist; expected {expected}")
        return 2
    if not fs.isdir(root):
        _error(f"{path} is a file; expected {expected}")
        return 2
    out = OutputDir(path, options)
    if not out.holds_job_output():
        # Nothing is written into a folder that is not a job's output.
        _error(f"{path} holds no job output (no _state/job.json, no _SUCCESS); expected {expected}")
        return 2
    dest = OutputDir(args.out) if args.out else None
    print(write_report(out, dest=dest))
    return 0


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

        out_path = load_config(DEMO_CONFIG, args.set).output.path
        table = pq.read_table(out_path)
        print("\nsample of the output (tiny random model: the text is gibberish, the tokens are real):")
        for row in table.select(["id", "task", "status", "response", "error"]).to_pylist()[:8]:
            detail = row["response"] if row["status"] == "ok" else row["error"]
            print(f"  {row['id']:>10} {row['task']:>8} {row['status']:>13}  {detail!r:.90}")
        from internvl_batch.observe.report import REPORT_HTML, REPORT_PNG

        print(f"\nrun report: {out_path}/{REPORT_HTML} (summary: {out_path}/{REPORT_PNG})")
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


def _add_strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when a sampled row is predicted refused (invalid_row, fetch_error, decode_error, too_large, "
        "context_overflow), naming how many and which statuses; without it such rows are data (exit 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    from internvl_batch import __version__

    parser = argparse.ArgumentParser(
        prog="internvl-batch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a job: manifest -> CPU preprocessing -> engine replicas -> parquet")
    _add_config_args(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shards done / to do, row x task pairs left) and write nothing; "
        "no Ray cluster unless the manifest's new files hold over 256 MB",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "validate", help="check a config, the model's config/tokenizer/template (no weights) and manifest rows"
    )
    _add_config_args(p)
    p.add_argument("--config-only", action="store_true", help="do not load the model's files nor read the manifest")
    p.add_argument("--sample", type=int, default=20, help="manifest rows to check, as `plan` checks them")
    _add_strict_arg(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "plan", help="pre-flight: sample rows, read image headers only, predict tiles, tokens, overflows, GPU-hours"
    )
    _add_config_args(p)
    p.add_argument("--sample", type=int, default=200, help="manifest rows to sample")
    p.add_argument("--pairs-per-s", type=float, help="row x task pairs per second of one replica")
    p.add_argument("--tokens-per-s", type=float, help="prompt + output tokens per second of one replica")
    p.add_argument("--from-run", metavar="OUTPUT_PATH", help="take the rates a previous run's _SUCCESS measured")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_strict_arg(p)
    p.set_defaults(func=_plan)

    p = sub.add_parser(
        "verify",
        help="before a first night on a checkpoint: N manifest rows through the job's engine and through the "
        "checkpoint's own reference (model.chat, or the HF reference engine), compared token by token",
    )
    _add_config_args(p)
    p.add_argument("--rows", type=int, default=4, help="manifest rows to compare (its first rows)")
    p.add_argument("--max-tokens", type=int, help="cap each task's max_tokens on both sides (default: the task's)")
    p.add_argument(
        "--tie-margin",
        type=float,
        default=0.05,
        help="a differing token counts as a tie when it is the reference's second choice within this many logits",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_verify)

    p = sub.add_parser("report", help="render _report.html and _report.png of an output path (finished or running)")
    p.add_argument("path", help="output path (any fsspec URL), or a job config YAML naming it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with a config: override a key")
    p.add_argument("--out", help="write the report here instead of into the output path")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="configs/demo.yaml on generated media: tiny model, local Ray, CPU vLLM")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of configs/demo.yaml (repeatable)",
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser("mirror-model", help="copy a checkpoint (hub name or dir) to object storage, for model.path")
    p.add_argument("source", help="hub name (OpenGVLab/InternVL2_5-8B) or a local checkpoint directory")
    p.add_argument("dest", help="object-storage prefix (s3://bucket/models/InternVL2_5-8B) or a directory")
    p.add_argument("--revision", help="hub branch, tag or commit (default: main); the mirror records the commit")
    p.add_argument("--staging", type=Path, help="local directory for one file at a time (default: a temp dir)")
    p.set_defaults(func=_mirror_model)

    p = sub.add_parser("make-tiny-model", help="build a tiny random InternVL checkpoint (one per LLM family)")
    p.add_argument("dir", type=Path, help="directory to write the checkpoint into (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights: the same seed gives the same bytes")
    p.add_argument(
        "--format",
        choices=["original", "hf"],
        default="original",
        help="OpenGVLab's published layout (internvl_chat, what vLLM runs) or transformers' InternVL layout",
    )
    p.add_argument(
        "--family",
        choices=["qwen2", "internlm2", "phi3", "phi3-internvl2", "llama3", "qwen3"],
        default="qwen2",
        help="the LLM family (and published checkpoint) it mirrors: qwen2 InternVL2_5-1B, internlm2 InternVL2_5-8B, "
        "phi3 Mini-InternVL-Chat-4B-V1-5, phi3-internvl2 InternVL2-4B, llama3 InternVL2-Llama3-76B, qwen3 "
        "InternVL3_5-1B",
    )
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser("smoke", help="generate with vLLM for two sample images (tiny model by default)")
    p.add_argument("--model", help="hub name or local dir; default: the tiny checkpoint, built on first use")
    p.add_argument("--question", default="Please describe the image shortly.", help="the question asked of each image")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per image")
    p.set_defaults(func=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
