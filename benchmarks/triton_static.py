"""Compile clipcore's Triton kernels for a GPU without one: shared memory, registers and spills per block shape.

    python benchmarks/triton_static.py --dims 256,512 --arch 90 --json benchmarks/results/triton_static_sm90.json

Triton compiles to PTX and ptxas (shipped with triton) assembles it for the target (sm_90a = H100/H200) on any
machine; no driver is needed. What this cannot tell is speed: it answers whether a block shape fits the SM (shared
memory <= 227 KiB on sm_90) and whether the kernel spills registers to local memory (a spill in the inner loop
costs bandwidth). Kernels of clipcore/fused_triton.py: forward (row log-sum-exp + column partials) and backward
(atomic dY layout), bf16 inputs, fp32 accumulation, as ``fused_contrastive_loss(..., kernel="triton")`` launches them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton

from clipcore import fused_triton as ft

SMEM_LIMIT = {90: 232448, 80: 166912}        # bytes of shared memory one block may use (sm_90: 227 KiB)


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
    p.add_argument("--blocks", default="64x32x8,32x32x8,32x32x4,64x64x8,64x32x16", help="BLOCK_MxBLOCK_Nxnum_warps, comma-separated")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = []
    print(f"| kernel | D | BLOCK_M x BLOCK_N | warps | shared KiB | fits sm_{a.arch} | registers | spill stores B |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for d in (int(x) for x in a.dims.split(",")):
        for blk in a.blocks.split(","):
            bm, bn, warps = (int(x) for x in blk.split("x"))
            try:
                kernels = ft.compile_for(a.arch, d, bm, bn, warps, a.dtype)
            except Exception as e:        # e.g. ptxas: too few registers per thread at 16 warps
                reason = next((ln for ln in str(e).splitlines() if "fatal" in ln), str(e).splitlines()[0])
                rows.append({"dim": d, "block_m": bm, "block_n": bn, "num_warps": warps, "error": reason})
                print(f"| forward + backward | {d} | {bm} x {bn} | {warps} | compile error: {reason[:90]} |||||")
                continue
            for name, k in kernels.items():
                row = {"kernel": name, "dim": d, "block_m": bm, "block_n": bn, "num_warps": warps, "dtype": a.dtype,
                       "arch": a.arch, "shared_bytes": k.metadata.shared, **ptxas_usage(k.asm["ptx"], a.arch)}
                row["fits"] = row["shared_bytes"] <= SMEM_LIMIT.get(a.arch, 232448)
                rows.append(row)
                print(f"| {name} | {d} | {bm} x {bn} | {warps} | {row['shared_bytes'] / 1024:.0f} | "
                      f"{'yes' if row['fits'] else 'NO'} | {row['registers']} | {row['spill_stores']} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
