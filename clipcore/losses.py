"""Every contrastive loss of clipcore, as a function of embeddings.

One function, :func:`contrastive_loss`, covers the CLIP family; the variants are options of it:

- ``clip``      symmetric InfoNCE (Radford et al. 2021): mean of image->text and text->image
                cross-entropy over the B x B logits ``logit_scale * img @ txt.T (+ logit_bias)``.
- ``multipos``  the same with soft targets: every pair sharing a label is a positive, the target of
                row i is uniform over its positives, ``p_ij = 1[y_i = y_j] / n_i``. Class-labelled
                data need it: a batch holds identical captions, whose "negatives" are positives.
- ``reg``       multipos + lambda * mean positive-pair squared distance, the one-sided regulariser of
                Chen, Deng, Li, Gu (ICLR 2024). ``reg_pairs`` selects the pair term (:func:`pair_penalty`):
                ``pos`` (the paper: pull positives together), ``neg`` (push negatives apart), ``both``
                (pos + neg), and the pulling forms ``neg_pull`` / ``both_pull`` (the ablation the paper lacks).
                ``reg_over_tau`` multiplies the term by logit_scale = 1 / tau.
- ``square``    the naive square loss mean ||f(x) - g(y)||^2 (docs/methods.md, theory §5, T5: fails zero-shot).

The symmetric loss is the *average* of the two directions, as open_clip's ``ClipLoss``; the theory
paper's L_B is their sum (twice this value). Whether embeddings are L2-normalised is the model's
choice (``CLIPConfig.normalize``), not the loss's: the functions take embeddings as given.

The fused, memory-efficient kernels (``clipcore.fused``) implement the same signature exactly, the distributed
form included (this process's rows against the gathered batch). :func:`make_loss` is the one factory: it decodes a
loss name, implementation and kernel once and returns the callable the training loop uses on 1 or N processes,
gathering the embeddings itself under torchrun (as open_clip's ``ClipLoss``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore import distributed
from clipcore.errors import UserError
from clipcore.fused import fused_contrastive_loss
from clipcore.regulariser import REG_PAIRS, pair_penalty, reg_term  # noqa: F401 (re-exported: the regulariser's pair term)

LOSSES = ("clip", "multipos", "reg", "square")
IMPLS = ("naive", "fused")                 # materialised logits | tiled (clipcore.fused)
KERNELS = ("auto", "torch", "triton")      # the fused loss's kernel


def logits(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float | None = None) -> Tensor:
    """(B, D), (N, D) -> (B, N) image->text logits ``scale * image @ text.T + bias``."""
    out = logit_scale * image @ text.T
    return out if logit_bias is None else out + logit_bias


def positive_targets(labels: Tensor) -> Tensor:
    """(B,) labels -> (B, B) row-stochastic targets, uniform over the pairs sharing the row's label."""
    same = (labels[:, None] == labels[None, :]).to(torch.get_default_dtype())
    return same / same.sum(1, keepdim=True)


