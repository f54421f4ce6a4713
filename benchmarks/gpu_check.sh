#!/usr/bin/env bash
# Every GPU measurement the fused loss still needs, as one script for one device call (under 8 minutes in all):
#   OUT=/some/dir bash benchmarks/gpu_check.sh      # on the device tool, $OUT is the folder that comes back
# Each step runs under its own time limit (7 min 5 s in all; 7 min 55 s with each step's 10 s kill grace), so a
# slow or failing step cannot eat the others' time. Every row of every step is printed and appended to
# $OUT/results.jsonl the moment it exists (a run cut short still leaves what it measured), each step's full output
# is in $OUT/<step>.log, and each step ends with one line: ok, or its exit status and the last line it wrote. Without CUDA (CI's dry run) every step exits
# at once with its "no CUDA device" line and the script exits 0; on a CUDA machine it exits 1 if any step failed.
set -u
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
JSONL="$OUT/results.jsonl"
FAILED=0
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, one summary line
    local name=$1 limit=$2 rc t0; shift 2
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - t0 )) last
    last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | tr -d '"\\' | cut -c1-300)
    if [ "$rc" = 0 ]; then
        echo "$name: ok (${secs}s): $last"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "$name: TIMED OUT after ${limit}s (rows so far in $JSONL): $last"; FAILED=1
    else
        echo "$name: exit $rc (${secs}s): $last"; FAILED=1
    fi
    printf '{"script": "gpu_check.sh", "step": "%s", "exit": %d, "seconds": %d, "last_line": "%s"}\n' \
        "$name" "$rc" "$secs" "$last" >>"$JSONL"
}
step env 20 "$PY" -c "
import shutil, subprocess, torch, triton
if shutil.which('nvidia-smi'):
    print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
print('torch', torch.__version__, 'triton', triton.__version__, 'cuda device', gpu)"
step exact 110 "$PY" benchmarks/gpu_exact.py --device cuda --jsonl "$JSONL" --json "$OUT/exact_cuda.json"
step loss_64k 120 "$PY" benchmarks/loss.py --device cuda --batch-sizes 16384,65536 --dtypes bf16 --dim 512 \
    --impls floor,materialised,open_clip,fused-compiled,fused-triton --reps 10 --jsonl "$JSONL" --json "$OUT/loss_cuda.json"
step loss_64k_tile32 55 "$PY" benchmarks/loss.py --device cuda --batch-sizes 65536 --dtypes bf16 --dim 512 \
    --impls floor,fused-triton --tile 32 --reps 10 --jsonl "$JSONL" --json "$OUT/loss_cuda_tile32.json"
step loss_1m 120 "$PY" benchmarks/loss.py --device cuda --batch-sizes 1048576 --dtypes bf16 --dim 512 \
    --impls fused-compiled,fused-triton --reps 1 --jsonl "$JSONL" --json "$OUT/loss_cuda_1m.json"
echo "results in $OUT (results.jsonl: every row as it came)"
if [ "$CUDA" = 1 ]; then exit "$FAILED"; fi
exit 0
