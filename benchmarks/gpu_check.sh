#!/usr/bin/env bash
# The GPU checks in one go, from the repository root, on a machine with an NVIDIA GPU:
#   bash benchmarks/gpu_check.sh [OUT]
# 1. the CUDA-marked tests (AMP bf16/fp16 vs fp32, channels_last, torch.compile, DDP with NCCL, a cuda fit),
# 2. `python -m cdkd reproduce --preset tiny --device cuda` (concurrently with 1: both are correctness checks),
# 3. benchmarks/gpu.py at the paper's sizes -> OUT/gpu_<device name>.json (alone on the GPU, after 1 and 2).
set -uo pipefail
OUT=${1:-results/bench}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi -L | tee "$OUT/gpu_check.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu_check.log"
REPRO=$(mktemp -d)
( timeout 420 $PY -m cdkd reproduce --preset tiny --device cuda --out "$REPRO/tiny" > "$OUT/reproduce_tiny_cuda.log" 2>&1;
  echo "reproduce exit $?" >> "$OUT/reproduce_tiny_cuda.log" ) &
$PY -m pytest tests/test_cuda.py -m gpu -v -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15
wait
tail -3 "$OUT/reproduce_tiny_cuda.log"
ls "$REPRO/tiny" >> "$OUT/reproduce_tiny_cuda.log" 2>&1
cp "$REPRO/tiny/summary.md" "$OUT/reproduce_tiny_cuda_summary.md" 2>/dev/null
$PY benchmarks/gpu.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
