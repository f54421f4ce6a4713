"""The per-tile work of the fused contrastive loss (:mod:`clipcore.fused`): score matmuls with an fp32 result, the
log-sum-exp and gradient kernels of one score tile (eager, in place; or their functional twins through
torch.compile), and :func:`narrow_`, the in-place fp32 -> 16-bit narrowing of a gradient buffer.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor


# A tile's raw scores are one matmul, ``sc = X_i @ Y_j^T`` (:func:`_scores`: an fp32 result for 16-bit inputs,
# else the input dtype), done by the caller; the logit scale ``s`` (0-dim, fp32) is applied here in fp32,
# so neither the scores nor the scale are rounded to 16 bits. The kernels below are the elementwise/reduction
# work on a score tile, in fp32 (fp64 for fp64 inputs): eager versions written in place, and functional twins
# that torch.compile fuses into one or two loops (inductor: C++/OpenMP on CPU, Triton on GPU). The gradient
# kernels return G / W in the accumulation dtype (W: the largest loss weight), the caller subtracts the target
# on the diagonal and casts: exp(S - lse) is an O(1) probability, representable in fp16 at any batch size.
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _up(sc: Tensor) -> Tensor:
    acc = _acc_dtype(sc.dtype)
    return sc if sc.dtype == acc else sc.to(acc)


def _scores(a: Tensor, b: Tensor) -> Tensor:
    """a (m, D) @ b (n, D)^T, for 16-bit inputs with an fp32 result (the scores are not rounded to 16 bits): on CUDA
    a 16-bit GEMM with fp32 output; on CPU (no such GEMM) an fp32 GEMM of the same, exactly representable values,
    which is the same products and fp32 sums (on an AVX2 CPU also faster than its bf16 GEMM, ~10x; on an AMX CPU
    2.4x slower: benchmarks/README.md). Measured under bf16 autocast (B = 512, d = 128, scale 100, against fp64): input-gradient error
    0.9e-2 against 2.7e-2 with 16-bit scores and 1.6e-2 for the materialised loss."""
    if a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b.T, out_dtype=torch.float32) if a.is_cuda else a.float() @ b.float().T
    return a @ b.T


def _lse_both_eager(sc: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(tr, tc) raw scores, scale -> row and column log-sum-exp of s * sc; leaves sc intact (it may be kept)."""
    t = _up(sc) * s
    m = t.amax(1)
    e = torch.sub(t, m[:, None]).exp_()
    row = e.sum(1).log_().add_(m)
    m = t.amax(0)
    torch.sub(t, m[None, :], out=e).exp_()
    return row, e.sum(0).log_().add_(m)


def _lse_rows_eager(sc: Tensor, s: Tensor) -> Tensor:
    t = _up(sc) * s
    m = t.amax(1)
    return t.sub_(m[:, None]).exp_().sum(1).log_().add_(m)


def _grad_both_eager(sc: Tensor, s: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """exp(s sc - a_i) + exp(s sc - c_j) (the relative loss weights are folded into a, c); overwrites sc."""
    t = _up(sc).mul_(s)
    e = torch.sub(t, a[:, None]).exp_()
    return t.sub_(c[None, :]).exp_().add_(e)


def _grad_rows_eager(sc: Tensor, s: Tensor, a: Tensor) -> Tensor:
    return _up(sc).mul_(s).sub_(a[:, None]).exp_()


def _lse_both_f(sc, s):
    t = _up(sc) * s
    return torch.logsumexp(t, 1), torch.logsumexp(t, 0)


def _lse_rows_f(sc, s):
    return torch.logsumexp(_up(sc) * s, 1)


def _grad_both_f(sc, s, a, c):
    t = _up(sc) * s
    return torch.exp(t - a[:, None]) + torch.exp(t - c[None, :])


def _grad_rows_f(sc, s, a):
    return torch.exp(_up(sc) * s - a[:, None])


_EAGER = {"lse_both": _lse_both_eager, "lse_rows": _lse_rows_eager,
          "grad_both": _grad_both_eager, "grad_rows": _grad_rows_eager}
_FUNCTIONAL = {"lse_both": _lse_both_f, "lse_rows": _lse_rows_f, "grad_both": _grad_both_f, "grad_rows": _grad_rows_f}
_COMPILED: dict[str, dict] = {}


class _Fallback:
    """A compiled tile function that falls back to the eager one (once, with a warning) if it fails."""

    def __init__(self, name: str, backend: str):
        self.name, self.backend, self.failed = name, backend, False
        self.fn = torch.compile(_FUNCTIONAL[name], backend=backend, fullgraph=True)

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.fn(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # no C++ compiler, no Triton, unsupported device...
                self.failed = True
                warnings.warn(f"clipcore.fused: torch.compile(backend={self.backend!r}) of the {self.name} tile "
                              f"failed ({type(err).__name__}: {err}); using the eager tile. Pass compile=False "
                              "to silence this.", RuntimeWarning, stacklevel=2)
        return _EAGER[self.name](*args)


def tile_kernels(compile: bool | str, device: torch.device) -> dict:
    """The four tile functions: eager, or torch.compile'd with ``backend`` (cached per backend).

    ``"auto"``: inductor on CUDA, eager on CPU (where both measured the same and compiling costs 5-15 s).
    """
    if compile == "auto":
        compile = device.type == "cuda"
    if compile is False or compile == "eager":
        return _EAGER
    backend = "inductor" if compile is True else str(compile)
    if backend not in _COMPILED:
        _COMPILED[backend] = {name: _Fallback(name, backend) for name in _EAGER}
    return _COMPILED[backend]


def narrow_(buf: Tensor, dtype: torch.dtype) -> Tensor:
    """``buf.to(dtype)`` for a wider ``buf``, written in place into the front of buf's own storage (chunk by
    chunk, each chunk read before it is overwritten): no second (N, D) tensor, e.g. dY accumulated in fp32 and
    returned in bf16 needs 4 bytes per element at its peak, not 4 + 2. The result keeps buf's storage alive."""
    if buf.dtype == dtype:
        return buf
    flat, n = buf.view(-1), buf.numel()
    out = buf.view(dtype).view(-1)[:n]  # 2-byte elements over the 4-byte ones: the first half of the storage
    step = 1 << 22
    for i in range(0, n, step):
        out[i:i + step] = flat[i:i + step].to(dtype)  # the temporary is one chunk: source and target overlap
    return out.view(buf.shape)


def _weights(w_r: float, w_c: float, w_t: float) -> tuple[float, float, float, float]:
    """Loss weights -> (W, w_r / W, w_c / W, w_t / W) with W = max(w_r, w_c): G / W has O(1) entries (fp16-safe), and
    with w_r = w_c (every call here) the log-sum-exp shifts need no log-weight folded in (exact: a shift of |lse| ~
    1e3 cannot carry log 0.5 without rounding it by ~1e-4)."""
    big = max(w_r, w_c)
    return big, w_r / big, w_c / big, w_t / big