def contrastive_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    *,
    labels: Tensor | None = None,
    logit_bias: Tensor | float | None = None,
    reg_lambda: float = 0.0,
    reg_pairs: str = "pos",
    reg_over_tau: bool = False,
    gathered_image: Tensor | None = None,
    gathered_text: Tensor | None = None,
    rank_offset: int = 0,
) -> Tensor:
    """Symmetric InfoNCE of paired embeddings, with optional multi-positive labels and regulariser.

    image, text: (B, D), row i of each is a pair. logit_scale: scalar, 1 / tau (already exponentiated).
    labels: (B,) ints; pairs with equal labels are all positives (soft targets). None: the diagonal.
    Returns the scalar ``0.5 * (CE(img->txt) + CE(txt->img)) + reg_lambda * penalty``.
    Distributed form (``--loss-impl naive`` under torchrun, open_clip's ``local_loss=True``): gathered_image,
    gathered_text are the (N, D) pairs of all processes, labels then their gathered (N,) labels, rank_offset this
    process's first row in them; this process's B rows are scored against all N columns (B x N logits).
    This is the materialised reference: it holds the logits. ``clipcore.fused`` does not.
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text embeddings must both be (B, D); got {tuple(image.shape)} and {tuple(text.shape)}")
    b = image.shape[0]
    all_image = image if gathered_image is None else gathered_image
    all_text = text if gathered_text is None else gathered_text
    lg_img = logits(image, all_text, logit_scale, logit_bias)
    lg_txt = lg_img.T if gathered_image is None else logits(text, all_image, logit_scale, logit_bias)
    if labels is None:
        target = torch.arange(rank_offset, rank_offset + b, device=image.device)
    else:  # targets are symmetric (same-label is), so one set of rows serves both directions
        target = positive_targets(labels)[rank_offset:rank_offset + b].to(lg_img.dtype)
    loss = 0.5 * (F.cross_entropy(lg_img, target) + F.cross_entropy(lg_txt, target))
    return loss + reg_term(image, text, all_image, all_text, logit_scale, reg_lambda=reg_lambda, reg_pairs=reg_pairs,
                           reg_over_tau=reg_over_tau)


def square_loss(image: Tensor, text: Tensor) -> Tensor:
    """Naive square loss (1/B) sum_i ||f(x_i) - g(y_i)||^2 (docs/methods.md, theory §5, T5 / Cor. 5)."""
    return pair_penalty(image, text, "pos")


def make_loss(name: str, *, impl: str = "naive", kernel: str = "auto", reg_lambda: float = 0.1, reg_pairs: str = "pos",
              reg_over_tau: bool = False, local_loss: bool = True, gather_with_grad: bool = True,
              tile: int | None = None, col_tile: int | None = None):
    """The loss the training loop calls: ``fn(image, text, logit_scale, labels=None, logit_bias=None) -> scalar``.

    name: one of ``LOSSES``. ``multipos`` and ``reg`` use the labels when given (``reg`` is the regulariser on top
    of ``multipos``, so CLIP vs CLIP+Reg differ only by the penalty, also on class-labelled data) and the diagonal
    otherwise; ``clip`` always uses the diagonal. impl: ``naive`` (:func:`contrastive_loss`, materialised logits)
    or ``fused`` (:func:`clipcore.fused.fused_contrastive_loss`: tiled, no B x N logits). kernel: the fused loss's
    kernel ("auto"/"torch": torch tiles, "triton": clipcore.fused_triton); tile, col_tile: its rows and columns per
    tile (None: its defaults).

    On N processes (torchrun) ``fn`` is the loss of the *global* batch: every process calls it once per step with
    its (B_r, D) rows and (B_r,) labels, and it gathers them (``gather_with_grad``: with autograd, exact; off:
    open_clip's default, other ranks' rows are constants). local_loss: this process's rows against all columns
    (B_r x N, open_clip's ``--local-loss``); off: the full N x N loss on every process. The square loss is a mean
    over pairs, so DDP's average of the per-process losses is already exact: it does not gather.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    if impl not in IMPLS:
        raise ValueError(f"loss impl must be one of {IMPLS}, got {impl!r}")
    if kernel not in KERNELS:
        raise ValueError(f"loss kernel must be one of {KERNELS}, got {kernel!r}")
    if impl == "naive" and (kernel == "triton" or tile or col_tile):
        what = "--loss-kernel triton" if kernel == "triton" else "--loss-tile / --loss-col-tile"
        raise UserError(f"{what} sets the fused loss only; add --loss-impl fused (or drop {what})")
    if reg_pairs not in REG_PAIRS:
        raise ValueError(f"reg_pairs must be one of {REG_PAIRS}, got {reg_pairs!r}")
    if name == "square":
        return lambda image, text, logit_scale, labels=None, logit_bias=None: square_loss(image, text)
    options = dict(reg_lambda=reg_lambda if name == "reg" else 0.0, reg_pairs=reg_pairs, reg_over_tau=reg_over_tau)
    if impl == "fused":
        options.update(kernel=kernel, tile=tile, col_tile=col_tile)
    base = fused_contrastive_loss if impl == "fused" else contrastive_loss
    uses_labels = name in ("multipos", "reg")

    def fn(image: Tensor, text: Tensor, logit_scale: Tensor | float, labels: Tensor | None = None,
           logit_bias: Tensor | float | None = None) -> Tensor:
        labels = labels if uses_labels else None
        if not distributed.active():
            return base(image, text, logit_scale, labels=labels, logit_bias=logit_bias, **options)
        all_image = distributed.all_gather(image, with_grad=gather_with_grad)
        all_text = distributed.all_gather(text, with_grad=gather_with_grad)
        all_labels = None if labels is None else distributed.all_gather(labels, with_grad=False)
        if not local_loss:
            return base(all_image, all_text, logit_scale, labels=all_labels, logit_bias=logit_bias, **options)
        _, rank = distributed.world_rank()
        return base(image, text, logit_scale, labels=all_labels, logit_bias=logit_bias, gathered_image=all_image,
                    gathered_text=all_text, rank_offset=rank * image.shape[0], **options)

    return fn
