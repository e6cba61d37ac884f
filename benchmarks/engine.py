"""Bare-engine benchmark: pre-tiled uint8 tiles vs PIL images that vLLM tiles itself.

Same replica, same images, same prompts, one run. Prints images/s, output tokens/s, and
the CPU time the engine's front-end process spends per image (vLLM V1 runs multimodal
processing there; the EngineCore is a separate process). With pre-tiled inputs that
cost moves to our CPU workers, which the job runs elsewhere, in parallel.

    .venv/bin/python benchmarks/engine.py [--model DIR] [--images 32] [--max-num 12]
"""

from __future__ import annotations

import argparse
import os
import time


def _run(engine, requests_or_inputs, call) -> tuple[float, float, int]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n_tokens = call(requests_or_inputs)
    return time.process_time() - cpu0, time.perf_counter() - wall0, n_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".cache/tiny-internvl2_5")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    from internvl_batch.config import ModelConfig, SamplingConfig
    from internvl_batch.devtools.card_reference import dynamic_preprocess
    from internvl_batch.devtools.sample_media import sample_image
    from internvl_batch.devtools.tiny_model import make_tiny_model
    from internvl_batch.engines.base import EngineRequest
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.model.prompts import build_prompt

    if not os.path.exists(os.path.join(args.model, "config.json")):
        make_tiny_model(args.model)
    images = [sample_image(seed=i, size=(1024, 768)) for i in range(args.images)]
    t0 = time.perf_counter()
    tiles = [
        np.stack([np.asarray(t) for t in dynamic_preprocess(im, max_num=args.max_num, use_thumbnail=True)])
        for im in images
    ]
    tiling_ms = (time.perf_counter() - t0) * 1000 / len(images)
    sampling = SamplingConfig(max_tokens=args.max_tokens)
    model = ModelConfig(
        path=args.model,
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=args.images,
        max_dynamic_patch=args.max_num,
        enforce_eager=True,
        cpu_kvcache_gib=2,
    )
    engine = VLLMEngine(model, sampling)
    try:
        from vllm import SamplingParams

        # ignore_eos: both paths decode exactly max_tokens, so token rates compare
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)

        def pretiled(round_id: int):
            reqs = [
                EngineRequest(
                    id=str(i),
                    prompt=build_prompt("Describe the image.", [len(t)]),
                    tiles=t,
                    media_key=f"r{round_id}-{i}",
                )
                for i, t in enumerate(tiles)
            ]
            inputs = [engine._vllm_input(r) for r in reqs]
            outs = engine._llm.generate(inputs, params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)

        def stock(round_id: int):
            # distinct pixels each round, so vLLM's processor cache can't skip the tiling
            ims = []
            for im in images:
                im = im.copy()
                im.putpixel((0, 0), (round_id % 256, 7, 7))
                ims.append(im)
            prompt = build_prompt("Describe the image.", [1]).with_placeholders
            outs = engine._llm.generate(
                [{"prompt": prompt, "multi_modal_data": {"image": im}} for im in ims], params, use_tqdm=False
            )
            return sum(len(o.outputs[0].token_ids) for o in outs)

        pretiled(-1), stock(-1)  # warm-up both paths
        rows = {}
        for name, fn in (("pre-tiled uint8", pretiled), ("PIL, vLLM tiles", stock)):
            best = None
            for r in range(args.rounds):
                cpu, wall, toks = _run(engine, r, fn)
                if best is None or wall < best[1]:
                    best = (cpu, wall, toks)
            rows[name] = best
    finally:
        engine.shutdown()

    n = len(images)
    print(
        f"\n{n} images 1024x768, max_num={args.max_num} ({len(tiles[0])} tiles each), "
        f"{args.max_tokens} output tokens each, best of {args.rounds}"
    )
    print(f"{'path':18} {'images/s':>9} {'out tok/s':>10} {'front-end CPU ms/image':>23}")
    for name, (cpu, wall, toks) in rows.items():
        print(f"{name:18} {n / wall:9.2f} {toks / wall:10.1f} {cpu * 1000 / n:23.1f}")
    (pc, pw, _), (sc, sw, _) = rows["pre-tiled uint8"], rows["PIL, vLLM tiles"]
    print(
        f"ratio pre-tiled/stock: throughput {sw / pw:.2f}x, front-end CPU per image {pc / sc:.2f}x "
        f"(card tiling on a CPU worker, outside the engine: {tiling_ms:.1f} ms/image)"
    )


if __name__ == "__main__":
    main()
