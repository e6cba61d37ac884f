"""`smoke`: the tiny checkpoint through vLLM's stock InternVL path (CPU build here; CUDA runs the same code)."""

import pytest

from internvl_batch.devtools import smoke
from internvl_batch.devtools.sample_media import sample_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tiny_model_dir):
    images = [sample_image(seed=1), sample_image(seed=2), sample_image(seed=1)]
    return smoke.generate(tiny_model_dir, images, "Describe the image.", max_tokens=16)


def test_generates_tokens_for_an_image_prompt(results):
    first = results[0]
    assert len(first.token_ids) == 16
    assert first.text
    # 640x480 -> a 2x2 grid (4 tiles) + thumbnail = 5 tiles of 256 image tokens each
    assert first.num_prompt_tokens > 5 * 256


def test_output_changes_when_the_image_changes(results):
    assert results[0].token_ids != results[1].token_ids


def test_same_image_same_output(results):
    assert results[0].token_ids == results[2].token_ids
