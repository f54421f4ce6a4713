"""Exact k-NN over a memory bank: clipcore.memory (chunked matmul + top-k) vs faiss IndexFlatIP, same run.

    python benchmarks/knn.py --device cpu --n 1000000 --dim 512 --queries 1024 --k 10 --json benchmarks/results/knn_cpu.json
    python benchmarks/knn.py --device cuda --n 1000000 --dim 512 --queries 16384 --k 10 --json benchmarks/results/knn_cuda.json

Rows, on a random L2-normalised (n, dim) fp32 memory and (queries, dim) queries, k neighbours each:
  faiss-flat     faiss IndexFlatIP.search (CPU, exact; the baseline, always measured in the same run)
  exact          clipcore MemoryBank.search(backend="exact") on --device, fp32
  exact-fp16     the same with the bank and queries in fp16 (CUDA only; scores in fp16, top-k merged in fp32)
  faiss-backend  MemoryBank.search(backend="faiss"): faiss plus the bank's exclusion/padding logic
qps = queries per second (queries / median time of --reps calls after one warm-up); ratio = qps / faiss-flat qps.
Agreement: the share of exact rows whose neighbour lists equal faiss's (ties and fp rounding may differ).
Threads: --threads (default 1, so CPU rows compare one core against one core; faiss uses omp threads).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcore.memory import MemoryBank


def _time(fn, reps: int, sync) -> float:
    fn(); sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(); out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--key-chunk", type=int, default=32768)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import faiss
    faiss.omp_set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    mem = F.normalize(torch.randn(a.n, a.dim, generator=g), dim=-1)
    q = F.normalize(torch.randn(a.queries, a.dim, generator=g), dim=-1)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()

    index = faiss.IndexFlatIP(a.dim)
    index.add(mem.numpy())
    qn = q.numpy()
    rows = {}
    rows["faiss-flat"] = _time(lambda: index.search(qn, a.k), a.reps, lambda: None)
    _, ref = index.search(qn, a.k)
    bank = MemoryBank(mem.to(dev), mem.to(dev))
    qd = q.to(dev)
    rows["exact"] = _time(lambda: bank.search(qd, a.k, key_chunk=a.key_chunk), a.reps, sync)
    agree = (bank.search(qd, a.k)[1].cpu() == torch.from_numpy(ref)).all(1).float().mean().item()
    if dev.type == "cuda":
        b16, q16 = bank.to(dev, torch.float16), qd.half()
        rows["exact-fp16"] = _time(lambda: b16.search(q16, a.k, key_chunk=a.key_chunk), a.reps, sync)
    cpu_bank = bank if dev.type == "cpu" else MemoryBank(mem, mem)
    cpu_bank._faiss_index["image"] = index
    rows["faiss-backend"] = _time(lambda: cpu_bank.search(q, a.k, backend="faiss"), a.reps, lambda: None)

    base = a.queries / rows["faiss-flat"]
    table = [{"row": r, "device": "cpu" if r.startswith("faiss") else a.device, "qps": a.queries / t, "ms": 1000 * t,
              "ratio_vs_faiss": a.queries / t / base} for r, t in rows.items()]
    print(f"k-NN, memory {a.n:,} x {a.dim} fp32, {a.queries} queries, k={a.k}, threads {a.threads}, device {name}")
    print(f"{'row':<15}{'device':<8}{'ms':>10}{'qps':>12}{'x faiss':>9}")
    for r in table:
        print(f"{r['row']:<15}{r['device']:<8}{r['ms']:>10.1f}{r['qps']:>12.0f}{r['ratio_vs_faiss']:>9.2f}")
    print(f"exact vs faiss: identical neighbour lists for {agree:.1%} of queries")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "device_name": name, "agreement": agree, "rows": table}, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
