#!/usr/bin/env bash
# Sets up the environment and runs the demo: trains a small two-level model for about two minutes on the CPU,
# then prints posterior summaries of a new dataset beside the true values and the exact posterior.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m mlnpe.examples.demo "$@"
