"""internvl-batch: offline InternVL2.5 inference over images and videos on Ray + vLLM.

Kept import-light on purpose: a `.pth` hook and every Ray worker import this package,
so nothing heavy (torch, vllm, ray) is imported here.
"""

__version__ = "0.1.0"
