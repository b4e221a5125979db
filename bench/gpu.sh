#!/usr/bin/env bash
# One device call: every GPU measurement of the pipeline (see pipeline/benchmarks/gpu/).
#   bash bench/gpu.sh [--budget S] [--smoke] ...     results in $OUT (default bench/results/out)
# Needs python3 with torch + numpy, lrt/, pipeline/_rust.abi3.so and .gpu_data/ (carried).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; nvidia-smi -L 2>&1 | head -4
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
  "$PY" -c "import pipeline.data.loader, lrt; print('imports ok')"
  ls -la pipeline/_rust.abi3.so .gpu_data/tokens 2>&1 | head -12
} 2>&1 | tee "$OUT/run.log"
"$PY" -u -m pipeline.benchmarks.gpu --out "$OUT" "$@" 2>&1 | tee -a "$OUT/stdout.log"
exit "${PIPESTATUS[0]}"
