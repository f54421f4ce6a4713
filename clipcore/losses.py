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

The fused, memory-efficient kernels (``clipcore.fused``) implement the same signature exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.regulariser import REG_PAIRS, pair_penalty  # noqa: F401 (re-exported: the regulariser's pair term)

LOSSES = ("clip", "multipos", "reg", "square")


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
) -> Tensor:
    """Symmetric InfoNCE of paired embeddings, with optional multi-positive labels and regulariser.

    image, text: (B, D), row i of each is a pair. logit_scale: scalar, 1 / tau (already exponentiated).
    labels: (B,) ints; pairs with equal labels are all positives (soft targets). None: the diagonal.
    Returns the scalar ``0.5 * (CE(img->txt) + CE(txt->img)) + reg_lambda * penalty``.
    This is the materialised reference: it holds the B x B logits. ``clipcore.fused`` does not.
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text embeddings must both be (B, D); got {tuple(image.shape)} and {tuple(text.shape)}")
    lg = logits(image, text, logit_scale, logit_bias)
    if labels is None:
        target = torch.arange(image.shape[0], device=image.device)
        loss = 0.5 * (F.cross_entropy(lg, target) + F.cross_entropy(lg.T, target))
    else:
        # Targets are symmetric (same-label is symmetric), so one matrix serves both directions.
        t = positive_targets(labels).to(lg.dtype)
        loss = 0.5 * (F.cross_entropy(lg, t) + F.cross_entropy(lg.T, t))
    if reg_lambda:
        penalty = pair_penalty(image, text, reg_pairs)
        loss = loss + reg_lambda * (penalty * logit_scale if reg_over_tau else penalty)
    return loss


def square_loss(image: Tensor, text: Tensor) -> Tensor:
    """Naive square loss (1/B) sum_i ||f(x_i) - g(y_i)||^2 (docs/methods.md, theory §5, T5 / Cor. 5)."""
    return pair_penalty(image, text, "pos")


def make_loss(name: str, *, reg_lambda: float = 0.1, reg_pairs: str = "pos", reg_over_tau: bool = False, impl: str = "naive",
              kernel: str = "auto"):
    """Return ``fn(image, text, logit_scale, labels=None, logit_bias=None) -> scalar`` for a loss name.

    name: one of ``LOSSES``. impl: ``naive`` (this module, materialised logits) or ``fused`` (tiled,
    no B x B logits; ``clipcore.fused``). kernel: the fused loss's ``kernel`` ("auto"/"torch": torch tiles,
    "triton": clipcore.fused_triton); only with impl="fused". ``multipos`` and ``reg`` use the labels when given (``reg`` is
    the regulariser on top of ``multipos``, so CLIP vs CLIP+Reg differ only by the penalty, also on
    class-labelled data) and the diagonal otherwise; ``clip`` always uses the diagonal.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    if kernel not in ("auto", "torch", "triton"):
        raise ValueError(f"loss kernel must be 'auto', 'torch' or 'triton', got {kernel!r}")
    if impl == "fused":
        from functools import partial

        from clipcore.fused import fused_contrastive_loss
        base = partial(fused_contrastive_loss, kernel=kernel)
    elif impl == "naive":
        if kernel == "triton":
            from clipcore.errors import UserError
            raise UserError("--loss-kernel triton runs the fused loss only; add --loss-impl fused (or drop --loss-kernel)")
        base = contrastive_loss
    else:
        raise ValueError(f"loss impl must be 'naive' or 'fused', got {impl!r}")

    def fn(image, text, logit_scale, labels=None, logit_bias=None):
        if name == "square":
            return square_loss(image, text)
        return base(
            image, text, logit_scale,
            labels=labels if name in ("multipos", "reg") else None,
            logit_bias=logit_bias,
            reg_lambda=reg_lambda if name == "reg" else 0.0,
            reg_pairs=reg_pairs, reg_over_tau=reg_over_tau,
        )

    return fn
