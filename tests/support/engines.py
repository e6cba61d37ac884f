"""Engine test helpers: card-exact tiles, requests, the tiny model's engine config."""

import numpy as np

from internvl_batch.config import ModelConfig, SamplingConfig
from internvl_batch.devtools.card_reference import dynamic_preprocess
from internvl_batch.devtools.sample_media import sample_image
from internvl_batch.engines.base import EngineRequest
from internvl_batch.model.prompts import build_prompt

MAX_MODEL_LEN = 4096


def card_tiles(image, max_num: int) -> np.ndarray:
    """uint8 tiles exactly as the model card's dynamic_preprocess makes them."""
    return np.stack([np.asarray(t) for t in dynamic_preprocess(image, max_num=max_num, use_thumbnail=True)])


def image_request(
    rid: str,
    sizes_and_max: list[tuple[tuple[int, int], int]],
    question: str,
    seed: int = 0,
    media=None,
    template="internvl2_5",
):
    tiles = [card_tiles(sample_image(seed=seed + i, size=size), m) for i, (size, m) in enumerate(sizes_and_max)]
    prompt = build_prompt(question, [len(t) for t in tiles], media=media, template=template)
    return EngineRequest(id=rid, prompt=prompt, tiles=np.concatenate(tiles) if tiles else None)


def tiny_model_config(path, **kw) -> ModelConfig:
    base = dict(
        path=str(path),
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=8,
        max_images_per_prompt=8,
        engine_kwargs={"enforce_eager": True},
    )
    return ModelConfig(**{**base, **kw})


GREEDY_16 = SamplingConfig(temperature=0.0, max_tokens=16)


def agreement_requests() -> list[EngineRequest]:
    """21 inputs: single images of several sizes and max_num, multi-image, video frames, text."""
    reqs = []
    sizes = [(448, 448), (640, 480), (300, 900), (1200, 300), (97, 61), (800, 800), (1024, 768)]
    for i, size in enumerate(sizes):
        for j, max_num in enumerate((1, 6) if i % 2 else (4, 12)):
            reqs.append(image_request(f"img{i}-{max_num}", [(size, max_num)], "Describe the image.", seed=10 * i + j))
    reqs.append(image_request("multi2", [((640, 480), 4), ((300, 500), 2)], "Compare the images.", seed=3))
    reqs.append(image_request("multi3", [((400, 300), 2), ((200, 200), 1), ((900, 300), 3)], "Which is red?", seed=5))
    reqs.append(image_request("video8", [((320, 240), 1)] * 8, "What happens in the video?", seed=7, media="video"))
    reqs.append(image_request("video4", [((640, 360), 1)] * 4, "Describe this video.", seed=9, media="video"))
    for q in ("Hello, who are you?", "Write a short poem.", "Count to five."):
        reqs.append(EngineRequest(id=f"text-{q[:5]}", prompt=build_prompt(q)))
    return reqs


def n_answers(engine, n: int, max_tokens: int, seed: int):
    """One image request sampled `n` times on `engine`; its result, checked to hold `n`
    answers whose first is also the row's `text` / `finish_reason` / `num_output_tokens`."""
    from internvl_batch.status import Status

    base = image_request("r", [((320, 240), 1)], "Describe the image.")
    sampling = SamplingConfig(temperature=1.0, seed=seed, max_tokens=max_tokens, n=n)
    [res] = engine.generate([EngineRequest(id="r", prompt=base.prompt, tiles=base.tiles, sampling=sampling)])
    assert res.status == Status.OK and len(res.texts) == len(res.finish_reasons) == len(res.output_token_counts) == n
    assert (res.text, res.finish_reason, res.num_output_tokens) == (
        res.texts[0], res.finish_reasons[0], res.output_token_counts[0])  # fmt: skip
    return base, res
