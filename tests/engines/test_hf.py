"""The HF reference engine's several answers per prompt (sampling.n)."""

import pytest

from tests.support.engines import n_answers

pytestmark = pytest.mark.slow


def test_n_answers_each_cut_at_its_own_stop(hf_engine):
    base, res = n_answers(hf_engine, 3, max_tokens=12, seed=3)
    stops = set(hf_engine.stop_ids(hf_engine.tokenizer.get_vocab(), base))
    assert not stops & set(res.token_ids[:-1])  # cut at its own first stop, not padded to the longest
    assert len(res.token_ids) == res.output_token_counts[0]
    for count, reason in zip(res.output_token_counts, res.finish_reasons):
        assert count in range(1, 13) and reason in ("stop", "length")
