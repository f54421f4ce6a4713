"""Memory-efficient contrastive loss: tiled log-sum-exp, never holding the B x B logits.

:func:`fused_contrastive_loss` has the signature and the values/gradients of
:func:`clipcore.losses.contrastive_loss` (symmetric InfoNCE, multi-positive labels, positive-pair
regulariser, logit bias), plus tiling, compile and distributed options. Run its tests with
``pytest tests/test_fused.py`` and its benchmark with ``python benchmarks/loss.py --device cpu``.

Why it is exact without the logits. With L = s X Y^T (B x B, s = logit_scale) the loss is

    0.5/B * sum_i lse_j(L_ij)  +  0.5/B * sum_j lse_i(L_ij)  -  T,

where only the two log-sum-exp sums touch B x B entries. The target term T is O(B D): with the
diagonal targets T = (s/B) sum_i <x_i, y_i>; with labels (p_ij = 1[y_i = y_j] / n_i) it is
T = 0.5 (s/B) sum_i <x_i, ybar_c(i)> + 0.5 (s/B) sum_j <y_j, xbar_c(j)>, class means of the
other side. Diagonal targets live inside :class:`_TiledLSE` (their value read from the tiles' own
scores, their gradient subtracted on G's diagonal before it is cast: nothing of size B x D is saved
for them); label targets are class sums, O(k D) for k classes, through plain autograd, as are the
regulariser (``regulariser.pair_penalty``) and the bias (a constant bias cancels in softmax cross-entropy, so
its gradient is exactly zero).

Precision: one per call. The dtype of the matmuls is resolved on entry (:func:`compute_dtype`: autocast's
when autocast is on, else the inputs'); forward and backward then run every matmul in it, with autocast off
and explicit casts of each row/column block, accumulating in fp32 (fp64 for fp64). Scores of 16-bit inputs
come out of the matmul in fp32 (``fused_tiles._scores``) and the logit scale is applied in fp32, so neither is
rounded to 16 bits. Gradients come back in the inputs' own dtypes.

The log-sum-exp part is :class:`_TiledLSE`, a custom ``autograd.Function``:
- forward: for each (row tile, column tile) compute S = s (X_i Y_j^T) (one matmul), then in fp32
  (fp64 for fp64 inputs) its row and column log-sum-exp, merged into running (B,) stats with
  ``logaddexp``. Both directions come from the same tile. Saved: X, Y, s, the two (B,) lse vectors
  and, within a budget (``keep_mib``), some score tiles.
- backward: recompute each tile not kept, G/W = exp(S - lse_row) + exp(S - lse_col) - 2 [diagonal]
  (G = dLoss/dL_ij, W = 0.5/B: O(1) entries, so a 16-bit G does not underflow), accumulate (G/W Y)_i over
  column tiles and dY_j += (G/W)^T X_i over row tiles (fp32; addmm, beta = 1, for fp32 inputs); dX_i =
  s W (G/W Y)_i and ds = W sum_i <x_i, (G/W Y)_i> when row block i is complete; dY is scaled at the end
  and narrowed to the input dtype in place (``fused_tiles.narrow_``).
Cost: 4 B x B x D matmuls (the floor is 3: the fourth is the recompute of S) unless the tiles are
kept; memory O(B D + tile^2 + keep_mib), never B x B: bf16, d = 512, CUDA tiles: 3088 bytes per row
(dX, the fp32 dY accumulator, the lse vectors) + the tiles, 3.66 GiB at B = 1,048,576 (tests/test_fused.py).

Distributed form (open_clip ``ClipLoss(local_loss=True, gather_with_grad=True)`` semantics). Each
rank passes its local rows ``image, text`` (B_r, D), the all-gathered ``gathered_image,
gathered_text`` (N, D, gathered *with* autograd, e.g. ``torch.distributed.nn.all_gather``) and
``rank_offset`` (index of its first row in the gathered batch; needed with labels, which are then
the gathered (N,) labels). It returns 0.5 * (mean over its image rows of the image->text CE against
all N texts + mean over its text rows of the text->image CE against all N images) + the regulariser,
exactly open_clip's per-rank value. With equal shards the mean over ranks is the full-batch loss,
and the usual backward (all_gather's reduce-scatter of the gathered part, then DDP's gradient
average) gives exactly the full-batch gradients.

    all_img = torch.cat(torch.distributed.nn.all_gather(img))    # (N, D), differentiable
    all_txt = torch.cat(torch.distributed.nn.all_gather(txt))
    loss = fused_contrastive_loss(img, txt, scale, gathered_image=all_img, gathered_text=all_txt,
                                  rank_offset=rank * img.shape[0], labels=all_labels_or_None)

Each rank runs two row-only passes (its image rows against all texts, its text rows against all
images): 2 B_r x N x D matmuls forward, as open_clip's local loss; the positive-pair penalty uses the
local pairs for ``pos`` and the gathered batch for ``neg``/``both``.

Compile: the per-tile elementwise/reduction functions (the matmuls are aten calls either way) are
``torch.compile``d (inductor: Triton on GPU, C++ on CPU) when ``compile`` is True or a backend name.
``"auto"`` (default) compiles on CUDA and runs the in-place eager tiles on CPU: there matmuls dominate,
the two measured within noise of each other (benchmarks/README.md) and a cold compile costs 5-15 s.
If compilation fails, a warning is printed and the eager tiles are used.

Kernel: ``kernel="triton"`` runs the log-sum-exp passes (both forms) through the hand-written Triton
kernels of :mod:`clipcore.fused_triton` (score tiles kept on-chip; CUDA, or CPU under TRITON_INTERPRET=1;
fp64 inputs stay on the torch tiles; under autocast the inputs are cast to its dtype once); ``tile``/
``col_tile`` are then its block sizes and ``keep_mib``, ``compile`` are unused. ``"auto"`` (default) and
``"torch"`` are the tiles above: the Triton path is not measured on a GPU yet (benchmarks/README.md).
Training picks it with ``--loss-kernel`` (``TrainConfig.loss_kernel``).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from clipcore.fused_tiles import _acc_dtype, _scores, _weights, narrow_, tile_kernels
from clipcore.regulariser import reg_term

# Tiles are square, TILE x TILE (smaller only at the edges): every matmul of a tile then has an inner
# dimension >= min(TILE, D); thin tiles make dY += G^T X_i a short-K matmul. On the 2-core CPU, B = 4096,
# 512-row full-width tiles ran at 2.8x the matmul floor and 2048^2 tiles at 1.6x; at B = 16k, 2048^2
# tiles at 1.7x and 4096^2 at 1.4x. 4096^2 fp32 = 64 MiB; on GPU 8192^2 (B = 1M is 128 x 128 tiles).
TILE = {"cpu": 4096, "cuda": 8192}
# Score tiles kept from forward to backward instead of recomputed (MiB). On CPU the matmul dominates, so
# keeping the tiles of a small batch (all of B = 4096 in fp32: one tile) removes the fourth matmul; at
# B = 16k it keeps 1 of 16. On GPU the default is pure recompute: memory is the point there.
KEEP_MIB = {"cpu": 64, "cuda": 0}


def tile_sizes(m: int, n: int, device: torch.device, tile: int | None, col_tile: int | None) -> tuple[int, int]:
    """(row tile, column tile) for an (m, n) score matrix: ``TILE`` squares unless given."""
    side = TILE["cuda" if device.type == "cuda" else "cpu"]
    tr = tile or side
    tc = col_tile or tile or side
    return max(1, min(tr, m)), max(1, min(tc, n))


# ---------------------------------------------------------------- the autograd Function
class _TiledLSE(torch.autograd.Function):
    """w_r sum_i lse_j(S_ij) + w_c sum_j lse_i(S_ij) - w_t sum_i S_{i, offset+i} of S = s X Y^T, tile by tile.

    x: (M, D), y: (N, D), scale: 0-dim. w_c = 0 skips the column direction; the last term is the diagonal
    target (row i's positive is column offset + i; w_t = 0 when the targets come from labels). Returns a 0-dim
    tensor in the accumulation dtype (fp32, fp64 for fp64 inputs). Forward and backward run every matmul in ``cd``
    (one precision per call: the caller resolves autocast), each row/column block cast to it as it is used, with
    fp32 accumulation; the gradients come back in x's and y's own dtypes (fp32 inputs under bf16 autocast: fp32
    gradients, as autocast's own matmuls give). Saves x, y, scale, the (M,) and (N,) lse and, up to
    ``keep_bytes``, raw score tiles that the backward reuses.
    """

    @staticmethod
    def forward(ctx, x, y, scale, w_r: float, w_c: float, w_t: float, offset: int, tr: int, tc: int,
                keep_bytes: int, kernels: dict, cd: torch.dtype):
        acc = _acc_dtype(cd)
        s = scale.detach().to(acc)
        m, n = x.shape[0], y.shape[0]
        cols = w_c != 0.0
        row_lse = torch.empty(m, dtype=acc, device=x.device)
        col_lse = torch.full((n,), -math.inf, dtype=acc, device=x.device) if cols else None
        target = torch.zeros((), dtype=acc, device=x.device)  # sum_i S_{i, offset+i} / s, from the tiles' own scores
        kept = {}
        for i0 in range(0, m, tr):
            xi, r = x[i0:i0 + tr].to(cd), None
            for j0 in range(0, n, tc):
                sc = _scores(xi, y[j0:j0 + tc].to(cd))
                if w_t:  # the same numbers the log-sum-exp sees: a batch of one gives exactly 0
                    target += sc.diagonal(offset + i0 - j0).sum().to(acc)
                if cols:
                    tr_lse, tc_lse = kernels["lse_both"](sc, s)
                    col_lse[j0:j0 + tc] = torch.logaddexp(col_lse[j0:j0 + tc], tc_lse)
                else:
                    tr_lse = kernels["lse_rows"](sc, s)
                r = tr_lse if r is None else torch.logaddexp(r, tr_lse)
                if sc.nbytes <= keep_bytes:
                    kept[i0, j0] = sc
                    keep_bytes -= sc.nbytes
            row_lse[i0:i0 + tr] = r
        ctx.save_for_backward(x, y, scale, row_lse, col_lse if cols else row_lse.new_empty(0), target)
        ctx.cfg = (w_r, w_c, w_t, offset, tr, tc, kernels, cd)
        ctx.kept = kept
        out = w_r * row_lse.sum() - w_t * s * target
        return out + w_c * col_lse.sum() if cols else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, y, scale, row_lse, col_lse, target = ctx.saved_tensors
        w_r, w_c, w_t, offset, tr, tc, kernels, cd = ctx.cfg
        kept, ctx.kept = ctx.kept, {}  # consumed (overwritten) here; a second backward recomputes
        acc = row_lse.dtype
        go = grad_out.to(acc)
        s = scale.detach().to(acc)
        m, n = x.shape[0], y.shape[0]
        # G = dLoss/dS = W (exp(S - a_i) + exp(S - c_j) - w_t' [j = offset + i]), the relative weights folded into
        # the shifts (w' exp(S - lse) = exp(S - (lse - log w')); none when w_r = w_c); G / W is cast to cd.
        big, r_r, r_c, r_t = _weights(w_r, w_c, w_t)
        a = row_lse if r_r == 1.0 else row_lse - math.log(r_r)
        c = None if w_c == 0.0 else col_lse if r_c == 1.0 else col_lse - math.log(r_c)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dy = torch.zeros(y.shape, dtype=acc, device=x.device)  # sum_i (G/W)^T X_i, fp32 across row blocks
        dscale = torch.zeros((), dtype=acc, device=x.device)
        for i0 in range(0, m, tr):
            xi, ai = x[i0:i0 + tr].to(cd), a[i0:i0 + tr]
            gx = torch.zeros(xi.shape, dtype=acc, device=x.device)  # (G/W @ Y)_i: complete after the j loop
            for j0 in range(0, n, tc):
                yj = y[j0:j0 + tc].to(cd)
                sc = kept.pop((i0, j0), None)
                if sc is None:
                    sc = _scores(xi, yj)
                g = kernels["grad_rows"](sc, s, ai) if c is None else kernels["grad_both"](sc, s, ai, c[j0:j0 + tc])
                del sc
                if r_t:
                    g.diagonal(offset + i0 - j0).sub_(r_t)  # the target p_ij = [j = offset + i], before the cast
                g = g.to(cd)
                if cd == acc:  # accumulate inside the matmul (beta = 1): no extra pass
                    gx.addmm_(g, yj)
                    dy[j0:j0 + tc].addmm_(g.T, xi)
                else:
                    gx += _scores(g, yj.T)
                    dy[j0:j0 + tc] += _scores(g.T, xi.T)
            # dLoss/ds = sum_ij G_ij <x_i, y_j> = W sum_i <x_i, (G/W Y)_i>;  dLoss/dX_i = s W (G/W Y)_i.
            dscale += (xi.to(acc) * gx).sum()
            if dx is not None:
                dx[i0:i0 + tr] = gx.mul_(s * big * go)
        dscale = (dscale * big * go).to(scale.dtype) if ctx.needs_input_grad[2] else None
        dy = narrow_(dy.mul_(s * big * go), y.dtype) if ctx.needs_input_grad[1] else None
        return dx, dy, dscale, None, None, None, None, None, None, None, None, None


# ---------------------------------------------------------------- the loss
def _class_sums(v: Tensor, cls: Tensor, k: int, acc: torch.dtype, chunk: int = 1 << 16) -> Tensor:
    """(R, D) rows, (R,) class ids -> (k, D) per-class sums in ``acc``, converted chunk by chunk (no (R, D) copy)."""
    out = torch.zeros(k, v.shape[1], dtype=acc, device=v.device)
    for i in range(0, v.shape[0], chunk):
        out = out.index_add(0, cls[i:i + chunk], v[i:i + chunk].to(acc))
    return out


def _label_target(image: Tensor, text: Tensor, all_image: Tensor, all_text: Tensor, scale: Tensor,
                  labels: Tensor, offset: int) -> Tensor:
    """0.5 * (mean_i sum_j p_ij L_ij over local image rows + the same over local text rows), p_ij = [y_i = y_j]/n_i,
    as class sums: O(k D) fp32 (k classes), no (B, D) fp32 copy. (Diagonal targets are inside _TiledLSE.)"""
    acc = _acc_dtype(image.dtype)
    _, cls = torch.unique(labels, return_inverse=True)
    k = int(cls.max()) + 1
    counts = torch.bincount(cls, minlength=k).to(acc)[:, None]
    local = cls[offset:offset + image.shape[0]]
    rows = (_class_sums(image, local, k, acc) * _class_sums(all_text, cls, k, acc) / counts).sum()
    cols = (_class_sums(text, local, k, acc) * _class_sums(all_image, cls, k, acc) / counts).sum()
    return scale.to(acc) * 0.5 * (rows + cols) / image.shape[0]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the loss runs its matmuls in, forward and backward: autocast's for fp32/16-bit inputs when autocast
    is on for x's device, else x's own."""
    dev = x.device.type
    if x.dtype != torch.float64 and torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def fused_contrastive_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    *,
    labels: Tensor | None = None,
    logit_bias: Tensor | float | None = None,
    reg_lambda: float = 0.0,
    reg_pairs: str = "pos",
    reg_over_tau: bool = False,
    tile: int | None = None,
    col_tile: int | None = None,
    keep_mib: float | None = None,
    compile: bool | str = "auto",
    gathered_text: Tensor | None = None,
    gathered_image: Tensor | None = None,
    rank_offset: int | None = None,
    kernel: str = "auto",
) -> Tensor:
    """Symmetric InfoNCE as :func:`clipcore.losses.contrastive_loss`, without the B x B logits.

    image, text: (B, D) pairs (a rank's local rows in the distributed form). logit_scale: scalar
    1/tau, a 0-dim tensor may require grad. labels: (B,) ints, equal labels are positives (the
    gathered (N,) labels in the distributed form). logit_bias: scalar or tensor (cancels; zero grad).
    reg_*: the positive-pair regulariser, as in ``losses.contrastive_loss``.
    tile, col_tile: rows and columns per tile (None: ``TILE``; col_tile defaults to tile).
    keep_mib: MiB of score tiles kept for the backward instead of recomputed (None: ``KEEP_MIB``;
    0 never holds more than one tile).
    compile: True (inductor), a torch.compile backend name (e.g. "aot_eager"), False (eager tiles) or
    "auto" (inductor on CUDA, eager on CPU).
    gathered_text, gathered_image: (N, D) all-gathered embeddings (with autograd), rank_offset: this
    rank's first row in them. Returns this rank's share (see the module docstring).
    kernel: "auto"/"torch" (the torch tiles) or "triton" (clipcore.fused_triton; see the module docstring).
    Memory: O((B + N) D + tile^2 + keep_mib), never B x N. Time: 4 matmuls of B x N x D (3 for the
    kept tiles) against the materialised loss's 3, plus elementwise work on the tiles.
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text embeddings must both be (B, D); got {tuple(image.shape)} and {tuple(text.shape)}")
    if image.shape[0] == 0:
        raise ValueError("the contrastive loss of an empty batch is undefined (image and text have 0 rows)")
    if kernel not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel must be 'auto', 'torch' or 'triton'; got {kernel!r}")
    distributed = gathered_text is not None or gathered_image is not None
    if distributed:
        if gathered_text is None or gathered_image is None:
            raise ValueError("the distributed form needs both gathered_text and gathered_image (N, D); pass both or neither")
        if gathered_text.shape != gathered_image.shape or gathered_text.dim() != 2 or gathered_text.shape[1] != image.shape[1]:
            raise ValueError(f"gathered_text and gathered_image must both be (N, {image.shape[1]}); got "
                             f"{tuple(gathered_text.shape)} and {tuple(gathered_image.shape)}")
        all_image, all_text = gathered_image, gathered_text
    else:
        all_image, all_text = image, text
    b, n = image.shape[0], all_text.shape[0]
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != n:
            what = "the gathered (N,) labels of all ranks" if distributed else "one label per row"
            raise ValueError(f"labels must be ({n},) ({what}); got {tuple(labels.shape)}")
        if distributed and rank_offset is None:
            raise ValueError("labels in the distributed form need rank_offset (this rank's first row in the gathered batch)")
    offset = rank_offset or 0
    if not 0 <= offset <= n - b:
        raise ValueError(f"rank_offset={rank_offset} does not fit {b} local rows in a gathered batch of {n}")

    scale = logit_scale if isinstance(logit_scale, Tensor) else torch.tensor(float(logit_scale), device=image.device)
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar; got shape {tuple(scale.shape)}")
    scale = scale.reshape(())
    # One precision per call: the matmuls run in the dtype resolved here (autocast's, or the inputs'), forward and
    # backward alike, with fp32 accumulation; everything else runs with autocast off in the inputs' dtype.
    dev, cd = image.device.type, compute_dtype(image)
    autocast = torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)
    with torch.autocast(dev, enabled=False) if autocast else contextlib.nullcontext():
        image, text = image.contiguous(), text.contiguous()
        all_image, all_text = (all_image.contiguous(), all_text.contiguous()) if distributed else (image, text)
        loss = _loss(image, text, all_image, all_text, scale, labels, offset, distributed, tile, col_tile, keep_mib,
                     compile, kernel, cd).to(image.dtype)
        if isinstance(logit_bias, Tensor):
            loss = loss + 0.0 * logit_bias.sum()  # softmax CE is shift-invariant: keep bias in the graph, grad 0
        loss = loss + reg_term(image, text, all_image, all_text, logit_scale, reg_lambda=reg_lambda,
                               reg_pairs=reg_pairs, reg_over_tau=reg_over_tau)
    return loss


def _loss(image, text, all_image, all_text, scale, labels, offset, distributed, tile, col_tile, keep_mib, compile,
          kernel, cd) -> Tensor:
    """The InfoNCE part of fused_contrastive_loss (arguments validated; matmuls in ``cd``), in the acc dtype."""
    b, n = image.shape[0], all_text.shape[0]
    kernels = tile_kernels(compile, image.device)
    kind = "cuda" if image.device.type == "cuda" else "cpu"
    keep = int((KEEP_MIB[kind] if keep_mib is None else keep_mib) * 2**20)
    tr, tc = tile_sizes(b, n, image.device, tile, col_tile)
    if kernel == "triton" and cd != torch.float64:
        from clipcore.fused_triton import triton_lse

        def lse_pass(x, y, w_c, w_t, keep_bytes):  # the kernels read their inputs in cd: one cast of each
            return triton_lse(x.to(cd), y.to(cd), scale, 0.5 / b, w_c, w_t=w_t, offset=offset, block_m=tile,
                              block_n=col_tile)
    else:
        def lse_pass(x, y, w_c, w_t, keep_bytes):
            return _TiledLSE.apply(x, y, scale, 0.5 / b, w_c, w_t, offset, tr, tc, keep_bytes, kernels, cd)
    diag = labels is None  # diagonal targets go inside the tiles; label targets are class sums (O(k D))
    if distributed:
        # Image rows against all texts, text rows against all images: two row-only passes.
        w_t = 0.5 / b if diag else 0.0
        lse = lse_pass(image, all_text, 0.0, w_t, keep // 2) + lse_pass(text, all_image, 0.0, w_t, keep // 2)
    else:
        lse = lse_pass(image, text, 0.5 / b, 1.0 / b if diag else 0.0, keep)
    return lse if diag else lse - _label_target(image, text, all_image, all_text, scale, labels, offset)
