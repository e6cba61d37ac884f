"""Peer benchmark (issue #14): the same captioning work through Ray Data LLM, through our job,
and through the bare engine, on the CPU build of vLLM.

Same on every side: N local 1024x768 JPEGs (12 tiles + thumbnail each), the short-caption
prompt, greedy decoding with the same max_tokens and the model card's stopping rule (the
template separator only), the same engine settings (float32, max_model_len 4096,
max_num_seqs 16, enforce_eager, 2 GiB KV cache, one image per prompt) and the same tiny
random InternVL2.5 checkpoint (`make_tiny_model`). Each run checks that the job's and Ray
Data LLM's answers equal the bare engine's (same model, inputs and work on every side): the
job's texts, Ray Data LLM's token ids. A difference, a crashed side or a lost or failed row
prints a line naming the rows and makes the benchmark exit 1 (after the remaining runs).

  Ray Data LLM  `ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))` as its docs
                configure a VLM: multimodal, chat-template, tokenize and detokenize stages,
                one engine replica, batch_size 16, max_concurrent_batches 4, file:// image
                URLs; its CPU stages share 1 CPU beside the engine's (as the job's CPU
                stage does). vLLM tiles the images itself, in the engine actor: the point.
  job           `run_job` with one replica and the CPU stage of configs/demo.yaml (2 workers
                x 0.5 CPU, engine batches of 16, 4 in flight): our workers tile, the engine
                gets uint8 tiles; results go to parquet with the ledger and _SUCCESS.
  bare          `VLLMEngine.generate` over every request at once, tiled beforehand in the
                same process: what the engine alone can do with pre-tiled input.

Each side runs in a fresh process (start-up and memory never leak from one side into
another), pinned like benchmarks/engine_feed.py: everything on core 0 (`taskset`), vLLM's
compute threads bound to core 1. Per side it reports
  total   from the side's process start to the last answer in hand (start-up included);
  busy    the engine's busy span, from the first request reaching the engine front-end to
          the last answer (vLLM's own request stats on the Ray Data LLM side, the engine
          wrapper's occupancy clock on ours): the steady state, start-up excluded;
and rows/s over each, as the median and (min, max) over --runs, with the ratios
job/RayDataLLM and job/bare paired run by run; the sides run in a rotated order, run by run.
Ray Data LLM rows carrying an `__inference_error__` count as failures and are reported;
every side must deliver N rows.

The Ray Data LLM side needs three shims on this build, all kept inside this file:
CPU placement bundles (no GPUs), an alias for `vllm.entrypoints.chat_utils` (moved to
`vllm.renderers.chat_utils` in vLLM 0.32; Ray 2.60's multimodal stage imports the old
path) and the `internvl_chat` config registration in its CPU stages' workers (the stage
builds a vLLM ModelConfig outside vLLM's plugin loading); the last two in a
`worker_process_setup_hook` (`_rdl_worker_setup`, installed through `ray.init(runtime_env=...)`).
Two settings are needed besides: explicit `num_cpus` for its CPU stages and map tasks (each
defaults to a whole CPU: on a 2-CPU node they deadlock), and `log_engine_metrics=False` (its
default stat logger imports ray.serve, which ray[data] does not install). Local images need
`allowed_local_media_path` in the multimodal stage and `file://` URLs. Its start-up varies
by tens of seconds from run to run: hence start-up and steady state apart, over several runs.

    .venv/bin/python benchmarks/peers.py [--rows 48] [--max-tokens 16,128] [--runs 3]
    .venv/bin/python benchmarks/peers.py --quick      # smoke check: 1 run, 16 rows, 16 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.monotonic()  # a side's clock starts before its heavy imports (ray, vllm, torch)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

REPO = common.REPO
IMAGE_SIZE = (1024, 768)
MAX_NUM = 12  # the card's max_num = the checkpoint's max_dynamic_patch: 12 tiles + thumbnail
PROMPT = "Please describe the image shortly."  # the job's short_caption preset
MAX_NUM_SEQS = 16
MODEL = common.model_section("", max_num_seqs=MAX_NUM_SEQS, max_dynamic_patch=MAX_NUM)  # our sides' engine
MAX_MODEL_LEN, KV_CACHE_GIB = MODEL["max_model_len"], common.KV_CACHE_GIB  # Ray Data LLM's engine alike
BATCH_SIZE = 16  # rows per engine call on both pipelines
IN_FLIGHT = 4  # batches in flight per engine replica on both pipelines
STAGE_CPUS = 0.16  # Ray Data LLM's 4 CPU stages + pre/postprocess: 1 CPU in all, as the job's CPU stage
SIDES = ("rdl", "job", "bare")
NAMES = {"rdl": "Ray Data LLM", "job": "job", "bare": "bare engine"}


# ------------------------------------------------------------------------ the sides
def side_bare(spec: dict) -> dict:
    """Every pre-tiled request handed to the engine at once."""
    from PIL import Image

    from internvl_batch.config import ModelConfig, SamplingConfig
    from internvl_batch.engines.base import EngineRequest
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.media.tiling import tile_image
    from internvl_batch.model.prompts import build_prompt

    sampling = SamplingConfig(max_tokens=spec["max_tokens"])
    reqs = []
    for row in spec["rows"]:
        with Image.open(row["image"]) as im:
            tiles = tile_image(im.convert("RGB"), max_num=MAX_NUM)
        prompt = build_prompt(PROMPT, [len(tiles)])
        reqs.append(EngineRequest(id=row["id"], prompt=prompt, tiles=tiles, sampling=sampling, media_key=row["id"]))
    model = ModelConfig(**(MODEL | {"path": spec["model"]}))
    engine = VLLMEngine(model, sampling)
    try:
        results = engine.generate(reqs)
        total = time.monotonic() - _T0
        stats = engine.occupancy.stats()
    finally:
        engine.shutdown()
    ok = [r for r in results if r.status == "ok"]
    return {
        "rows": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.status != "ok"})[:3],
        "total_s": total,
        "busy_s": stats["last_finish"] - stats["first_submit"],
        "output_tokens": sum(r.num_output_tokens for r in ok),
        "prompt_tokens": statistics.mean(r.num_prompt_tokens for r in ok) if ok else 0,
        # For the parity check (popped by the driver): same model, same inputs, same tokens?
        "answers": {r.id: r.text for r in ok},
        "tokens": {r.id: list(r.token_ids) for r in ok},
    }


def _job_config(spec: dict) -> dict:
    return {
        "input": {"path": spec["manifest"]},
        "model": MODEL | {"path": spec["model"], "max_images_per_prompt": 1},
        # One image per prompt, as the other sides' limit_mm_per_prompt (no video here).
        "preprocess": {"max_num": MAX_NUM, "video": {"num_segments": 1}},
        "task": [{"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": spec["max_tokens"]}}],
        # The CPU stage of configs/demo.yaml: 2 workers x 0.5 CPU beside a 1-CPU engine.
        "runtime": {"use_gpu": False, "replicas": 1, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": BATCH_SIZE,
                    "engine_batches_in_flight": IN_FLIGHT, "progress_interval_s": 1e9},
        "output": {"path": spec["out"]},
    }  # fmt: skip


def side_job(spec: dict) -> dict:
    import pyarrow.parquet as pq
    import yaml

    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    cfg_path = Path(spec["out"] + ".yaml")
    cfg_path.write_text(yaml.safe_dump(_job_config(spec)))
    summary = run_job(load_config(cfg_path))
    total = time.monotonic() - _T0
    # Read back (off the clock): what reached the output is what counts.
    table = pq.read_table(
        spec["out"], columns=["id", "status", "error", "response", "num_output_tokens", "num_prompt_tokens"]
    )
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "rows": len({r["id"] for r in rows}),
        "failed": len(rows) - len(ok) + (0 if summary.finished else 1),
        "errors": sorted({f"{r['status']}: {r['error']}" for r in rows if r["status"] != "ok"})[:3]
        + ([] if summary.finished else ["run_job did not finish"]),
        "total_s": total,
        "busy_s": summary.engine["busy_s"],
        "pipeline_wall_s": summary.wall_s,
        "output_tokens": sum(r["num_output_tokens"] for r in ok),
        "prompt_tokens": statistics.mean(r["num_prompt_tokens"] for r in ok) if ok else 0,
        "answers": {r["id"]: r["response"] for r in ok},
    }


def _rdl_worker_setup() -> None:
    """Ray's worker_process_setup_hook for the Ray Data LLM side: runs in each of its workers.

    Pickled by value (this module is __main__ in the side's process), so it imports what it needs.
    """
    import importlib
    import importlib.abc
    import importlib.util
    import sys

    class _ChatUtilsAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # Ray 2.60 imports vllm.entrypoints.chat_utils, which vLLM 0.32 moved to
        # vllm.renderers.chat_utils. Lazy: vLLM is imported only where the old name is.
        old, new = "vllm.entrypoints.chat_utils", "vllm.renderers.chat_utils"

        def find_spec(self, name, path=None, target=None):
            return importlib.util.spec_from_loader(name, self) if name == self.old else None

        def create_module(self, spec):
            return importlib.import_module(self.new)

        def exec_module(self, module):
            pass

    if not any(type(f).__name__ == "_ChatUtilsAlias" for f in sys.meta_path):
        sys.meta_path.insert(0, _ChatUtilsAlias())
    # The multimodal stage builds a vLLM ModelConfig in its own workers, outside vLLM's
    # plugin loading: it needs the internvl_chat config classes registered there.
    from internvl_batch.model.configs import register_config_classes

    register_config_classes()


def side_rdl(spec: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    max_tokens, stop_ids = spec["max_tokens"], spec["stop_token_ids"]
    ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": _rdl_worker_setup})
    ray.data.DataContext.get_current().enable_progress_bars = False  # log noise only, as on the job side
    config = vLLMEngineProcessorConfig(
        model_source=spec["model"],
        engine_kwargs={
            "dtype": MODEL["dtype"],
            "max_model_len": MAX_MODEL_LEN,
            "max_num_seqs": MAX_NUM_SEQS,
            "enforce_eager": MODEL["engine_kwargs"]["enforce_eager"],
            "limit_mm_per_prompt": {"image": 1},
        },
        concurrency=1,
        batch_size=BATCH_SIZE,
        # Its docs: raise it above the default's tuning (batch >= 32) for small batches;
        # batch_size x max_concurrent_batches >= max_num_seqs or the engine idles.
        max_concurrent_batches=IN_FLIGHT,
        # No GPUs here: the engine actor gets a 1-CPU bundle instead of the default GPU one.
        accelerator_type=None,
        placement_group_config={"bundles": [{"CPU": 1}]},
        # Its default exports vLLM metrics through vLLM's Ray stat logger, which imports
        # ray.serve (not installed: ray[data] only) and needs a metrics export port anyway.
        log_engine_metrics=False,
        # A failed row becomes a row with __inference_error__ (counted below), not a crash.
        should_continue_on_error=True,
        # CPU stages: each would reserve a whole CPU by default, and 4 of them beside the
        # engine's 1 deadlock a 2-CPU node (seen: Detokenize holds the CPU that Tokenize
        # waits for). Like the job's CPU stage, they share the CPU the engine leaves.
        prepare_multimodal_stage={
            "enabled": True,
            "num_cpus": STAGE_CPUS,
            "model_config_kwargs": {"allowed_local_media_path": spec["media_dir"], "limit_mm_per_prompt": {"image": 1}},
        },
        chat_template_stage={"enabled": True, "num_cpus": STAGE_CPUS},
        tokenize_stage={"enabled": True, "num_cpus": STAGE_CPUS},
        detokenize_stage={"enabled": True, "num_cpus": STAGE_CPUS},
    )

    def preprocess(row: dict) -> dict:
        content = [
            {"type": "image_url", "image_url": {"url": "file://" + row["image"]}},
            {"type": "text", "text": PROMPT},
        ]
        # The model card's stopping rule, as our engine applies it: the template separator
        # only (model.chat ignores generation_config.json's other EOS ids); vLLM's default
        # would also stop at those, i.e. decode fewer tokens than the other sides.
        # detokenize=False: the detokenize stage decodes, as in Ray Data LLM's own examples.
        sampling = {"temperature": 0.0, "max_tokens": max_tokens, "stop_token_ids": stop_ids, "ignore_eos": True,
                    "detokenize": False}  # fmt: skip
        return {"messages": [{"role": "user", "content": content}], "sampling_params": sampling}

    def postprocess(row: dict) -> dict:
        m = row.get("metrics") or {}
        return {"id": row["id"], "response": row["generated_text"], "num_input_tokens": row["num_input_tokens"],
                "num_generated_tokens": row["num_generated_tokens"], "generated_tokens": list(row["generated_tokens"]),
                "arrival_time": m.get("arrival_time"),
                "last_token_ts": m.get("last_token_ts")}  # fmt: skip

    processor = build_processor(
        config,
        preprocess=preprocess,
        postprocess=postprocess,
        # Tasks default to 1 CPU each: the preprocess waits forever beside the stages above.
        preprocess_map_kwargs={"num_cpus": STAGE_CPUS},
        postprocess_map_kwargs={"num_cpus": STAGE_CPUS},
    )
    ds = processor(ray.data.from_items(spec["rows"]))
    rows = []
    for row in ds.iter_rows():
        # Error rows bypass postprocess: keep what identifies them.
        rows.append({k: row.get(k) for k in ("id", "response", "num_input_tokens", "num_generated_tokens", "generated_tokens",
                                             "arrival_time", "last_token_ts", "__inference_error__")})  # fmt: skip
    # Written like the job's answers (a single small file: the job's commit protocol is its own cost).
    os.makedirs(spec["out"], exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(spec["out"], "part-0.parquet"))
    total = time.monotonic() - _T0
    ok = [r for r in rows if not r.get("__inference_error__")]
    # vLLM's request stats: arrival_time is wall-clock (the front-end, before vLLM's own
    # image processing), last_token_ts is CLOCK_MONOTONIC (one clock for every process here).
    offset = time.time() - time.monotonic()
    arrivals = [r["arrival_time"] - offset for r in ok if r.get("arrival_time")]
    lasts = [r["last_token_ts"] for r in ok if r.get("last_token_ts")]
    ray.shutdown()
    return {
        "rows": len({r["id"] for r in rows}),
        "failed": len(rows) - len(ok),
        "errors": sorted({str(r["__inference_error__"]) for r in rows if r.get("__inference_error__")})[:3],
        "total_s": total,
        "busy_s": (max(lasts) - min(arrivals)) if arrivals and lasts else float("nan"),
        "output_tokens": sum(r["num_generated_tokens"] for r in ok),
        "prompt_tokens": statistics.mean(r["num_input_tokens"] for r in ok) if ok else 0,
        "tokens": {r["id"]: [int(t) for t in r["generated_tokens"]] for r in ok},
    }


# ------------------------------------------------------------------------ the driver
def _inputs(root: Path, rows: int) -> tuple[Path, list[dict]]:
    from internvl_batch.devtools.sample_media import sample_image

    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(rows):
        path = media / f"img{i:03d}.jpg"
        sample_image(seed=i, size=IMAGE_SIZE).save(path, quality=90)
        items.append({"id": f"r{i:03d}", "image": str(path)})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in items))
    return manifest, items


def _stop_token_ids(model: str) -> list[int]:
    """What ends an answer on our engine (the template separator, as model.chat): the Ray
    Data LLM side is given the same, so every side decodes the same tokens."""
    from transformers import AutoTokenizer

    from internvl_batch.engines.base import request_stop_token_ids
    from internvl_batch.model.configs import register_config_classes
    from internvl_batch.model.prompts import build_prompt

    register_config_classes()  # AutoTokenizer reads config.json (internvl_chat)
    vocab = AutoTokenizer.from_pretrained(model).get_vocab()
    return request_stop_token_ids(vocab, build_prompt(PROMPT, [MAX_NUM + 1]))


def _env(pin: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local cluster
    env.update(RAY_USAGE_STATS_ENABLED="0", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB))  # fmt: skip
    env.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    if pin:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    return env


def _run_side(side: str, spec_path: Path, pin: bool, log_dir: Path, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "--side", side, str(spec_path)]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    # A session of its own: on a timeout the side's whole tree (its Ray cluster too) goes.
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(pin), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[peers] killed after {timeout_s:.0f}s"
    log = log_dir / f"{spec_path.stem}.log"
    log.write_text(out + "\n----- stderr -----\n" + err)
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{NAMES[side]} side failed (rc {proc.returncode}, log {log}):\n{err[-3000:]}")
    return json.loads(line[7:])


def compare_run(check: common.AnswerCheck, label: str, this_run: dict[str, dict | None], n_rows: int) -> dict:
    """One run's answers against the bare engine's: the job's texts (same decoding as bare),
    Ray Data LLM's token ids (it decodes its own way). A crashed side, a lost or failed row
    is a failure too. Pops the answers from the results; returns {side: rows equal}."""
    for side, r in this_run.items():
        if r is None:
            check.failed(f"{label}: the {NAMES[side]} side crashed (its error is printed above)")
        elif r["rows"] != n_rows or r["failed"]:
            check.failed(f"{label}: {NAMES[side]}: {r['rows']}/{n_rows} rows, {r['failed']} failed: {r['errors']}")
    popped = {side: (r.pop("answers", None), r.pop("tokens", None)) for side, r in this_run.items() if r is not None}
    bare_answers, bare_tokens = popped.get("bare", (None, None))
    same = {}
    for side, kind, ref in (("job", 0, bare_answers), ("rdl", 1, bare_tokens)):
        got = popped.get(side, (None, None))[kind]
        if got is not None and ref is not None:
            what = "texts" if kind == 0 else "token ids"
            differ = check.compare(f"{label}, {what}", NAMES["bare"], ref, NAMES[side], got)
            same[side] = this_run[side]["same_as_bare"] = len(set(ref) | set(got)) - len(differ)
    return same


def _report(n: int, max_tokens: int, runs: dict[str, list[dict | None]], sides: list[str]) -> None:
    """`runs[side][i]`: run i's figures, None where the side crashed (left out, and counted)."""
    k = len(next(iter(runs.values())))
    fs = common.fmt_spread
    print(f"\n== {n} rows x {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG, max_tokens={max_tokens}, {k} run(s) per side: "
          f"median (min-max) ==")  # fmt: skip
    print(f"{'side':13} {'rows/s total':>20} {'rows/s steady':>20} {'total s':>18} {'busy s':>18} "
          f"{'start-up+tail s':>18} {'out tok':>8} {'prompt tok':>10} {'bad rows':>8} {'crashed':>7}")  # fmt: skip
    for side in sides:
        rs = [r for r in runs[side] if r is not None]
        if not rs:
            print(f"{NAMES[side]:13} every run crashed")
            continue
        print(f"{NAMES[side]:13} {fs([n / r['total_s'] for r in rs]):>20} "
              f"{fs([n / r['busy_s'] for r in rs]):>20} {fs([r['total_s'] for r in rs], '.1f'):>18} "
              f"{fs([r['busy_s'] for r in rs], '.1f'):>18} "
              f"{fs([r['total_s'] - r['busy_s'] for r in rs], '.1f'):>18} "
              f"{statistics.median(r['output_tokens'] for r in rs):>8.0f} "
              f"{statistics.median(r['prompt_tokens'] for r in rs):>10.0f} "
              f"{sum(r['failed'] + n - r['rows'] for r in rs):>8} {k - len(rs):>7}")  # fmt: skip
    for side in sides:
        same = [r["same_as_bare"] for r in runs[side] if r is not None and "same_as_bare" in r]
        if same:
            print(f"{NAMES[side]:13} answers equal to the bare engine's: {min(same)}-{max(same)} of {n} per run")
    print()
    for side in sides:
        rs = runs[side]
        common.emit(f"rows/s end to end, {NAMES[side]}, max_tokens {max_tokens}",
                    [n / r["total_s"] if r else None for r in rs], "rows/s", ".3f")  # fmt: skip
        common.emit(f"rows/s steady, {NAMES[side]}, max_tokens {max_tokens}",
                    [n / r["busy_s"] if r else None for r in rs], "rows/s", ".3f")  # fmt: skip
    for other in ("rdl", "bare"):
        if "job" in runs and other in runs:
            # Paired run by run: both sides of a pair ran minutes apart on the same machine.
            job, oth = runs["job"], runs[other]
            total = common.ratios([o and o["total_s"] for o in oth], [j and j["total_s"] for j in job])
            steady = common.ratios([o and o["busy_s"] for o in oth], [j and j["busy_s"] for j in job])
            common.emit(f"job/{NAMES[other]} end to end, max_tokens {max_tokens}", total, "x", ".2f")
            common.emit(f"job/{NAMES[other]} steady, max_tokens {max_tokens}", steady, "x", ".2f")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-tokens", default="16,128", help="comma-separated settings, each run on every side")
    common.add_runs_arg(ap)
    ap.add_argument("--sides", default=",".join(SIDES), help="subset of rdl,job,bare")
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 run, 16 rows, max_tokens 16")
    ap.add_argument("--model", help="checkpoint dir; default: the tiny checkpoint, built in the work dir")
    ap.add_argument("--no-pin", action="store_true", help="don't pin sides to core 0 / vLLM's threads to core 1")
    ap.add_argument("--json", help="also write every run's raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (images, outputs, per-side logs)")
    ap.add_argument("--side-timeout", type=float, default=1200, help="seconds one side may run")
    return ap


def main() -> int:
    common.use_this_checkout()
    args = build_parser().parse_args()
    if args.side:
        spec = json.loads(Path(args.spec).read_text())
        result = {"rdl": side_rdl, "job": side_job, "bare": side_bare}[args.side](spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    if args.quick:
        args.runs, args.rows, args.max_tokens = 1, 16, "16"
    sides = [s for s in args.sides.split(",") if s]
    settings = [int(x) for x in args.max_tokens.split(",")]
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    root = Path(tempfile.mkdtemp(prefix="peers-"))
    model = args.model
    if model is None:
        from internvl_batch.devtools.tiny_model import make_tiny_model

        model = str(make_tiny_model(root / "model"))
    manifest, rows = _inputs(root, args.rows)
    stop_ids = _stop_token_ids(model)
    print(f"work dir {root}; {len(rows)} images; sides {sides}; max_tokens {settings}; {args.runs} run(s); "
          f"pinned: {pin}", flush=True)  # fmt: skip
    raw: dict = {}
    check = common.AnswerCheck()
    started = time.monotonic()
    try:
        for max_tokens in settings:

            def side_fn(side: str, max_tokens: int = max_tokens):
                def call(run: int) -> dict | None:
                    tag = f"t{max_tokens}-run{run}-{side}"
                    spec = {"model": model, "rows": rows, "manifest": str(manifest), "media_dir": str(root / "media"),
                            "max_tokens": max_tokens, "stop_token_ids": stop_ids,
                            "out": str(root / "out" / tag)}  # fmt: skip
                    (root / "out").mkdir(exist_ok=True)
                    spec_path = root / f"{tag}.json"
                    spec_path.write_text(json.dumps(spec))
                    try:
                        r = _run_side(side, spec_path, pin, root, args.side_timeout)
                    except RuntimeError as e:  # one crashed side must not cost the whole benchmark
                        print(f"  !! max_tokens {max_tokens} run {run + 1}: {e}", flush=True)
                        return None
                    print(f"max_tokens {max_tokens} run {run + 1} {NAMES[side]:13} total {r['total_s']:6.1f}s "
                          f"busy {r['busy_s']:6.1f}s  rows/s total {len(rows) / r['total_s']:.3f} "
                          f"steady {len(rows) / r['busy_s']:.3f}  rows {r['rows']} failed {r['failed']} "
                          f"out tok {r['output_tokens']}", flush=True)  # fmt: skip
                    return r

                return call

            def after_run(run: int, this_run: dict, max_tokens: int = max_tokens) -> None:
                same = compare_run(check, f"max_tokens {max_tokens} run {run + 1}", this_run, len(rows))
                if same:
                    print(f"max_tokens {max_tokens} run {run + 1} answers equal to the bare engine's: "
                          + ", ".join(f"{NAMES[k]} {v}/{len(rows)}" for k, v in same.items()), flush=True)  # fmt: skip

            runs = common.run_rotated({s: side_fn(s) for s in sides}, args.runs, after_run=after_run,
                                      label=f"max_tokens {max_tokens} ")  # fmt: skip
            raw[str(max_tokens)] = runs
            _report(len(rows), max_tokens, runs, sides)
        print(f"\nwhole benchmark: {(time.monotonic() - started) / 60:.1f} min")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": len(rows), "runs": raw}, indent=1))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
