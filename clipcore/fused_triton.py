"""Triton kernels for the tiled contrastive log-sum-exp: the score tiles never leave the chip.

:func:`triton_lse` is the Triton twin of ``clipcore.fused._TiledLSE`` and returns the same 0-dim fp32
value ``w_r * sum_i row_lse_i + w_c * sum_j col_lse_j - w_t * sum_i S_{i, offset+i}`` with

    S = s X Y^T  (X: (M, D) rows, Y: (N, D) columns, s: the logit scale, a 0-dim tensor)
    row_lse (M,) = logsumexp_j S_ij,    col_lse (N,) = logsumexp_i S_ij.

``fused_contrastive_loss(..., kernel="triton")`` routes its log-sum-exp passes here (module
docstring of clipcore.fused for the rest of the loss). Inputs fp32/bf16/fp16; every tile is
accumulated in fp32 (fp64 stays on the torch tiles: ``fused.py`` never sends it here).

Forward, ``_fwd_kernel``. Grid: one program per BLOCK_M row block, launched in chunks of at most
``parts`` programs. A program loads its rows X_i (BLOCK_M, D) once and streams the columns Y_j
(BLOCK_N, D) of all N: S_ij = s X_i Y_j^T (one tl.dot, fp32 accumulator), an online (max, sum-exp)
per row (flash-attention style) gives row_lse_i, and the same tile's column (max, sum-exp), as one
value max + log(sum), is stored in a (parts, N) fp32 buffer row of its own. After each launch torch
reduces the buffer over its rows (logsumexp, in column chunks of at most ``REDUCE_ELEMS``) into col_lse
with logaddexp: no atomics, no read-modify-write in the kernel, and the buffer is bounded (``parts``
rows; see :func:`_parts`). With diagonal targets the kernel also keeps the raw target score
x_i . y_{offset+i} of the same tl.dot (only in the tiles the diagonal crosses), so the target term is
made of the numbers the log-sum-exp saw (a batch of one gives exactly 0).
Cost: 1 M x N x D matmul (the floor's first), 2 exp per score (row and column).

Backward, ``_bwd_kernel``. With W = max(w_r, w_c) times the upstream gradient and the relative weights
w' = w / W, G/W = w_r' exp(S - row_lse_i) + w_c' exp(S - col_lse_j) - w_t' [j = offset + i] (dLoss/dS / W;
O(1) entries: cast to fp16 they do not underflow, where the weight 0.5/B times a probability would), and
    dX = s W (G/W) Y,    dY = s W (G/W)^T X,    ds = W sum_ij (G/W)_ij <x_i, y_j>  (target part added in torch).
Grid: one program per BLOCK_M row block; it loads X_i once, streams Y_j, recomputes S_ij on-chip,
forms G/W (cast to the input dtype for the matmuls, as the torch tiles do), accumulates (G/W Y)_i in an
fp32 (BLOCK_M, D) register block, stored once as s W (G/W Y)_i in the input dtype, and the ds partial
in fp32 (one per program, summed in torch), and, by the module flag ``ATOMIC``:
- True (default): adds s W (G/W)^T X_i into an fp32 (N, D) dY buffer with relaxed atomics
  (``tl.atomic_add(..., sem="relaxed")``: PTX atom.relaxed, not the default acq_rel, which orders every add
  for nothing: only the sum matters); the buffer is then narrowed to the input dtype in place
  (``clipcore.fused_tiles.narrow_``), so dY costs 4 bytes per element at its peak, not 4 + 2 + 4. Matmuls:
  forward 1 + backward 3 (recompute S, G Y, G^T X) = 4 M N D against the floor's 3 (1.33x in FLOPs). dY's
  fp32 summation order varies from run to run on GPU (not bitwise deterministic), and the atomics move
  BLOCK_N * D * 4 bytes per tile (~137 GB at B = 64k, D = 512): they may bound the speed (unmeasured).
- False: a second launch of the same kernel with the roles swapped (Y as rows, X as columns,
  (col_lse, w_c') as the row statistics, the diagonal at i = j - offset: G^T has the same form) accumulates
  dY in registers and writes it once in the input dtype. Deterministic, no atomics and no fp32 (N, D)
  buffer, but 5 M N D matmuls in all (1.67x the floor in FLOPs).
Besides the matmuls: 2 exp per score forward and 1-2 backward (row and column terms), all fp32.
Extra memory: (M + N) fp32 statistics, the fp32 (N, D) dY buffer with atomics (narrowed in place) and the
forward's (parts, N) buffer; never M x N.

Launch configuration. The kernels hold full-width rows (BLOCK_D = next power of two >= D, D <= 1024):
the X_i block, Y_j blocks (num_stages of them in flight when software-pipelined) and, backward, the
(BLOCK_M, BLOCK_D) fp32 accumulator. Blocks, num_warps and num_stages come per kernel from ``CONFIGS``
(by BLOCK_D and element size), chosen so that the shared memory of every configuration fits sm_80 and
sm_90 as a launch compiles it: ``clipcore.fused_triton_aot`` (compile_for, shared_memory_for) goes
through triton's own launch binder (same tt.divisibility specialisation, same options). Speed is **not
measured or tuned on a GPU** (none was available; benchmarks/gpu_check.sh does it). tl.dot needs every
block dimension >= 16.

Registration: the kernels are launched through ``torch.library.wrap_triton`` inside the
``torch.library.triton_op`` custom ops ``clipcore::contrastive_lse_fwd`` / ``_bwd``, called by the
``torch.autograd.Function`` :class:`_TritonLSE` (which owns the loss weights, the target and the
upstream gradient), so torch.compile sees Triton kernel calls it can trace (not opaque ops).
Under ``TRITON_INTERPRET=1`` the same ops run eagerly on CPU tensors (numpy interpreter): that is how
``tests/test_fused_triton.py`` checks values and gradients. Tracing does not work under the
interpreter (wrap_triton then returns the interpreted function, which fake tensors cannot run), so
the test traces the ops without it, on fake CUDA tensors, into triton_kernel_wrapper_functional
nodes. Interpreter quirk: its tl.dot multiplies the raw bits of bf16 blocks, so under the interpreter
16-bit blocks are upcast to fp32 first (``DOT_F32``).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton_available() is False then
    triton = tl = None

# Launch configurations, per kernel, by (BLOCK_D, bytes per input element): (BLOCK_M, BLOCK_N, num_warps, num_stages).
# Chosen with ``fused_triton_aot.shared_memory_for`` (the kernels as a launch compiles them) as the largest blocks,
# then the most pipeline stages (3, 2, 1), whose shared memory fits both sm_80 (A100, 163 KiB) and sm_90 (H100/H200,
# 227 KiB); the backward stays at <= 64 x 32 and at 32 x 32 from D = 512 (larger blocks spill its fp32 (BLOCK_M, D)
# accumulator: benchmarks/README.md). Fit is tested for D = 128..1024 x fp32/bf16/fp16 (tests/test_fused_triton.py);
# speed is NOT measured (no GPU was available): benchmarks/gpu_check.sh times them. (triton's defaults, num_stages = 3
# and 64 x 32 blocks, need 262-271 KB at D = 512: over sm_90's 227 KiB, OutOfResources on the first launch.)
CONFIGS = {
    "forward": {(128, 2): (64, 64, 8, 3), (256, 2): (64, 64, 8, 3), (512, 2): (64, 64, 8, 2), (1024, 2): (64, 32, 8, 1),
                (128, 4): (64, 64, 8, 3), (256, 4): (64, 64, 8, 2), (512, 4): (32, 32, 8, 2), (1024, 4): (16, 16, 4, 2)},
    "backward": {(128, 2): (64, 32, 8, 3), (256, 2): (64, 32, 8, 3), (512, 2): (32, 32, 8, 2), (1024, 2): (32, 32, 8, 2),
                 (128, 4): (64, 32, 8, 3), (256, 4): (64, 32, 8, 2), (512, 4): (32, 32, 8, 2), (1024, 4): (16, 16, 4, 2)},
}
INTERPRET_BLOCKS = (16, 16)  # under TRITON_INTERPRET=1 (tests): small blocks, the interpreter is slow
ATOMIC = True  # backward layout (module docstring): dY by relaxed atomics; False: the deterministic two-launch layout
PART_BYTES = 256 * 2**20  # forward column buffer budget on CUDA (at least 2 programs per SM regardless)
REDUCE_ELEMS = 1 << 24  # the column buffer is reduced in column chunks of at most this many elements (64 MiB fp32)


def triton_available(device: torch.device | str) -> bool:
    """True where the kernels can run: CUDA with triton importable, or any device under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def _check_block(name: str, v: int) -> int:
    if v < 16 or v > 256 or v & (v - 1):
        raise ValueError(f"kernel='triton': {name}={v} must be a power of two in [16, 256] (a Triton block size)")
    return v


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def launch_config(kernel: str, d: int, dtype: torch.dtype, block_m: int | None = None, block_n: int | None = None,
                  interpret: bool = False) -> dict:
    """The launch options of ``kernel`` ("forward"/"backward") for width d and input dtype: {BLOCK_M, BLOCK_N, BLOCK_D,
    num_warps, num_stages} (the interpreter takes only the blocks). block_m/block_n override the table's."""
    bd = _block_d(d)
    if bd > 1024:
        raise ValueError(f"kernel='triton' handles embeddings up to d = 1024 (full-width row blocks); got d = {d}")
    bm, bn, warps, stages = CONFIGS[kernel][(max(bd, 128), 4 if dtype == torch.float32 else 2)]
    if interpret:
        bm, bn = INTERPRET_BLOCKS
    out = {"BLOCK_M": _check_block("tile", block_m or bm), "BLOCK_N": _check_block("col_tile", block_n or bn),
           "BLOCK_D": bd}
    return out if interpret else {**out, "num_warps": warps, "num_stages": stages}


