"""What the theory talks about, measured on samples: margins, (alpha, beta, gamma)-completeness, the
zero-shot top-r error, the zero-shot prompt margin, unique-feature suppression and cross-modal class alignment
(docs/methods.md, theory §4, §5, §8).

Scores are inner products of the given embeddings (pass L2-normalised ones for cosine scores).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.evaluate import zero_shot_metrics


def margins(img: Tensor, txt: Tensor, z: Tensor, chunk: int = 4096) -> Tensor:
    """Project margin m(x_i) = s(x_i, y_i) - max_{j: z_j != z_i} s(x_i, y_j) over the given texts
    (docs/methods.md, theory §4).

    img (N, D), txt (N, D) paired row by row, z (N, K) shared latents -> (N,). +inf when no text differs."""
    out = []
    for s in range(0, len(img), chunk):
        sc = img[s:s + chunk] @ txt.T                                     # (c, N)
        diff = (z[s:s + chunk, None, :] != z[None, :, :]).any(-1)        # (c, N) different shared feature
        neg = sc.masked_fill(~diff, -math.inf).max(1).values
        pos = sc[torch.arange(len(sc)), torch.arange(s, s + len(sc))]
        out.append(pos - neg)
    return torch.cat(out)


def prompt_margins(img: Tensor, prompt_emb: Tensor, labels: Tensor) -> Tensor:
    """Zero-shot prompt margin m(x_i) = s(x_i, p_{c_i}) - max_{k != c_i} s(x_i, p_k) against the K class prompts.

    img (N, D), prompt_emb (K, D) (the embedded ``World.prompts()``), labels (N,) classes c_i -> (N,). The
    separation of shared features the theory's margin is about (docs/methods.md, theory §8 claim 1): the max runs over
    K - 1 class prompts, not over thousands of captions each carrying its own unsuppressed zeta. m > 0 iff zero-shot
    top-1 is right (ties aside)."""
    sc = img @ prompt_emb.T                                               # (N, K)
    pos = sc.gather(1, labels[:, None]).squeeze(1)
    return pos - sc.scatter(1, labels[:, None], -math.inf).max(1).values


def ground_truth_embed(world, sample) -> tuple[Tensor, Tensor]:
    """L2-normalised outputs of the ground-truth encoders W*, V* (``World.ground_truth``): (N, K), (N, K)."""
    W, V = world.ground_truth()
    return F.normalize(sample.x @ W.T, dim=-1), F.normalize(sample.y @ V.T, dim=-1)


def completeness(img: Tensor, txt: Tensor, z: Tensor, alpha: float = 0.05, gamma: float | None = None) -> dict:
    """Sample estimates of the (alpha, beta, gamma) quantities of Assumption 2 [RECON definitions]:

    gamma:  the alpha-quantile of the margin (the separation that holds except on mass alpha);
    alpha_at_gamma: the mass with margin < ``gamma`` (when given), i.e. where the separation fails;
    beta:   the spread of the scores, std of s(x_i, y_j) over all pairs;
    median_margin, frac_nonpositive: the margin's median and the mass with m <= 0 (T2's soft-margin set)."""
    m = margins(img, txt, z)
    sc = img @ txt.T
    out = {
        "gamma": torch.quantile(m, alpha).item(),
        "alpha": alpha,
        "beta": sc.std().item(),
        "median_margin": m.median().item(),
        "frac_nonpositive": (m <= 0).double().mean().item(),
    }
    if gamma is not None:
        out["alpha_at_gamma"] = (m < gamma).double().mean().item()
    return out


def topr_error(img: Tensor, labels: Tensor, class_emb: Tensor, r: int | tuple[int, ...] = 1) -> float | dict[int, float]:
    """Zero-shot top-r error: 1 - acc@r of ``clipcore.evaluate.zero_shot_metrics`` (img (N, D), class_emb (C, D)).

    An int r gives a float; a tuple gives {r: error}."""
    rs = (r,) if isinstance(r, int) else tuple(r)
    met = zero_shot_metrics(img, labels, class_emb, ks=rs)
    errs = {k: 1.0 - met[f"acc{k}"] for k in rs}
    return errs[r] if isinstance(r, int) else errs


def suppression(blocks: dict[str, Tensor]) -> dict[str, float]:
    """Response to unique features relative to the shared block, per direction (RMS over columns):

    ratio_img = rms_col(W G_xi) / rms_col(W G_z), ratio_txt = rms_col(V H_zeta) / rms_col(V H_z).
    About 1 for a random W (isotropic), 0 for the ground truth (Lemma 1)."""
    rms = lambda a: a.pow(2).sum(0).mean().sqrt().item()  # noqa: E731  (RMS column norm)
    return {"ratio_img": rms(blocks["img_unique"]) / rms(blocks["img_shared"]),
            "ratio_txt": rms(blocks["txt_unique"]) / rms(blocks["txt_shared"])}


def class_alignment(blocks: dict[str, Tensor]) -> Tensor:
    """(K,) cos(W G [e_k; 0], V H [e_k; 0]): cross-modal alignment of the class embeddings (T2)."""
    return torch.nn.functional.cosine_similarity(blocks["img_shared"], blocks["txt_shared"], dim=0)


def tv_gaussian_scale(k: int, scale: float) -> float:
    """Total variation between N(0, I_k) and N(0, scale^2 I_k) (scale > 1), exactly, via chi-square cdfs.

    The densities cross at ||x||^2 = r* = k s^2 ln(s^2) / (s^2 - 1); TV = F_k(r*) - F_k(r* / s^2)."""
    from scipy.stats import chi2
    s2 = scale**2
    r = k * s2 * math.log(s2) / (s2 - 1)
    return float(chi2.cdf(r, k) - chi2.cdf(r / s2, k))
