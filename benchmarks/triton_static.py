"""Compile clipcore's Triton kernels for a GPU without one: shared memory, registers and spills per block shape.

    python benchmarks/triton_static.py --dims 256,512 --arch 90 --json benchmarks/results/triton_static_sm90.json

Triton compiles to PTX and ptxas (shipped with triton) assembles it for the target (sm_90a = H100/H200) on any
machine; no driver is needed. What this cannot tell is speed: it answers whether a block shape fits the SM (shared
memory <= 227 KiB on sm_90) and whether the kernel spills registers to local memory (a spill in the inner loop
costs bandwidth). Kernels of clipcore/fused_triton.py: forward (row log-sum-exp + column partials) and backward
(atomic dY layout), fp32 accumulation, compiled by ``clipcore.fused_triton_aot.compile_for`` exactly as ``fused_contrastive_loss(...,
kernel="triton")`` launches them (the launch's specialisation, num_warps and num_stages; ``--blocks default`` is the
launch configuration table ``clipcore.fused_triton.CONFIGS``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import torch
import triton

from clipcore import fused_triton_aot as aot

SMEM_LIMIT = {90: 232448, 80: 166912}        # bytes of shared memory one block may use (sm_90: 227 KiB)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ptxas_usage(ptx: str, arch: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    exe = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    out = subprocess.run([exe, "-v", "--gpu-name", gpu, f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    text = out.stderr + out.stdout
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else None  # noqa: E731
    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="256,512")
    p.add_argument("--blocks", default="default",
                   help="'default' (clipcore.fused_triton.CONFIGS) or BLOCK_MxBLOCK_Nxnum_warpsxnum_stages, comma-separated")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dtype = DTYPES[a.dtype]
    rows = []
    print(f"| kernel | D | BLOCK_M x BLOCK_N | warps | stages | shared KiB | fits sm_{a.arch} | registers | spill stores B |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|")
    for d in (int(x) for x in a.dims.split(",")):
        for blk in a.blocks.split(","):
            over = {} if blk == "default" else dict(zip(("block_m", "block_n", "num_warps", "num_stages"),
                                                        (int(x) for x in blk.split("x"))))
            try:
                kernels = aot.compile_for(a.arch, d, dtype, **over)
            except Exception as e:        # e.g. ptxas: too few registers per thread at 16 warps
                reason = next((ln for ln in str(e).splitlines() if "fatal" in ln), str(e).splitlines()[0])
                rows.append({"dim": d, **over, "error": reason})
                print(f"| forward + backward | {d} | {blk} | compile error: {reason[:90]} ||||||")
                continue
            for name, k in kernels.items():
                md, const = k.metadata, lambda n, k=k: k.src.constants[(k.src.fn.arg_names.index(n),)]  # noqa: E731
                row = {"kernel": name, "dim": d, "block_m": const("BLOCK_M"), "block_n": const("BLOCK_N"),
                       "num_warps": md.num_warps,
                       "num_stages": md.num_stages, "dtype": a.dtype, "arch": a.arch, "default": blk == "default",
                       "shared_bytes": md.shared, **ptxas_usage(k.asm["ptx"], a.arch)}
                row["fits"] = row["shared_bytes"] <= SMEM_LIMIT.get(a.arch, 232448)
                rows.append(row)
                print(f"| {name} | {d} | {row['block_m']} x {row['block_n']}{' (default)' if row['default'] else ''} | "
                      f"{row['num_warps']} | {row['num_stages']} | {row['shared_bytes'] / 1024:.0f} | "
                      f"{'yes' if row['fits'] else 'NO'} | {row['registers']} | {row['spill_stores']} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
