"""Build-time check (docker/Dockerfile): torch's CUDA is the base image's CUDA; print the driver it needs.

torch brings its own CUDA runtime (pip's nvidia-*/cuda-toolkit wheels), so the base image's
CUDA libraries are not what runs. The base image still matters: its NVIDIA_REQUIRE_CUDA
makes the NVIDIA container runtime refuse to start the container on a node whose driver
is too old for that CUDA, with a clear message, instead of torch failing later. That
check only protects us when the base image's CUDA is torch's, hence this build failure.
"""

from __future__ import annotations

import os
import sys

# Linux driver of each CUDA release (NVIDIA's CUDA toolkit release notes, "toolkit driver version").
MIN_DRIVER = {
    "12.1": "530.30.02",
    "12.4": "550.54.14",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}


def major_minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def problems(torch_cuda: str | None, base_cuda: str | None) -> list[str]:
    if torch_cuda is None:
        return ["torch has no CUDA (a CPU build of torch was installed): the GPU extra must bring CUDA torch"]
    if base_cuda is None:
        return ["the base image sets no CUDA_VERSION: build FROM a rayproject/ray:...-cuXYZ image"]
    if major_minor(torch_cuda) != major_minor(base_cuda):
        want = major_minor(torch_cuda).replace(".", "")
        return [
            f"torch is built for CUDA {torch_cuda} but the base image has CUDA {base_cuda}: "
            f"build FROM the -cu{want} variant of the Ray image (see docker/README.md)"
        ]
    return []


def main() -> int:
    import torch

    torch_cuda, base_cuda = torch.version.cuda, os.environ.get("CUDA_VERSION")
    found = problems(torch_cuda, base_cuda)
    for p in found:
        print(f"error: {p}", file=sys.stderr)
    if not found:
        driver = MIN_DRIVER.get(major_minor(torch_cuda), f"the one of CUDA {torch_cuda}")
        print(
            f"torch {torch.__version__}: CUDA {torch_cuda} = base image CUDA {base_cuda}; nodes need an NVIDIA driver >= {driver}"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
