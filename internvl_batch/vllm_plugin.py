"""vLLM plugin entry point (group `vllm.general_plugins`, declared in pyproject.toml).

vLLM calls `register()` in every process it starts, spawned engine cores included, so
what is registered here is visible wherever the model is loaded. It must stay cheap and
idempotent.
"""

from __future__ import annotations


def register() -> None:
    from internvl_batch import _torchvision_cpu
    from internvl_batch.hf_config import register_config_classes

    _torchvision_cpu.install()
    register_config_classes()
