"""The vLLM engine on pre-tiled inputs (real vLLM, CPU build; the CUDA build runs the same code)."""

import json

import jsonschema
import numpy as np
import pytest

from internvl_batch.config import SamplingConfig
from internvl_batch.devtools.sample_media import sample_image
from internvl_batch.engines.base import EngineRequest
from internvl_batch.model.prompts import IMG_CONTEXT, build_prompt
from tests.support.engines import MAX_MODEL_LEN, card_tiles, image_request, n_answers

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("max_num", [1, 2, 6, 12])
def test_engine_sees_256_context_tokens_per_tile(vllm_engine, max_num):
    req = image_request("r", [((1000, 700), max_num)], "Describe.")
    ids = vllm_engine.prompt_token_ids(req)
    ctx = vllm_engine.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    assert ids.count(ctx) == 256 * req.num_tiles
    assert req.num_tiles == (1 if max_num == 1 else req.prompt.tiles_per_image[0])


def test_pretiled_equals_vllm_own_tiling_and_skips_it(vllm_engine, monkeypatch):
    """Our tiles in, the same tokens out as when vLLM tiles the PIL image itself, and the
    front-end runs no image processor for the pre-tiled request."""
    from vllm import SamplingParams
    from vllm.transformers_utils.processors import internvl as vllm_internvl

    calls = []
    original = vllm_internvl.InternVLImageProcessor.__call__

    def counting(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(vllm_internvl.InternVLImageProcessor, "__call__", counting)
    image = sample_image(seed=42, size=(800, 600))
    prompt = build_prompt("Describe the image.", [len(card_tiles(image, 12))])
    req = EngineRequest(id="x", prompt=prompt, tiles=card_tiles(image, 12))
    ours = vllm_engine.generate([req])[0]
    assert ours.status == "ok"
    assert calls == []

    params = SamplingParams(
        temperature=0, max_tokens=16, stop_token_ids=list(vllm_engine.sampling_params(req).stop_token_ids)
    )
    stock = vllm_engine.raw_generate({"prompt": prompt.with_placeholders, "multi_modal_data": {"image": image}}, params)
    assert calls, "the stock path should have run vLLM's own tiling"
    assert list(stock.outputs[0].token_ids) == list(ours.token_ids)
    assert len(stock.prompt_token_ids) == ours.num_prompt_tokens


def test_context_overflow_is_a_row_error_and_the_batch_goes_on(vllm_engine):
    big = image_request("big", [((1024, 768), 12), ((768, 1024), 12)], "Too long.")
    assert big.prompt.num_image_context_tokens > MAX_MODEL_LEN
    batch = [image_request("a", [((640, 480), 4)], "Describe."), big, EngineRequest(id="t", prompt=build_prompt("Hi"))]
    results = vllm_engine.generate(batch)
    assert [r.id for r in results] == ["a", "big", "t"]
    assert [r.status for r in results] == ["ok", "context_overflow", "ok"]
    assert "max_model_len=4096" in results[1].error
    assert results[0].num_output_tokens == 16


def test_input_vllm_rejects_fails_alone(vllm_engine):
    bad_size = EngineRequest(
        id="bad", prompt=build_prompt("Describe.", [1]), tiles=np.zeros((1, 224, 224, 3), np.uint8)
    )
    good = image_request("good", [((500, 500), 2)], "Describe.")
    results = vllm_engine.generate([good, bad_size, good])
    assert [r.status for r in results] == ["ok", "engine_error", "ok"]
    assert "pixel_values_flat" in results[1].error
    assert results[0].token_ids == results[2].token_ids


@pytest.mark.parametrize(
    "tiles_per_image,n_tiles,status",
    [((14,), 14, "too_large"), ((1,) * 9, 9, "too_large"), ((2,), 3, "engine_error")],
)
def test_requests_the_engine_cannot_take(vllm_engine, tiles_per_image, n_tiles, status):
    req = EngineRequest(
        id="r", prompt=build_prompt("q", tiles_per_image), tiles=np.zeros((n_tiles, 448, 448, 3), np.uint8)
    )
    (result,) = vllm_engine.generate([req])
    assert result.status == status and result.error


def test_json_schema_constrained_output_parses(vllm_engine):
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string", "enum": ["cat", "dog", "bird"]}, "outdoor": {"type": "boolean"}},
        "required": ["animal", "outdoor"],
        "additionalProperties": False,
    }
    sampling = SamplingConfig(max_tokens=64, json_schema=schema)
    reqs = [
        EngineRequest(id=str(i), prompt=r.prompt, tiles=r.tiles, sampling=sampling)
        for i, r in enumerate([image_request("a", [((640, 480), 2)], "Label it as JSON.", seed=s) for s in range(3)])
    ]
    for res in vllm_engine.generate(reqs):
        assert res.status == "ok", res.error
        if res.finish_reason == "length":
            pytest.fail(f"JSON not finished in 64 tokens: {res.text!r}")
        jsonschema.validate(json.loads(res.text), schema)


def test_media_key_does_not_change_the_answer(vllm_engine):
    req = image_request("k", [((640, 480), 4)], "Describe.", seed=1)
    keyed = EngineRequest(id="k2", prompt=req.prompt, tiles=req.tiles, media_key="sha-of-the-media")
    a, b = vllm_engine.generate([req, keyed])
    assert a.token_ids == b.token_ids


def test_min_tokens_holds_back_a_stop_until_it_is_reached(vllm_engine):
    req = image_request("m", [((640, 480), 2)], "Describe.", seed=2)
    free = vllm_engine.generate([req])[0]
    # A stop string the answer meets at once: its first token's text.
    first = vllm_engine.tokenizer.decode(free.token_ids[:1])
    assert first.strip(), f"first token decodes to whitespace: {free.token_ids[:4]}"

    def answer(**sampling):
        params = SamplingConfig(temperature=0.0, max_tokens=16, stop=(first,), **sampling)
        return vllm_engine.generate([EngineRequest(id="m", prompt=req.prompt, tiles=req.tiles, sampling=params)])[0]

    stopped, held = answer(), answer(min_tokens=8)
    assert stopped.finish_reason == "stop" and stopped.num_output_tokens <= 1
    assert held.num_output_tokens >= 8
    assert held.token_ids[:8] == free.token_ids[:8]


def test_n_answers_per_request_each_its_own(vllm_engine):
    """sampling.n reaches vLLM's n: three answers, the first also the row's `response`."""
    base, res = n_answers(vllm_engine, 3, max_tokens=6, seed=7)
    assert all(1 <= n <= 6 for n in res.output_token_counts)
    [greedy] = vllm_engine.generate([EngineRequest(id="g", prompt=base.prompt, tiles=base.tiles)])
    assert len(greedy.texts) <= 1  # n defaults to one answer
