#!/usr/bin/env bash
# The prepared GPU check (README "Paper scale"): at most 8 minutes on one H100/H200. Writes the
# GPU section of benchmarks/README.md and benchmarks/gpu_check.json (beside --out).
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry --out /tmp/gpu.md   # CPU, small sizes: checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python benchmarks/gpu_check.py "$@"
