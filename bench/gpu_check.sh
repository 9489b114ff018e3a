#!/usr/bin/env bash
# One GPU run that gives the whole picture of the Triton kernels: the GPU-marked tests (fp16/bf16
# tolerances, long sequences, batch 32), the interpreter-free rerun of the kernel tests on CUDA,
# and the kernel benchmark table. Under 5 minutes on an H200.
#
# Needs: an NVIDIA GPU with its driver; python3 with torch (CUDA build), triton, numpy, pytest,
# hydra-core, omegaconf, scipy, pandas, torch-geometric (for the GATConv comparison; optional),
# mamba-ssm (for its selective_scan_fn comparison; optional). Run from the repository root:
#     bash bench/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/gpu_tests.txt and OUT_DIR/kernels.txt (default OUT_DIR: outputs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
# The kernel tests again on CUDA (the same references), plus the gpu-marked ones.
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_triton_scan.py tests/test_triton_gat.py \
    tests/test_triton_registration.py tests/test_ops.py 2>&1 | tee "$OUT/gpu_tests.txt" || true
timeout 150 python3 -m bench.kernels 2>&1 | tee "$OUT/kernels.txt"
