#!/usr/bin/env bash
# Every GPU measurement issue 6 still needs, as one script for one device call (about 8 minutes on an H100/H200):
#   OUT=/some/dir bash benchmarks/gpu_check.sh      # on the device tool, $OUT is the folder that comes back
# Each step has its own time limit, so a slow or failing step cannot eat the others' time; the JSON files and
# logs land in $OUT (default benchmarks/results/gpu). Paste the tables into benchmarks/README.md with the device.
set -u
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, note the exit status
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "   exit $? ($(tail -n 1 "$OUT/$name.log"))"
}
{ nvidia-smi; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >"$OUT/env.txt" 2>&1
step exact 120 "$PY" benchmarks/gpu_exact.py --device cuda --json "$OUT/exact_cuda.json"
step loss_64k 180 "$PY" benchmarks/loss.py --device cuda --batch-sizes 16384,65536 --dtypes bf16 --dim 512 \
    --impls floor,materialised,open_clip,fused-compiled,fused-triton --reps 10 --json "$OUT/loss_cuda.json"
step loss_64k_tile32 60 "$PY" benchmarks/loss.py --device cuda --batch-sizes 65536 --dtypes bf16 --dim 512 \
    --impls floor,fused-triton --tile 32 --reps 10 --json "$OUT/loss_cuda_tile32.json"
step loss_1m 150 "$PY" benchmarks/loss.py --device cuda --batch-sizes 1048576 --dtypes bf16 --dim 512 \
    --impls fused-triton,fused-compiled --reps 2 --json "$OUT/loss_cuda_1m.json"
echo "results in $OUT"
