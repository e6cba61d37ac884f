"""vLLM plugin entry point (group `vllm.general_plugins`, declared in pyproject.toml).

vLLM calls `register()` in every process it starts, spawned engine cores included, so
what is registered here is visible wherever the model is loaded. It must stay cheap and
idempotent: the model class is registered by name and imported only when used.
"""

from __future__ import annotations

PRETILED_ARCHITECTURE = "InternVLPretiledChatModel"


def register() -> None:
    from internvl_batch.engines.vllm import torchvision_cpu
    from internvl_batch.model.configs import register_config_classes

    torchvision_cpu.install()
    register_config_classes()

    from vllm import ModelRegistry

    if PRETILED_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            PRETILED_ARCHITECTURE, "internvl_batch.engines.vllm.pretiled:InternVLPretiledChatModel"
        )
