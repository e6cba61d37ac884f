"""Model replicas: engines take preprocessed requests and return results.

They know nothing of Ray or manifests. `build_engine` picks one from the config.
"""

from internvl_batch.engines.base import Engine, EngineRequest, EngineResult, build_engine

__all__ = ["Engine", "EngineRequest", "EngineResult", "build_engine"]
