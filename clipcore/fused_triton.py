"""Triton kernels for the tiled contrastive log-sum-exp: the score tiles never leave the chip.

:func:`triton_lse` is the Triton twin of ``clipcore.fused._TiledLSE`` and returns the same 0-dim fp32
value ``w_r * sum_i row_lse_i + w_c * sum_j col_lse_j`` with

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
reduces the buffer over its rows (logsumexp) into col_lse with logaddexp: no atomics, no
read-modify-write in the kernel, and the buffer is bounded (``parts`` rows; see :func:`_parts`).
Cost: 1 M x N x D matmul (the floor's first), 2 exp per score (row and column).

Backward, ``_bwd_kernel``, given dLoss/drow_lse = g_r (M,) and dLoss/dcol_lse = g_c (N,) (the loss
weights times the upstream gradient; torch.library.register_autograd passes them), with
G_ij = g_r,i exp(S_ij - row_lse_i) + g_c,j exp(S_ij - col_lse_j) = dLoss/dS_ij:
    dX = s G Y,    dY = s G^T X,    ds = sum_ij G_ij <x_i, y_j>.
Grid: one program per BLOCK_M row block; it loads X_i once, streams Y_j, recomputes S_ij on-chip,
forms G (cast to the input dtype for the matmuls, as the torch tiles do), accumulates (G Y)_i in an
fp32 (BLOCK_M, D) register block, stored once as s (G Y)_i in the input dtype, and sum G * <x, y>
in fp32 (one partial per program, summed in torch), and, by the module flag ``ATOMIC``:
- True (default): adds G^T X_i into an fp32 (N, D) dY buffer with tl.atomic_add. Matmuls: forward 1
  + backward 3 (recompute S, G Y, G^T X) = 4 M N D against the floor's 3: 1.33x in FLOPs, the only
  layout here that leaves room under issue 6's 1.5x target. dY's fp32 summation order then varies
  from run to run on GPU (not bitwise deterministic), and the atomics move BLOCK_N * D * 4 bytes per
  tile; at D = 512 that traffic may bound the speed (unmeasured).
- False: a second launch of the same kernel with the roles swapped (Y as rows, X as columns,
  (col_lse, g_c) as the row statistics: G^T has the same form) accumulates dY in registers.
  Deterministic, no atomics, but 5 M N D matmuls in all (1.67x the floor in FLOPs).
Besides the matmuls: 2 exp per score forward and 1-2 backward (row and column terms), all fp32.
Extra memory: (M + N) fp32 statistics, the fp32 (N, D) dY buffer with atomics (as the torch tiles'
fp32 dY accumulator) and the forward's (parts, N) buffer; never M x N.

Registers/tiles. The kernels hold full-width rows (BLOCK_D = next power of two >= D): the X_i
block, one Y_j block, the (BLOCK_M, BLOCK_N) score tile and, backward, the (BLOCK_M, BLOCK_D) fp32
accumulator. At D = 512 that is 128 KiB of accumulator for BLOCK_M = 64, so the GPU defaults below
are small blocks; they are guesses, **not measured or tuned on a GPU** (none was available), as is
everything about speed here (a K-loop over D chunks or autotuning may be needed). tl.dot needs
every block dimension >= 16.

Registration: the kernels are launched through ``torch.library.wrap_triton`` inside the
``torch.library.triton_op`` custom ops ``clipcore::contrastive_lse_fwd`` / ``_bwd``, tied together
by ``register_autograd``, so torch.compile sees Triton kernel calls it can trace (not opaque ops).
Under ``TRITON_INTERPRET=1`` the same ops run eagerly on CPU tensors (numpy interpreter): that is how
``tests/test_fused_triton.py`` checks values and gradients. Tracing does not work under the
interpreter (wrap_triton then returns the interpreted function, which fake tensors cannot run), so
the test traces the ops without it, on fake CUDA tensors, into triton_kernel_wrapper_functional
nodes. No direct-launch fallback was needed. Interpreter quirk: its tl.dot multiplies the raw bits
of bf16 blocks, so under the interpreter 16-bit blocks are upcast to fp32 first (``DOT_F32``).
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

# Default (BLOCK_M, BLOCK_N) by device kind; the CPU entry is for the interpreter (tests).
BLOCKS = {"cuda": (64, 32), "cpu": (16, 16)}
NUM_WARPS = 8
ATOMIC = True  # backward layout (module docstring): dY by atomics; False: the two-launch layout
PART_BYTES = 256 * 2**20  # forward column buffer budget on CUDA (at least 2 programs per SM regardless)


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


def _dot_opts(dtype: torch.dtype) -> dict:
    # fp32 inputs: tf32 tensor cores only where torch's own fp32 matmuls may use them. DOT_F32: the
    # interpreter's tl.dot is wrong on bf16 blocks (triton 3.8: raw bits), so under it 16-bit blocks
    # are upcast to fp32 before each tl.dot (after rounding G to the input dtype, as on GPU).
    return {"PRECISION": "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "DOT_F32": dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"}


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


if triton is not None:

    @triton.jit
    def _fwd_kernel(x_ptr, y_ptr, s_ptr, row_ptr, part_ptr, M, N, D, sxm, sym, row0,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    WITH_COLS: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
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
        for j0 in range(0, N, BLOCK_N):
            rn = j0 + tl.arange(0, BLOCK_N)
            nm = rn < N
            y = tl.load(y_ptr + rn[:, None] * sym + rd[None, :], mask=nm[:, None] & dm[None, :], other=0.0)
            if DOT_F32:
                y = y.to(tl.float32)
            sc = tl.dot(x, tl.trans(y), input_precision=PRECISION) * s
            sc = tl.where(mm[:, None] & nm[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(sc - m_new[:, None]), 1)
            m_i = m_new
            if WITH_COLS:
                mc = tl.maximum(tl.max(sc, 0), -1e30)
                part = mc + tl.log(tl.where(nm, tl.sum(tl.exp(sc - mc[None, :]), 0), 1.0))
                tl.store(part_ptr + pid * N + rn, part, mask=nm)
        tl.store(row_ptr + rm, m_i + tl.log(tl.where(mm, l_i, 1.0)), mask=mm)  # where: no log(0) on padding

    @triton.jit
    def _bwd_kernel(x_ptr, y_ptr, s_ptr, r_ptr, c_ptr, gr_ptr, gc_ptr, dx_ptr, dy_ptr, ds_ptr,
                    M, N, D, sxm, sym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_R: tl.constexpr, HAS_C: tl.constexpr, ATOMIC_DY: tl.constexpr, PRECISION: tl.constexpr,
                    DOT_F32: tl.constexpr):
        pid = tl.program_id(0)
        rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        mm, dm = rm < M, rd < D
        xmask = mm[:, None] & dm[None, :]
        x = tl.load(x_ptr + rm[:, None] * sxm + rd[None, :], mask=xmask, other=0.0)
        if DOT_F32:
            x = x.to(tl.float32)
        s = tl.load(s_ptr)
        r = tl.load(r_ptr + rm, mask=mm, other=0.0)
        gr = tl.load(gr_ptr + rm, mask=mm, other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # (G Y)_i
        dsum = tl.zeros((BLOCK_M,), tl.float32)  # sum_j G_ij <x_i, y_j>
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
                g += gr[:, None] * tl.exp(sc - r[:, None])
            if HAS_C:
                c = tl.load(c_ptr + rn, mask=nm, other=0.0)
                gc = tl.load(gc_ptr + rn, mask=nm, other=0.0)
                g += gc[None, :] * tl.exp(sc - c[None, :])
            dsum += tl.sum(g * dot, 1)
            gq = g.to(x_ptr.dtype.element_ty)  # the input dtype: 16-bit tensor-core matmuls on GPU
            if DOT_F32:
                gq = gq.to(tl.float32)
            acc += tl.dot(gq, y, input_precision=PRECISION)
            if ATOMIC_DY:
                part = tl.dot(tl.trans(gq), x, input_precision=PRECISION)
                tl.atomic_add(dy_ptr + rn[:, None] * D + rd[None, :], part, mask=ymask)
        tl.store(dx_ptr + rm[:, None] * D + rd[None, :], (acc * s).to(dx_ptr.dtype.element_ty), mask=xmask)
        tl.store(ds_ptr + pid, tl.sum(dsum, 0))


def compile_for(arch: int, d: int, block_m: int, block_n: int, num_warps: int, dtype: str = "bf16") -> dict:
    """Compile the forward and the (atomic) backward kernel ahead of time for ``sm_<arch>``, as the ops launch them
    for embeddings of width ``d`` in ``dtype`` -> {"forward": kernel, "backward": kernel}. Needs no GPU (PTX, then
    the ptxas shipped with triton): tests check the kernels compile for real hardware (the interpreter does not),
    benchmarks/triton_static.py reads their shared memory and register use."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def signature(fn):
        return {n: "constexpr" if p.is_constexpr else
                ("*" + (dtype if n in ("x_ptr", "y_ptr", "dx_ptr") else "fp32") if n.endswith("_ptr") else "i32")
                for n, p in zip(fn.arg_names, fn.params)}

    common = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": _block_d(d), "PRECISION": "tf32", "DOT_F32": False}
    todo = {"forward": (_fwd_kernel, {**common, "WITH_COLS": True}),
            "backward": (_bwd_kernel, {**common, "HAS_R": True, "HAS_C": True, "ATOMIC_DY": True})}
    return {name: triton.compile(ASTSource(fn=fn, signature=signature(fn), constexprs=consts),
                                 target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
            for name, (fn, consts) in todo.items()}


def _parts(n_row_blocks: int, n: int, device: torch.device) -> int:
    """Programs per forward launch = rows of the (parts, N) column buffer: <= PART_BYTES unless that
    leaves fewer than 2 programs per SM (CUDA); 4 under the interpreter (exercises several launches)."""
    if device.type != "cuda":
        return min(n_row_blocks, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(n_row_blocks, max(2 * sms, PART_BYTES // (4 * n)))


def _launch_opts(device: torch.device) -> dict:
    return {"num_warps": NUM_WARPS} if device.type == "cuda" else {}


if triton is not None and hasattr(torch.library, "triton_op"):
    from torch.library import triton_op, wrap_triton

    @triton_op("clipcore::contrastive_lse_fwd", mutates_args=())
    def contrastive_lse_fwd(x: Tensor, y: Tensor, scale: Tensor, with_cols: bool, block_m: int, block_n: int,
                            parts: int) -> tuple[Tensor, Tensor]:
        """(M, D), (N, D), 0-dim -> row_lse (M,), col_lse (N,) (empty when not with_cols), fp32."""
        m, n, d = x.shape[0], y.shape[0], x.shape[1]
        s = scale.to(torch.float32).reshape(1)
        row = torch.empty(m, dtype=torch.float32, device=x.device)
        col = torch.full((n if with_cols else 0,), float("-inf"), dtype=torch.float32, device=x.device)
        buf = torch.empty((parts, n) if with_cols else (1,), dtype=torch.float32, device=x.device)
        n_rb = triton.cdiv(m, block_m)
        for rb0 in range(0, n_rb, parts):
            k = min(parts, n_rb - rb0)
            wrap_triton(_fwd_kernel)[(k,)](
                x, y, s, row, buf, m, n, d, x.stride(0), y.stride(0), rb0 * block_m,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block_d(d), WITH_COLS=with_cols,
                **_dot_opts(x.dtype), **_launch_opts(x.device))
            if with_cols:
                col = torch.logaddexp(col, torch.logsumexp(buf[:k], 0))
        return row, col

    @triton_op("clipcore::contrastive_lse_bwd", mutates_args=())
    def contrastive_lse_bwd(x: Tensor, y: Tensor, scale: Tensor, row_lse: Tensor, col_lse: Tensor, g_row: Tensor,
                            g_col: Tensor, with_cols: bool, block_m: int, block_n: int,
                            atomic: bool) -> tuple[Tensor, Tensor, Tensor]:
        """-> dX (M, D) in x.dtype, dY (N, D) in y.dtype, ds (0-dim, scale.dtype); see the module docstring."""
        m, n, d = x.shape[0], y.shape[0], x.shape[1]
        s = scale.to(torch.float32).reshape(1)
        dx = torch.empty((m, d), dtype=x.dtype, device=x.device)  # written once, scaled, in the input dtype
        dy = torch.zeros((n, d), dtype=torch.float32, device=x.device) if atomic else torch.empty_like(y)
        ds = torch.empty(triton.cdiv(m, block_m), dtype=torch.float32, device=x.device)
        opts = dict(BLOCK_D=_block_d(d), **_dot_opts(x.dtype), **_launch_opts(x.device))
        if not with_cols:  # rows-only: zero column statistics (unread by the first launch, HAS_C=False)
            col_lse = g_col = torch.zeros(n, dtype=torch.float32, device=x.device)
        wrap_triton(_bwd_kernel)[(triton.cdiv(m, block_m),)](
            x, y, s, row_lse, col_lse, g_row, g_col, dx, dy, ds, m, n, d, x.stride(0), y.stride(0),
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_R=True, HAS_C=with_cols, ATOMIC_DY=atomic, **opts)
        if not atomic:  # G^T: rows <-> columns, (col_lse, g_col) become the row statistics
            ds_t = torch.empty(triton.cdiv(n, block_m), dtype=torch.float32, device=x.device)
            wrap_triton(_bwd_kernel)[(triton.cdiv(n, block_m),)](
                y, x, s, col_lse, row_lse, g_col, g_row, dy, dx, ds_t, n, m, d, y.stride(0), x.stride(0),
                BLOCK_M=block_m, BLOCK_N=block_n, HAS_R=with_cols, HAS_C=True, ATOMIC_DY=False, **opts)
        return dx, (dy * s).to(y.dtype) if atomic else dy, ds.sum().to(scale.dtype)

    def _setup_context(ctx, inputs, output):
        x, y, scale, with_cols, block_m, block_n, _ = inputs
        ctx.save_for_backward(x, y, scale, *output)
        ctx.cfg = (with_cols, block_m, block_n)

    def _backward(ctx, g_row, g_col):
        x, y, scale, row_lse, col_lse = ctx.saved_tensors
        with_cols, block_m, block_n = ctx.cfg
        g_row = torch.zeros_like(row_lse) if g_row is None else g_row.to(torch.float32).contiguous()
        g_col = torch.zeros_like(col_lse) if g_col is None else g_col.to(torch.float32).contiguous()
        dx, dy, ds = contrastive_lse_bwd(x, y, scale, row_lse, col_lse, g_row, g_col, with_cols, block_m, block_n,
                                         ATOMIC)
        return dx, dy, ds.reshape(scale.shape), None, None, None, None

    contrastive_lse_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_lse(x: Tensor, y: Tensor, scale: Tensor, w_r: float, w_c: float, *, block_m: int | None = None,
               block_n: int | None = None, parts: int | None = None) -> Tensor:
    """w_r * sum_i lse_j(S_ij) + w_c * sum_j lse_i(S_ij), S = scale * x @ y.T, as a 0-dim fp32 tensor.

    x: (M, D), y: (N, D) fp32/bf16/fp16 on one device; scale: 0-dim (may require grad). w_c = 0 skips
    the column direction. block_m, block_n: Triton block sizes (powers of two in [16, 256]; None:
    ``BLOCKS``). parts: programs per forward launch (None: :func:`_parts`).
    """
    if not triton_available(x.device):
        raise RuntimeError(f"kernel='triton' needs triton and a CUDA device (or TRITON_INTERPRET=1); "
                           f"got device {x.device}, triton {'missing' if triton is None else 'importable'}")
    if not hasattr(torch.library, "triton_op"):
        raise RuntimeError("kernel='triton' needs torch.library.triton_op (torch >= 2.6)")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or y.dtype != x.dtype:
        raise ValueError(f"kernel='triton' takes fp32/bf16/fp16 embeddings of one dtype; got {x.dtype}, {y.dtype}")
    bm_default, bn_default = BLOCKS["cuda" if x.device.type == "cuda" else "cpu"]
    bm = _check_block("tile", block_m or bm_default)
    bn = _check_block("col_tile", block_n or bn_default)
    with_cols = w_c != 0.0
    parts = parts or _parts(triton.cdiv(x.shape[0], bm), y.shape[0], x.device)
    row, col = contrastive_lse_fwd(x.contiguous(), y.contiguous(), scale.reshape(()), with_cols, bm, bn, parts)
    out = w_r * row.sum()
    return out + w_c * col.sum() if with_cols else out
