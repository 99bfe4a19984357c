#!/usr/bin/env bash
# Does iddc work on this GPU, and how fast? Runs scripts/gpu_check.py with the machine's own Python
# and torch (set PYTHON to choose another interpreter); the report goes to --markdown (default
# gpu_report.md in the current folder). docs/gpu.md says what it checks.
#
#   bash scripts/gpu_check.sh                          # tests and measurements on the GPU
#   bash scripts/gpu_check.sh --only eval              # one step again
#   bash scripts/gpu_check.sh --device cpu --quick     # small sizes on the CPU, no test step
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
