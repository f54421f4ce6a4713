"""Contrastive loss, forward + backward: materialised vs open_clip vs clipcore fused vs the matmul floor.

    python benchmarks/loss.py --device cpu --batch-sizes 1024,4096,16384 --dtypes fp32 --dim 512 --json cpu.json
    python benchmarks/loss.py --device cuda --batch-sizes 16384,32768,65536,131072 --dtypes bf16,fp32 --dim 512 \
        --reps 10 --json loss_cuda.json
    python benchmarks/loss.py --device cuda --batch-sizes 262144,1048576 --dtypes bf16 --dim 512 \
        --impls fused-compiled,fused-eager --reps 3 --json loss_cuda_1m.json
Results and the exact commands used: benchmarks/README.md. Rows that run out of memory are recorded
with ms = null and a note.

Rows, per (batch B, dtype), on L2-normalised (B, dim) embeddings with logit scale 100:
  floor           the three B x B x dim matmuls any exact loss needs (S = XY^T, dX = GY, dY = G^TX);
  materialised    clipcore.losses.contrastive_loss (holds the B x B logits);
  open_clip       open_clip.ClipLoss (skipped, with a note, when open_clip does not import);
  fused-eager     clipcore.fused.fused_contrastive_loss(compile=False);
  fused-compiled  the same with its tile functions torch.compile'd (inductor: C++ on CPU, Triton on GPU);
  fused-recompute fused-eager with keep_mib=0: every score tile recomputed in the backward (on CPU the
                  default keeps up to 64 MiB of tiles; on CUDA the default already is pure recompute);
  fused-triton    fused_contrastive_loss(kernel="triton"): the hand-written Triton kernels of
                  clipcore.fused_triton, score tiles on-chip (CUDA only; skipped with a note elsewhere).
ms: median of --reps timed fwd+bwd calls after one warm-up call (on CUDA the first timed call also measures the
peak; so --reps 1 makes 2 calls per row); the reps of all rows are interleaved
(rep 1 of every row, then rep 2, ...) so that load drift on a shared machine hits every row alike, and
each row is reported as a ratio to the floor measured in the same run.
peak_mib: extra memory of one fwd+bwd call over what was allocated before it (inputs not counted,
gradients counted). CUDA: torch.cuda.max_memory_allocated. CPU: the torch profiler's allocator events
(profile_memory=True): every allocation and free of torch's CPU allocator, including the buffers of
inductor-generated code, replayed in time order; the peak of the running sum is the CPU analogue of
max_memory_allocated (compile-time Python memory and allocator caching are excluded; there is no
caching on CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipcore.fused import fused_contrastive_loss  # noqa: E402
from clipcore.losses import contrastive_loss  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
IMPLS = ("floor", "materialised", "open_clip", "fused-eager", "fused-compiled", "fused-recompute", "fused-triton")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def make_impls(names: list[str], tile: int | None, device: str = "cpu") -> dict:
    """name -> fn(x, y, scale) running one forward + backward."""
    out = {}
    for name in names:
        if name == "floor":
            def fn(x, y, s):
                with torch.no_grad():
                    logits = (s * x) @ y.T
                    logits @ y
                    logits.T @ x
        elif name == "materialised":
            def fn(x, y, s):
                contrastive_loss(x, y, s).backward()
        elif name == "open_clip":
            try:
                from open_clip.loss import ClipLoss
            except Exception as err:  # a bare GPU machine: no open_clip
                print(f"note: open_clip row skipped (cannot import open_clip: {type(err).__name__}: {err})")
                continue
            clip_loss = ClipLoss()

            def fn(x, y, s, clip_loss=clip_loss):
                clip_loss(x, y, s).backward()
        elif name in ("fused-eager", "fused-compiled", "fused-recompute"):
            def fn(x, y, s, compile=name == "fused-compiled", keep=0 if name == "fused-recompute" else None):
                fused_contrastive_loss(x, y, s, tile=tile, compile=compile, keep_mib=keep).backward()
        elif name == "fused-triton":
            from clipcore.fused_triton import triton_available

            if device != "cuda" or not triton_available(device):  # the interpreter would take hours here
                print(f"note: fused-triton row skipped (needs CUDA and triton; device {device}, "
                      f"triton available: {triton_available(device)})")
                continue

            def fn(x, y, s):  # --tile: BLOCK_M of both kernels (default: clipcore.fused_triton.CONFIGS)
                fused_contrastive_loss(x, y, s, tile=tile, kernel="triton").backward()
        else:
            raise SystemExit(f"--impls: unknown row {name!r}; choose from {', '.join(IMPLS)}")
        out[name] = fn
    return out


def cpu_peak_bytes(run) -> int:
    """Peak of the running sum of torch's CPU allocations/frees during run() (see module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0][:300] if msg else ''}"


