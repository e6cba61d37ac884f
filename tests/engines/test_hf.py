"""The HF reference engine's several answers per prompt (sampling.n)."""

import pytest

from internvl_batch.config import SamplingConfig
from internvl_batch.engines.base import EngineRequest
from internvl_batch.status import Status
from tests.support.engines import image_request

pytestmark = pytest.mark.slow


def test_n_answers_each_cut_at_its_own_stop(hf_engine):
    base = image_request("r", [((320, 240), 1)], "Describe the image.")
    sampling = SamplingConfig(temperature=1.0, seed=3, max_tokens=12, n=3)
    [res] = hf_engine.generate([EngineRequest(id="r", prompt=base.prompt, tiles=base.tiles, sampling=sampling)])
    assert res.status == Status.OK and len(res.texts) == len(res.finish_reasons) == len(res.output_token_counts) == 3
    assert (res.text, res.finish_reason, res.num_output_tokens) == (
        res.texts[0], res.finish_reasons[0], res.output_token_counts[0])  # fmt: skip
    stops = set(hf_engine.stop_ids(hf_engine.tokenizer.get_vocab(), base))
    assert not stops & set(res.token_ids[:-1])  # cut at its own first stop, not padded to the longest
    assert len(res.token_ids) == res.output_token_counts[0]
    for count, reason in zip(res.output_token_counts, res.finish_reasons):
        assert 1 <= count <= 12 and reason in ("stop", "length")
