"""The CPU venv's torchvision hook (internvl_batch/engines/vllm/torchvision_cpu.py), in fresh interpreters."""

import subprocess
import sys

import pytest

_C_LOADS = """
import importlib.util, pathlib, torch
spec = importlib.machinery.PathFinder.find_spec("torchvision")
lib = next(pathlib.Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
try:
    torch.ops.load_library(str(lib)); print("loads")
except OSError:
    print("fails")
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def c_extension_loads() -> bool:
    return _run(_C_LOADS).stdout.strip() == "loads"


def test_transforms_import_and_work():
    code = (
        "import torchvision.transforms as T\n"
        "from PIL import Image\n"
        "t = T.Compose([T.Resize((8, 8)), T.ToTensor()])\n"
        "print(tuple(t(Image.new('RGB', (20, 10))).shape))"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3, 8, 8)"


def test_c_ops_still_fail_loudly_where_they_cannot_load(c_extension_loads):
    if c_extension_loads:
        pytest.skip("torchvision's C extension loads here (GPU build): the hook is inert")
    code = "import torch, torchvision\ntorchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)"
    out = _run(code)
    assert out.returncode != 0
    assert "Couldn't load custom C++ ops" in out.stderr


def test_without_the_hook_torchvision_does_not_import(c_extension_loads):
    if c_extension_loads:
        pytest.skip("torchvision's C extension loads here (GPU build): nothing to work around")
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if type(f).__name__ != '_TorchvisionFinder']\n"
        "import torchvision"
    )
    out = _run(code)
    assert out.returncode != 0 and "torchvision::nms" in out.stderr


def test_find_spec_then_import_then_rearm_is_safe():
    # transformers probes with find_spec before importing; the plugin re-arms later.
    code = (
        "import importlib.util\n"
        "import internvl_batch.engines.vllm.torchvision_cpu as m\n"
        "importlib.util.find_spec('torchvision'); m.install()\n"
        "import torchvision.transforms; m.install(); print('ok')"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
