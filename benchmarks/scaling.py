"""Data-parallel scaling: training samples/s of `python -m clipcore.train` under torchrun with 1 and N processes.

    python benchmarks/scaling.py --procs 1,2 --model tiny-vit --batch-size 128 --steps 12         # CPU (gloo)
    python benchmarks/scaling.py --procs 1,2,4,8 --device cuda --model small --batch-size 1024   # GPUs (nccl)

Each row is a real training run (same global batch, same data: the embedded animal-mnist) launched by torchrun;
samples/s is measured from the run's metrics.jsonl between the end of step 2 and the last step (compile-free
warm-up excluded). On CPU the machine's cores are shared out: every process gets cores / N threads, so the rows
compare one process using all cores with N processes splitting them (the gloo all-gather and gradient all-reduce
are the cost being measured). `x 1 proc` divides by the 1-process row of the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def run(nproc: int, args, logs: str) -> float:
    threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "clipcore.train", "--model", args.model, "--batch-size", str(args.batch_size), "--max-steps",
           str(args.steps), "--warmup", "1", "--log-every", "1", "--logs-dir", logs, "--name", f"p{nproc}",
           "--device", args.device, "--precision", args.precision]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(x) for x in open(Path(logs) / f"p{nproc}" / "metrics.jsonl") if '"loss"' in x]
    first, last = rows[1], rows[-1]
    return (last["step"] - first["step"]) * args.batch_size / (last["time"] - first["time"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2")
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"device: {where}; torch {torch.__version__}; model {args.model}, global batch {args.batch_size}, "
          f"{args.precision}, {args.steps} steps\n")
    print("| processes | samples/s | x 1 proc |\n|---:|---:|---:|")
    base = None
    with tempfile.TemporaryDirectory() as logs:
        for n in (int(x) for x in args.procs.split(",")):
            sps = run(n, args, logs)
            base = base or sps
            print(f"| {n} | {sps:,.0f} | {sps / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
