#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite. MLNPE_STRICT=1 turns "dependency missing" skips into
# failures, so no part of the suite can be skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MLNPE_STRICT=1
python -m pytest tests/python "$@"
