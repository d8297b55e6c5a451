#!/usr/bin/env bash
# GPU check (< 5 minutes on one H200): bf16 NCCL steps for ddp, ZeRO-2, ZeRO-3 and fsdp on a
# BERT/RoBERTa-large-shaped encoder; prints tokens/s, peak memory and MFU per strategy.
# On a machine with nluft installed:      benchmarks/gpu_check.sh [gpu_check.py options]
# On a bare CUDA PyTorch image (no index): benchmarks/gpu_prepare.sh here first, carry .gpu-carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ARGS=()
if [ -d .gpu-carry/wheels ]; then
  "$PY" -m pip install --quiet --no-index --no-deps .gpu-carry/wheels/*.whl
  ARGS=(--tokenizer .gpu-carry/tokenizer)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py "${ARGS[@]}" "$@"
