"""The fused loss on a real device: loss and gradients of every kernel against the materialised loss in fp64.

    python benchmarks/gpu_exact.py --device cuda --json exact_cuda.json     # part of benchmarks/gpu_check.sh
    python benchmarks/gpu_exact.py --device cpu                             # the same checks, CPU kernels

tests/test_fused.py checks the torch tiles on CPU and tests/test_fused_triton.py the Triton kernels under the
interpreter; this script is the check that the compiled code of a real GPU computes the same numbers. Each case
compares the loss, d/dimage, d/dtext and d/dlogit_scale with the materialised loss evaluated in fp64, as a max
absolute error over max(max |reference|, 1e-3) per tensor (an absolute floor: the loss of a batch of one is 0). Limits: fp32 1e-5 (as the CPU tests), bf16 3e-2 (inputs rounded
to bf16, fp32 accumulation). It prints a table and exits 1 if any case is over its limit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipcore.fused import fused_contrastive_loss  # noqa: E402
from clipcore.losses import contrastive_loss  # noqa: E402

LIMIT = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
# Scale floor: below any tensor's real scale here (x/y gradients are ~scale/B ~ 6e-3 at 16k), so it only matters for a
# reference that is (near) 0 -- a batch of one -- where the limits become absolute: 1e-8 (fp32), 3e-5 (bf16).
FLOOR = {torch.float32: 1e-3, torch.bfloat16: 1e-3}
CASES = [  # (batch, dim, logit scale, labels: number of classes or None, regulariser lambda)
    (1, 512, 100.0, None, 0.0), (1000, 512, 100.0, None, 0.0), (4097, 512, 14.3, None, 0.0),
    (4097, 512, 100.0, 7, 0.0), (3000, 256, 20.0, None, 0.1), (16384, 512, 100.0, None, 0.0),
]


def loss_and_grads(fn, x, y, s, **kw):
    x, y, s = (t.detach().clone().requires_grad_(True) for t in (x, y, s))
    loss = fn(x, y, s, **kw)
    loss.backward()
    return [loss.detach(), x.grad, y.grad, s.grad]


def rel_err(got, ref, atol: float) -> float:
    """Max over tensors of max |got - ref| / max(max |ref|, atol / limit): relative to each tensor's scale, with an
    absolute floor (a batch of one has loss and gradients exactly 0), so ``<= limit`` means err <= max(limit * scale,
    atol)."""
    return max(float((g.double() - r).abs().max() / max(float(r.abs().max()), atol)) for g, r in zip(got, ref))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--kernels", default="torch,triton", help="fused kernels to check (triton: CUDA only)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--json", type=Path, default=None, help="all rows, as one JSON object, at the end")
    p.add_argument("--jsonl", type=Path, default=None, help="append each row as a JSON line the moment it exists")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_exact.py: --device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows, bad = [], 0
    for b, d, scale, n_cls, lam in CASES:
        g = torch.Generator(device="cpu").manual_seed(b)
        x = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).to(dev)
        y = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).to(dev)
        s = torch.tensor(scale, dtype=torch.float64, device=dev)
        kw = dict(labels=None if n_cls is None else torch.arange(b, device=dev) % n_cls, reg_lambda=lam)
        ref = loss_and_grads(contrastive_loss, x, y, s, **kw)
        for kernel in a.kernels.split(","):
            if kernel == "triton" and dev.type != "cuda":
                continue
            for name in a.dtypes.split(","):
                dt = dtypes[name]
                row = dict(batch=b, dim=d, scale=scale, labels=n_cls, reg_lambda=lam, kernel=kernel, dtype=name,
                           limit=LIMIT[dt], device=str(dev))
                try:  # each case on its own: a kernel that fails is one line, the other cases go on
                    got = loss_and_grads(fused_contrastive_loss, x.to(dt), y.to(dt), s.float(), kernel=kernel, **kw)
                    err = rel_err(got, ref, FLOOR[dt])
                    row.update(rel_err=err, ok=err <= LIMIT[dt])
                    msg = f"rel err {err:.2e} (limit {LIMIT[dt]:.0e}) {'ok' if row['ok'] else 'OVER'}"
                except Exception as e:
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    row.update(rel_err=None, ok=False, error=f"{type(e).__name__}: {first}")
                    msg = f"FAILED {row['error']}"
                bad += not row["ok"]
                rows.append(row)
                print(f"B={b:>6} d={d} scale={scale:>5} labels={str(n_cls):>4} reg={lam} {kernel:>6} {name}: {msg}",
                      flush=True)
                if a.jsonl:
                    with a.jsonl.open("a") as f:
                        f.write(json.dumps({"script": "gpu_exact.py", **row}) + "\n")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{len(rows) - bad} of {len(rows)} cases within their limit on {name}")
    if a.json:
        a.json.write_text(json.dumps({"device_name": name, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
