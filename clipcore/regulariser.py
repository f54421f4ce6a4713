"""The one-sided regulariser (Chen, Deng, Li, Gu, ICLR 2024): its pair term and the term the losses add, shared
by the materialised loss (:mod:`clipcore.losses`) and the fused kernels (:mod:`clipcore.fused`), in their
single-process and gathered forms; a module of its own so that neither imports the other for it."""
from __future__ import annotations

from torch import Tensor

REG_PAIRS = ("pos", "neg", "both", "neg_pull", "both_pull")   # pair_penalty's choices


def pair_penalty(image: Tensor, text: Tensor, pairs: str = "pos") -> Tensor:
    """The regulariser's pair term on (B, D) paired embeddings -> scalar (added as ``reg_lambda * term``).

    With d2_ij = ||f_i - g_j||^2, pos = mean_i d2_ii over the B positives and negd = mean_{i != j} d2_ij over the
    B(B-1) negatives:

    - ``pos``:  + pos   pulls positive pairs together (the paper's one-sided penalty).
    - ``neg``:  - negd  pushes negative pairs apart. The same mean-over-pairs form with the opposite sign, so it
      is matched in magnitude to ``pos``: on unit-norm embeddings d2 = 2 - 2 cos, pos = 2 - 2 mean cos+ and
      -negd = -2 + 2 mean cos-, and each term moves its cosines with the same total weight 2 (per pair 2/B and
      2/(B(B-1))). Bounded (in [-4, 0]) only on normalised embeddings: on raw ones it rewards growing norms.
    - ``both``: pos - negd = 2 (mean cos- - mean cos+) on unit-norm embeddings: a linear score-gap term.
    - ``neg_pull``: + negd, ``both_pull``: pos + negd. The literal "L2 penalty on negative pairs": it pulls every
      negative pair together too, which collapses the embeddings (kept as the explicitly named old form).

    Computed in O(B D) from sums, never from a B x B matrix:
    sum_{i,j} ||f_i - g_j||^2 = B sum ||f||^2 + B sum ||g||^2 - 2 <sum f, sum g>.
    """
    if pairs not in REG_PAIRS:
        raise ValueError(f"reg_pairs must be one of {REG_PAIRS}, got {pairs!r}")
    b = image.shape[0]
    pos_sum = (image - text).pow(2).sum()
    pos = pos_sum / b
    if pairs == "pos":
        return pos
    all_sum = b * image.pow(2).sum() + b * text.pow(2).sum() - 2 * (image.sum(0) @ text.sum(0))
    negd = (all_sum - pos_sum) / max(b * (b - 1), 1)
    return {"neg": -negd, "both": pos - negd, "neg_pull": negd, "both_pull": pos + negd}[pairs]


def reg_term(image: Tensor, text: Tensor, all_image: Tensor, all_text: Tensor, logit_scale: Tensor | float, *,
             reg_lambda: float, reg_pairs: str = "pos", reg_over_tau: bool = False) -> Tensor | float:
    """What a contrastive loss adds for the regulariser: ``reg_lambda * term`` (times ``logit_scale`` = 1/tau
    with ``reg_over_tau``), 0 when ``reg_lambda`` is 0.

    image, text: this process's (B, D) pairs; all_image, all_text: the (N, D) pairs of the global batch (the same
    tensors on one process). ``pos`` is a mean over positives, so this process's pairs give its exact share (DDP
    averages the shares); the negative-pair terms need every pair, so they read the global batch.
    """
    if not reg_lambda:
        return 0.0
    penalty = pair_penalty(image, text, "pos") if reg_pairs == "pos" else pair_penalty(all_image, all_text, reg_pairs)
    return reg_lambda * (penalty * logit_scale if reg_over_tau else penalty)
