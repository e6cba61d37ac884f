"""Bare-engine benchmark: pre-tiled uint8 tiles vs PIL images that vLLM tiles itself.

One engine replica, the same images, prompts and sampling on both paths:
  pre-tiled   `VLLMEngine.generate` over requests carrying our uint8 tiles (media/tiling.py,
              tiled beforehand and off the clock: in the job, CPU workers elsewhere do it);
  vLLM tiles  the same PIL images through vLLM's own InternVL processor
              (`VLLMEngine.raw_generate`, every image in flight at once), which tiles in
              the engine's front-end process.
Both paths use the engine's sampling parameters for the request (`sampling_params`: greedy,
the template separator as the only stop).

Per path and run: images/s, output tokens/s, and the CPU time of this process per image:
the engine's front-end (vLLM V1 runs multimodal processing there; the EngineCore is a
separate process). Printed as median (min-max) over --runs, the paths in rotated order;
the ratios are paired run by run. Each run changes one pixel per image so that vLLM's
caches never skip the work, and gives both paths the same pixels.

Answers are checked equal, per image: the prompt token ids vLLM built on both paths
(`prompt_token_ids` vs the stock path's, in the warm-up) and the output token ids of both
paths in every run. A difference exits 1 naming the images.

    .venv/bin/python benchmarks/engine.py [--images 32] [--max-num 12] [--max-tokens 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

QUESTION = "Describe the image."
PATHS = {"pretiled": "pre-tiled", "stock": "vLLM tiles"}


def _images(n: int, run: int):
    """Run `run`'s images: the same base images, one pixel set per run (caches can't hit)."""
    from internvl_batch.devtools.sample_media import sample_image

    ims = []
    for i in range(n):
        im = sample_image(seed=i, size=(1024, 768))
        im.putpixel((0, 0), (run % 256, (run // 256) % 256, 7))
        ims.append(im)
    return ims


def compare_run(check: common.AnswerCheck, run: int, this: dict) -> None:
    """One run's output token ids, per image: the pre-tiled path vs vLLM's own tiling."""
    check.compare(f"output token ids, run {run + 1}", PATHS["stock"], this["stock"]["tokens"],
                  PATHS["pretiled"], this["pretiled"]["tokens"])  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=".cache/tiny-internvl2_5", help="checkpoint dir (the tiny one is built there)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=16)
    common.add_runs_arg(ap)
    return ap


def main() -> int:
    common.use_this_checkout()
    args = build_parser().parse_args()

    from internvl_batch.config import ModelConfig, SamplingConfig
    from internvl_batch.devtools.tiny_model import make_tiny_model
    from internvl_batch.engines.base import EngineRequest
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.media.tiling import tile_image
    from internvl_batch.model.prompts import build_prompt

    if not (Path(args.model) / "config.json").exists():
        make_tiny_model(args.model)
    model = ModelConfig(**common.model_section(args.model, max_num_seqs=args.images, max_dynamic_patch=args.max_num))
    engine = VLLMEngine(model, SamplingConfig(max_tokens=args.max_tokens))
    pool = ThreadPoolExecutor(max_workers=args.images)  # raw_generate blocks: one thread per image in flight
    check = common.AnswerCheck()
    tiling_ms: list[float] = []

    def inputs(run: int):
        ims = _images(args.images, run)
        t0 = time.perf_counter()
        tiles = [tile_image(im, max_num=args.max_num) for im in ims]
        tiling_ms.append((time.perf_counter() - t0) * 1000 / len(ims))
        reqs = [
            EngineRequest(id=f"img{i}", prompt=build_prompt(QUESTION, [len(t)]), tiles=t, media_key=f"run{run}-img{i}")
            for i, t in enumerate(tiles)
        ]
        return ims, reqs

    def pretiled(reqs) -> dict:
        results = engine.generate(reqs)
        bad = [r for r in results if r.status != "ok"]
        if bad:
            check.failed(f"pre-tiled: {len(bad)} request(s) not ok: {[r.id for r in bad][:10]} ({bad[0].error})")
        return {r.id: tuple(r.token_ids or ()) for r in results}

    def stock_outs(ims, reqs) -> list:
        params = engine.sampling_params(reqs[0])  # the same for every request here
        feed = [{"prompt": r.prompt.with_placeholders, "multi_modal_data": {"image": im}} for r, im in zip(reqs, ims)]
        return list(pool.map(lambda inp: engine.raw_generate(inp, params), feed))

    def stock(ims, reqs) -> dict:
        return {r.id: tuple(o.outputs[0].token_ids) for r, o in zip(reqs, stock_outs(ims, reqs))}

    def timed(fn, *a) -> dict:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        tokens = fn(*a)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return {"cpu_s": cpu, "wall_s": wall, "out_tokens": sum(len(t) for t in tokens.values()), "tokens": tokens}

    try:
        # Warm-up, both paths, off the clock; and the prompts vLLM built on both.
        ims, reqs = inputs(-1)
        pretiled(reqs)
        stock_prompts = {r.id: list(o.prompt_token_ids) for r, o in zip(reqs, stock_outs(ims, reqs))}
        ours_prompts = {r.id: engine.prompt_token_ids(r) for r in reqs}
        check.compare("prompt token ids (warm-up)", PATHS["stock"], stock_prompts, PATHS["pretiled"], ours_prompts)
        tiling_ms.clear()

        runs_inputs: dict[int, tuple] = {}

        def side(name):
            def call(run: int) -> dict:
                if run not in runs_inputs:  # tiled once per run, for whichever path goes first
                    runs_inputs[run] = inputs(run)
                ims, reqs = runs_inputs[run]
                return timed(pretiled, reqs) if name == "pretiled" else timed(stock, ims, reqs)

            return call

        def after_run(run: int, this: dict) -> None:
            compare_run(check, run, this)
            runs_inputs.pop(run, None)

        res = common.run_rotated({"pretiled": side("pretiled"), "stock": side("stock")}, args.runs, after_run=after_run)
    finally:
        pool.shutdown()
        engine.shutdown()

    n = args.images
    print(f"\n{n} images 1024x768, max_num={args.max_num} ({len(reqs[0].tiles)} tiles each), up to "
          f"{args.max_tokens} output tokens each; median (min-max) over {args.runs} run(s)")  # fmt: skip
    for key, name in PATHS.items():
        rs = res[key]
        common.emit(f"images/s, {name}", [n / r["wall_s"] for r in rs], "images/s", ".2f")
        common.emit(f"output tokens/s, {name}", [r["out_tokens"] / r["wall_s"] for r in rs], "tok/s", ".1f")
        common.emit(f"front-end CPU ms/image, {name}", [r["cpu_s"] * 1000 / n for r in rs], "ms", ".1f")
    p, s = res["pretiled"], res["stock"]
    cpu_ratio = common.ratios([r["cpu_s"] for r in p], [r["cpu_s"] for r in s])
    common.emit("front-end CPU per image, pre-tiled/vLLM tiles", cpu_ratio, "x", ".2f")
    common.emit(
        "throughput, pre-tiled/vLLM tiles",
        common.ratios([r["wall_s"] for r in s], [r["wall_s"] for r in p]),
        "x",
        ".2f",
    )
    common.emit("our tiling (card-exact, outside the engine) ms/image", tiling_ms, "ms", ".1f")
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