def bench_one(impls: dict, batch: int, dtype: torch.dtype, dim: int, device: str, reps: int, emit=None) -> dict:
    """{impl: (ms or None, peak_mib or None, note)} for one (batch, dtype).

    Each row runs in its own try: any failure (out of memory, a compile error, a kernel that does not launch) is
    that row's note, the other rows go on. Calls per row: one warm-up, one measured call (peak memory and the
    first timing), then reps - 1 more timed calls interleaved with the other rows'. ``emit(name, record)`` is
    called the moment a row's first measured call (or its failure) exists.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = F.normalize(torch.randn(batch, dim, generator=gen), dim=1).to(device, dtype).requires_grad_()
    y = F.normalize(torch.randn(batch, dim, generator=gen), dim=1).to(device, dtype).requires_grad_()
    s = torch.tensor(100.0, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    emit = emit or (lambda name, rec: None)

    def call(fn):
        fn(x, y, s)
        sync()

    def timed(fn) -> float:
        x.grad = y.grad = s.grad = None  # every measured call allocates the gradients
        t0 = time.perf_counter()
        call(fn)
        return (time.perf_counter() - t0) * 1e3

    results, live = {}, {}
    for name, fn in impls.items():
        try:
            call(fn)  # warm-up (and compilation)
            if device == "cuda":
                x.grad = y.grad = s.grad = None
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                first = timed(fn)
                peak = torch.cuda.max_memory_allocated() - base
            else:
                first = None
                peak = cpu_peak_bytes(lambda: call(fn))  # the profiler slows the call: not a timing
            live[name] = (fn, peak / 2**20, [] if first is None else [first])
            emit(name, {"phase": "first call", "ms": first, "peak_mib": peak / 2**20})
        except (torch.OutOfMemoryError, MemoryError) as err:
            results[name] = (None, None, f"out of memory ({type(err).__name__})")
        except Exception as err:  # one row's failure is its note, not the end of the run
            results[name] = (None, None, f"failed: {one_line(err)}")
        if name in results:
            emit(name, {"phase": "failed", "note": results[name][2]})
        if device == "cuda":
            torch.cuda.empty_cache()
    for _ in range(reps):  # interleaved: load drift hits every row alike
        for name, (fn, _, times) in list(live.items()):
            if len(times) >= reps:
                continue
            try:
                times.append(timed(fn))
            except Exception as err:
                results[name] = (None, live.pop(name)[1], f"failed in a timed call: {one_line(err)}")
                emit(name, {"phase": "failed", "note": results[name][2]})
    for name, (fn, peak, times) in live.items():
        results[name] = (statistics.median(times), peak, "")
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-sizes", default="1024,4096", help="comma-separated B values")
    p.add_argument("--dtypes", default="fp32", help=f"comma-separated, of {','.join(DTYPES)}")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated rows to run")
    p.add_argument("--reps", type=int, default=5, help="timed calls per row (median reported)")
    p.add_argument("--tile", type=int, default=None, help="fused row tile (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write the records here (a JSON list, at the end)")
    p.add_argument("--jsonl", type=Path, default=None,
                   help="append each record here as a JSON line the moment it exists (progress lines included)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if bad:
        raise SystemExit(f"--dtypes: unknown {bad}; choose from {', '.join(DTYPES)}")
    names = [n for n in args.impls.split(",") if n]
    impls = make_impls(names, args.tile, args.device)
    dev_name = device_name(args.device)
    print(f"device: {args.device} ({dev_name}), torch {torch.__version__}, dim {args.dim}, reps {args.reps}")
    header = f"{'impl':<16}{'batch':>9}{'dtype':>7}{'ms':>12}{'x floor':>9}{'peak MiB':>11}"
    print(header, flush=True)
    records = []

    def append(rec: dict) -> None:
        if args.jsonl:
            args.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with args.jsonl.open("a") as f:
                f.write(json.dumps({"script": "loss.py", **rec}) + "\n")

    for dt in args.dtypes.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            def emit(name, rec, batch=batch, dt=dt):
                rec = {"impl": name, "batch": batch, "dtype": dt, "dim": args.dim, "device_name": dev_name, **rec}
                print(f"  {name} B={batch} {dt}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in rec.items()
                                                       if k in ("phase", "ms", "peak_mib", "note") and v is not None),
                      flush=True)
                append(rec)

            res = bench_one(impls, batch, DTYPES[dt], args.dim, args.device, args.reps, emit)
            floor = res.get("floor", (None,))[0]
            for name in impls:
                ms, peak, note = res[name]
                ratio = ms / floor if ms is not None and floor else None
                rec = {"impl": name, "batch": batch, "dtype": dt, "dim": args.dim, "ms": ms, "peak_mib": peak,
                       "device": args.device, "device_name": dev_name, "x_floor": ratio}
                if note:
                    rec["note"] = note
                records.append(rec)
                append(rec)
                fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
                print(f"{name:<16}{batch:>9}{dt:>7}{fmt(ms, '12.1f')}{fmt(ratio, '9.2f')}{fmt(peak, '11.1f')}"
                      + (f"  {note}" if note else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.json}")
    return records


if __name__ == "__main__":
    main()
