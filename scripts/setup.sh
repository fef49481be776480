#!/usr/bin/env bash
# Sets up a virtual environment in .venv with mlnpe and its test dependencies (idempotent).
# torch is installed first, pinned to the CPU build that this machine keeps on local disk; otherwise pip
# would pull a multi-GB CUDA build as a dependency of sbi.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -c "import mlnpe, torch, sbi, zuko; print('mlnpe', mlnpe.__version__, '| torch', torch.__version__, '| sbi', sbi.__version__, '| zuko', zuko.__version__)"
