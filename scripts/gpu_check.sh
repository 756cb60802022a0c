#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): OPT-125m's shape on CUDA, no network needed.
#   bash scripts/gpu_check.sh [OUT_DIR]            # bench (bf16 training tokens/s and MFU,
#                                                  # sampling and 5-beam generation tokens/s,
#                                                  # peak GPU memory, 4 cells on one GPU
#                                                  # against 1), then bf16 against float32
#   GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh    # a tiny OPT on any device (the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py --out "${1:-gpu_check}" ${GPU_CHECK_SMALL:+--small}
