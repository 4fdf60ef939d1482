#!/usr/bin/env bash
# The GPU measurement of the training step (benchmarks/README.md, "GPU throughput"), in one command that fits a
# short GPU lease: about 8 minutes of work, then the log is in $OUT (or /tmp).
#
#   bash benchmarks/gpu_session.sh
#
# Run from anywhere, with the python3 that holds PyTorch (CUDA). Python packages that machine may
# lack (pydantic and its helpers, ruamel.yaml) are installed from wheels in .whl/ when that folder
# exists (pip install --no-index --target /tmp/site); nothing is downloaded. What it prints: the
# chip and versions, then benchmarks/train_gpu.py's table (paper configuration, bf16, batch 64 then
# 5, eager and compiled with CUDA graphs, full and baseline), a kernel profile of the full step at
# batch 64 per mode, and last `paper full bf16 MFU: X%`.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/pfcvr_inductor}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
  | tee "$out/gpu.txt"
python3 -c "import torch, transformers, pydantic; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__, 'pydantic', pydantic.__version__)" \
  2>&1 | tee -a "$out/gpu.txt"
timeout 500 python3 benchmarks/train_gpu.py --steps 20 --budget-s 400 --profile 2>&1 \
  | tee "$out/train_gpu.log"