def _dot_opts(dtype: torch.dtype, interpret: bool) -> dict:
    # fp32 inputs: tf32 tensor cores only where torch's own fp32 matmuls may use them. DOT_F32: the
    # interpreter's tl.dot is wrong on bf16 blocks (triton 3.8: raw bits), so under it 16-bit blocks
    # are upcast to fp32 before each tl.dot (after rounding G to the input dtype, as on GPU).
    return {"PRECISION": "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "DOT_F32": dtype != torch.float32 and interpret}


if triton is not None:

    @triton.jit
    def _fwd_kernel(x_ptr, y_ptr, s_ptr, row_ptr, part_ptr, diag_ptr, M, N, D, sxm, sym, row0, off,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    WITH_COLS: tl.constexpr, WITH_DIAG: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
        pid = tl.program_id(0)
        rm = row0 + pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        mm, dm = rm < M, rd < D
        x = tl.load(x_ptr + rm[:, None] * sxm + rd[None, :], mask=mm[:, None] & dm[None, :], other=0.0)
        if DOT_F32:
            x = x.to(tl.float32)
        s = tl.load(s_ptr)
        m_i = tl.full((BLOCK_M,), -1e30, tl.float32)  # finite: padded rows stay NaN-free
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        t_i = tl.zeros((BLOCK_M,), tl.float32)  # the raw target score S_{i, off+i}, from this very matmul
        r_lo = row0 + pid * BLOCK_M + off
        for j0 in range(0, N, BLOCK_N):
            rn = j0 + tl.arange(0, BLOCK_N)
            nm = rn < N
            y = tl.load(y_ptr + rn[:, None] * sym + rd[None, :], mask=nm[:, None] & dm[None, :], other=0.0)
            if DOT_F32:
                y = y.to(tl.float32)
            raw = tl.dot(x, tl.trans(y), input_precision=PRECISION)
            if WITH_DIAG:
                if (j0 < r_lo + BLOCK_M) & (j0 + BLOCK_N > r_lo):  # only the tiles the diagonal crosses
                    t_i += tl.sum(tl.where(rn[None, :] == rm[:, None] + off, raw, 0.0), 1)
            sc = tl.where(mm[:, None] & nm[None, :], raw * s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(sc - m_new[:, None]), 1)
            m_i = m_new
            if WITH_COLS:
                mc = tl.maximum(tl.max(sc, 0), -1e30)
                part = mc + tl.log(tl.where(nm, tl.sum(tl.exp(sc - mc[None, :]), 0), 1.0))
                tl.store(part_ptr + pid * N + rn, part, mask=nm)
        tl.store(row_ptr + rm, m_i + tl.log(tl.where(mm, l_i, 1.0)), mask=mm)  # where: no log(0) on padding
        if WITH_DIAG:
            tl.store(diag_ptr + rm, t_i, mask=mm)

    @triton.jit
    def _bwd_kernel(x_ptr, y_ptr, s_ptr, r_ptr, c_ptr, dx_ptr, dy_ptr, ds_ptr, wr, wc, wt, gmul,
                    M, N, D, sxm, sym, off,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_R: tl.constexpr, HAS_C: tl.constexpr, HAS_T: tl.constexpr, ATOMIC_DY: tl.constexpr,
                    PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
        # G / W = wr exp(S - r_i) + wc exp(S - c_j) - wt [j = off + i] (relative weights, O(1): fp16-safe), cast to
        # the input dtype for the matmuls; W * go = gmul and s are applied in fp32 to the results.
        pid = tl.program_id(0)
        rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        mm, dm = rm < M, rd < D
        xmask = mm[:, None] & dm[None, :]
        x = tl.load(x_ptr + rm[:, None] * sxm + rd[None, :], mask=xmask, other=0.0)
        if DOT_F32:
            x = x.to(tl.float32)
        s = tl.load(s_ptr)
        gm = tl.load(gmul)
        r = tl.load(r_ptr + rm, mask=mm, other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # (G/W Y)_i
        dsum = tl.zeros((BLOCK_M,), tl.float32)  # sum_j (G/W)_ij <x_i, y_j>, target excluded (the caller adds it)
        for j0 in range(0, N, BLOCK_N):
            rn = j0 + tl.arange(0, BLOCK_N)
            nm = rn < N
            ymask = nm[:, None] & dm[None, :]
            y = tl.load(y_ptr + rn[:, None] * sym + rd[None, :], mask=ymask, other=0.0)
            if DOT_F32:
                y = y.to(tl.float32)
            dot = tl.dot(x, tl.trans(y), input_precision=PRECISION)
            sc = tl.where(mm[:, None] & nm[None, :], dot * s, float("-inf"))  # padding: G = 0
            g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            if HAS_R:
                g += wr * tl.exp(sc - r[:, None])
            if HAS_C:
                c = tl.load(c_ptr + rn, mask=nm, other=0.0)
                g += wc * tl.exp(sc - c[None, :])
            dsum += tl.sum(g * dot, 1)
            if HAS_T:
                g -= tl.where((rm[:, None] + off == rn[None, :]) & mm[:, None], wt, 0.0)
            gq = g.to(x_ptr.dtype.element_ty)  # the input dtype: 16-bit tensor-core matmuls on GPU
            if DOT_F32:
                gq = gq.to(tl.float32)
            acc += tl.dot(gq, y, input_precision=PRECISION)
            if ATOMIC_DY:  # relaxed: only the sum matters, no ordering (PTX atom.relaxed, not acq_rel)
                part = tl.dot(tl.trans(gq), x, input_precision=PRECISION) * (s * gm)
                tl.atomic_add(dy_ptr + rn[:, None] * D + rd[None, :], part, mask=ymask, sem="relaxed")
        tl.store(dx_ptr + rm[:, None] * D + rd[None, :], (acc * (s * gm)).to(dx_ptr.dtype.element_ty), mask=xmask)
        tl.store(ds_ptr + pid, tl.sum(dsum, 0))


def _fwd_args(x, y, s, row, buf, diag, m: int, n: int, d: int, row0: int, off: int, with_cols: bool, with_diag: bool,
              cfg: dict, interpret: bool):
    """(positional args, keyword args) of one _fwd_kernel launch: shared by the op and fused_triton_aot."""
    return ((x, y, s, row, buf, diag, m, n, d, x.stride(0), y.stride(0), row0, off),
            dict(WITH_COLS=with_cols, WITH_DIAG=with_diag, **cfg, **_dot_opts(x.dtype, interpret)))


def _bwd_args(x, y, s, r, c, dx, dy, ds, coef: tuple[float, float, float], gmul, m: int, n: int, d: int, off: int,
              has_r: bool, has_c: bool, atomic: bool, cfg: dict, interpret: bool):
    """(positional args, keyword args) of one _bwd_kernel launch: shared by the op and fused_triton_aot."""
    return ((x, y, s, r, c, dx, dy, ds, *coef, gmul, m, n, d, x.stride(0), y.stride(0), off),
            dict(HAS_R=has_r, HAS_C=has_c, HAS_T=coef[2] != 0.0, ATOMIC_DY=atomic, **cfg,
                 **_dot_opts(x.dtype, interpret)))


def _parts(n_row_blocks: int, n: int, device: torch.device) -> int:
    """Programs per forward launch = rows of the (parts, N) column buffer: <= PART_BYTES unless that
    leaves fewer than 2 programs per SM (CUDA); 4 under the interpreter (exercises several launches)."""
    if device.type != "cuda":
        return min(n_row_blocks, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(n_row_blocks, max(2 * sms, PART_BYTES // (4 * n)))


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None and hasattr(torch.library, "triton_op"):
    from torch.library import triton_op, wrap_triton

    @triton_op("clipcore::contrastive_lse_fwd", mutates_args=())
    def contrastive_lse_fwd(x: Tensor, y: Tensor, scale: Tensor, with_cols: bool, offset: int, with_diag: bool,
                            block_m: int, block_n: int, parts: int) -> tuple[Tensor, Tensor, Tensor]:
        """(M, D), (N, D), 0-dim -> row_lse (M,), col_lse (N,) (empty when not with_cols), diag (M,) = the raw scores
        x_i . y_{offset+i} of the same matmuls (empty when not with_diag), fp32. block_m/block_n: 0 for
        ``launch_config``'s."""
        m, n, d = x.shape[0], y.shape[0], x.shape[1]
        cfg = launch_config("forward", d, x.dtype, block_m or None, block_n or None, _interpret())
        bm = cfg["BLOCK_M"]
        s = scale.to(torch.float32).reshape(1)
        row = torch.empty(m, dtype=torch.float32, device=x.device)
        col = torch.full((n if with_cols else 0,), float("-inf"), dtype=torch.float32, device=x.device)
        buf = torch.empty((parts, n) if with_cols else (1,), dtype=torch.float32, device=x.device)
        diag = torch.empty(m if with_diag else 0, dtype=torch.float32, device=x.device)
        n_rb = triton.cdiv(m, bm)
        step = max(1, REDUCE_ELEMS // parts)
        for rb0 in range(0, n_rb, parts):
            k = min(parts, n_rb - rb0)
            args, kw = _fwd_args(x, y, s, row, buf, diag, m, n, d, rb0 * bm, offset, with_cols, with_diag, cfg,
                                 _interpret())
            wrap_triton(_fwd_kernel)[(k,)](*args, **kw)
            for c0 in range(0, n if with_cols else 0, step):  # column chunks: temporaries <= REDUCE_ELEMS
                col[c0:c0 + step] = torch.logaddexp(col[c0:c0 + step], torch.logsumexp(buf[:k, c0:c0 + step], 0))
        return row, col, diag

    @triton_op("clipcore::contrastive_lse_bwd", mutates_args=())
    def contrastive_lse_bwd(x: Tensor, y: Tensor, scale: Tensor, row_lse: Tensor, col_lse: Tensor, coef: list[float],
                            gmul: Tensor, offset: int, with_cols: bool, block_m: int, block_n: int,
                            atomic: bool) -> tuple[Tensor, Tensor, Tensor]:
        """-> dX (M, D) in x.dtype, dY (N, D) in y.dtype, sum_ij (G/W)_ij <x_i, y_j> (0-dim fp32, target excluded);
        coef = (w_r, w_c, w_t) / W, gmul = W * upstream gradient (0-dim fp32); see the module docstring."""
        m, n, d = x.shape[0], y.shape[0], x.shape[1]
        cfg = launch_config("backward", d, x.dtype, block_m or None, block_n or None, _interpret())
        bm = cfg["BLOCK_M"]
        s, gm = scale.to(torch.float32).reshape(1), gmul.to(torch.float32).reshape(1)
        wr, wc, wt = coef
        dx = torch.empty((m, d), dtype=x.dtype, device=x.device)  # written once, scaled, in the input dtype
        dy = torch.zeros((n, d), dtype=torch.float32, device=x.device) if atomic else torch.empty_like(y)
        ds = torch.empty(triton.cdiv(m, bm), dtype=torch.float32, device=x.device)
        if not with_cols:  # rows-only: no column statistics (unread by the first launch, HAS_C=False)
            col_lse = torch.zeros(n, dtype=torch.float32, device=x.device)
        args, kw = _bwd_args(x, y, s, row_lse, col_lse, dx, dy, ds, (wr, wc, wt), gm, m, n, d, offset, True, with_cols,
                             atomic, cfg, _interpret())
        wrap_triton(_bwd_kernel)[(triton.cdiv(m, bm),)](*args, **kw)
        if not atomic:  # G^T: rows <-> columns, (col_lse, w_c) become the row statistics, the diagonal j = offset + i
            ds_t = torch.empty(triton.cdiv(n, bm), dtype=torch.float32, device=x.device)
            args, kw = _bwd_args(y, x, s, col_lse, row_lse, dy, dx, ds_t, (wc, wr, wt), gm, n, m, d, -offset,
                                 with_cols, True, False, cfg, _interpret())
            wrap_triton(_bwd_kernel)[(triton.cdiv(n, bm),)](*args, **kw)
        from clipcore.fused_tiles import narrow_
        return dx, narrow_(dy, y.dtype) if atomic else dy, ds.sum()


class _TritonLSE(torch.autograd.Function):
    """The Triton twin of clipcore.fused._TiledLSE (same arguments and value, inputs already in the compute dtype)."""

    @staticmethod
    def forward(ctx, x, y, scale, w_r: float, w_c: float, w_t: float, offset: int, block_m: int, block_n: int,
                parts: int):
        with_cols = w_c != 0.0
        row, col, diag = contrastive_lse_fwd(x, y, scale, with_cols, offset, w_t != 0.0, block_m, block_n, parts)
        target = diag.sum()  # sum_i S_{i, offset+i} / s, the same numbers the row log-sum-exp saw
        ctx.save_for_backward(x, y, scale, row, col, target)
        ctx.cfg = (w_r, w_c, w_t, offset, block_m, block_n)
        out = w_r * row.sum() - w_t * scale.detach().float() * target
        return out + w_c * col.sum() if with_cols else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from clipcore.fused_tiles import _weights

        x, y, scale, row, col, target = ctx.saved_tensors
        w_r, w_c, w_t, offset, block_m, block_n = ctx.cfg
        big, r_r, r_c, r_t = _weights(w_r, w_c, w_t)
        go = grad_out.float()
        dx, dy, dsum = contrastive_lse_bwd(x, y, scale, row, col, [r_r, r_c, r_t], big * go, offset, w_c != 0.0,
                                           block_m, block_n, ATOMIC)
        ds = ((big * dsum - w_t * target) * go).to(scale.dtype).reshape(scale.shape)
        return dx, dy, ds, None, None, None, None, None, None, None


def triton_lse(x: Tensor, y: Tensor, scale: Tensor, w_r: float, w_c: float, *, w_t: float = 0.0, offset: int = 0,
               block_m: int | None = None, block_n: int | None = None, parts: int | None = None) -> Tensor:
    """w_r sum_i lse_j(S_ij) + w_c sum_j lse_i(S_ij) - w_t sum_i S_{i, offset+i}, S = scale x y^T, 0-dim fp32.

    x: (M, D), y: (N, D) fp32/bf16/fp16 on one device; scale: 0-dim (may require grad). w_c = 0 skips
    the column direction; w_t weighs the diagonal target (row i's positive: column offset + i). block_m,
    block_n: Triton block sizes for both kernels (powers of two in [16, 256]; None: ``launch_config``).
    parts: programs per forward launch (None: :func:`_parts`).
    """
    if not triton_available(x.device):
        raise RuntimeError(f"kernel='triton' needs triton and a CUDA device (or TRITON_INTERPRET=1); "
                           f"got device {x.device}, triton {'missing' if triton is None else 'importable'}")
    if not hasattr(torch.library, "triton_op"):
        raise RuntimeError("kernel='triton' needs torch.library.triton_op (torch >= 2.6)")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or y.dtype != x.dtype:
        raise ValueError(f"kernel='triton' takes fp32/bf16/fp16 embeddings of one dtype; got {x.dtype}, {y.dtype}")
    bm = launch_config("forward", x.shape[1], x.dtype, block_m, block_n, _interpret())["BLOCK_M"]  # validates
    parts = parts or _parts(triton.cdiv(x.shape[0], bm), y.shape[0], x.device)
    return _TritonLSE.apply(x.contiguous(), y.contiguous(), scale.reshape(()), w_r, w_c, w_t, offset, block_m or 0,
                            block_n or 0, parts)
