"""The linear data model of Chen, Deng, Li, Gu (ICLR 2024) as code (docs/methods.md, theory §2).

A pair (x, y) shares a latent z (K topics) and carries unique content in each modality:

    x = G [z; xi]   + eps_x        G (dx, K + k_xi)   orthonormal columns, xi   ~ N(0, sigma_xi^2 I)
    y = H [z; zeta] + eps_y        H (dy, K + k_zeta) orthonormal columns, zeta ~ N(mu(z), sigma_zeta^2 I)

z is one-hot (``sparsity=1``, z = e_c, c ~ Unif{0..K-1}) or multi-hot with s active topics, scaled to unit
norm (z = (1/sqrt s) sum_{c in S} e_c) so that the shared signal's energy does not grow with s [RECON].
E[zeta | z] = mu(z) is 0 (``zeta_mean=0``) or, the regime where the square loss fails (T5):
  ``zeta_mean_kind="shared"``: mu(z) = m u for a fixed unit vector u (a caption "style" present in every text);
  ``zeta_mean_kind="class"``:  mu(z) = m M z with M (k_zeta, K) random with unit columns.
Class prompts (zero-shot classifier texts): y_k = H [e_k; zeta_k], zeta_k = 0 (``prompt_zeta=0``) or random
N(0, prompt_zeta^2 I), drawn once per world (a prompt "style" of its own).
eps ~ N(0, noise^2 / d I) (so ||eps|| is about ``noise``). Ground truth (Lemma 1): W* = [I_K 0] G^T and
V* = [I_K 0] H^T read off z, so <f*(x), g*(y)> = <z, z'> up to noise.

    w = World(WorldConfig(K=10), seed=0)
    s = w.sample(1000, torch.Generator().manual_seed(1))     # s.x (1000, dx), s.y (1000, dy), s.labels (1000,)
    W, V = w.ground_truth()                                    # (K, dx), (K, dy)
    prompts = w.prompts()                                      # (K, dy)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class WorldConfig:
    K: int = 10                   # topics (downstream classes)
    k_xi: int = 10                # image-unique dimensions
    k_zeta: int = 10              # text-unique dimensions
    dx: int = 32                  # image ambient dimension (>= K + k_xi)
    dy: int = 32                  # text ambient dimension (>= K + k_zeta)
    sigma_xi: float = 1.0         # ||xi|| ~ sqrt(k_xi) sigma_xi: unique content outweighs ||z|| = 1 at init
    sigma_zeta: float = 1.0
    noise: float = 0.1            # total norm of the isotropic ambient noise
    zeta_mean: float = 0.0        # m: scale of E[zeta | z] (0: zeta independent of z, mean zero)
    zeta_mean_kind: str = "shared"   # shared: m u | class: m M z
    sparsity: int = 1             # s active topics per pair (1: one-hot)
    prompt_zeta: float = 0.0      # std of the prompts' own unique part zeta_k (0: zeta_k = 0)

    def replace(self, **kw) -> "WorldConfig":
        return dataclasses.replace(self, **kw)


@dataclass
class Sample:
    x: Tensor        # (n, dx) images
    y: Tensor        # (n, dy) texts
    z: Tensor        # (n, K) shared latent (unit norm)
    labels: Tensor   # (n,) class of one-hot z; for multi-hot, the smallest active topic
    xi: Tensor       # (n, k_xi)
    zeta: Tensor     # (n, k_zeta)


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    """(rows, cols) with orthonormal columns (QR of a Gaussian matrix, signs fixed)."""
    if cols > rows:
        raise ValueError(f"need rows >= cols for orthonormal columns, got {rows} x {cols}")
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class World:
    """One draw of the fixed parts of the model (G, H, u, M, prompt styles) from ``seed``."""

    def __init__(self, cfg: WorldConfig = WorldConfig(), seed: int = 0):
        if cfg.dx < cfg.K + cfg.k_xi or cfg.dy < cfg.K + cfg.k_zeta:
            raise ValueError(f"dx >= K + k_xi and dy >= K + k_zeta are needed; got {cfg}")
        if not 1 <= cfg.sparsity <= cfg.K:
            raise ValueError(f"sparsity must be in [1, K={cfg.K}], got {cfg.sparsity}")
        if cfg.zeta_mean_kind not in ("shared", "class"):
            raise ValueError(f"zeta_mean_kind must be 'shared' or 'class', got {cfg.zeta_mean_kind!r}")
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        self.G = orthonormal(cfg.dx, cfg.K + cfg.k_xi, g)
        self.H = orthonormal(cfg.dy, cfg.K + cfg.k_zeta, g)
        u = torch.randn(cfg.k_zeta, generator=g)
        self.u = u / u.norm()
        m = torch.randn(cfg.k_zeta, cfg.K, generator=g)
        self.M = m / m.norm(dim=0, keepdim=True)
        self.prompt_zeta = cfg.prompt_zeta * torch.randn(cfg.K, cfg.k_zeta, generator=g)

    # ------------------------------------------------------------------ sampling
    def zeta_mean(self, z: Tensor) -> Tensor:
        """(n, K) -> (n, k_zeta): E[zeta | z]."""
        c = self.cfg
        if c.zeta_mean == 0:
            return torch.zeros(len(z), c.k_zeta)
        if c.zeta_mean_kind == "shared":
            return c.zeta_mean * self.u.expand(len(z), -1)
        return c.zeta_mean * z @ self.M.T

    def sample_z(self, n: int, gen: torch.Generator, class_probs: Tensor | None = None,
                 sparsity: int | None = None) -> tuple[Tensor, Tensor]:
        """(n, K) unit-norm z and (n,) labels. ``class_probs`` (K,) reweights topics (one-hot only)."""
        K, s = self.cfg.K, sparsity or self.cfg.sparsity
        if s == 1:
            p = torch.full((K,), 1.0 / K) if class_probs is None else class_probs
            labels = torch.multinomial(p, n, replacement=True, generator=gen)
            return torch.nn.functional.one_hot(labels, K).float(), labels
        active = torch.rand(n, K, generator=gen).argsort(1)[:, :s]            # s distinct topics per row
        z = torch.zeros(n, K).scatter_(1, active, 1.0) / math.sqrt(s)
        return z, active.min(1).values

    def sample(self, n: int, gen: torch.Generator, *, class_probs: Tensor | None = None,
               sparsity: int | None = None, xi_scale: float | Tensor = 1.0) -> Sample:
        """n i.i.d. pairs. ``xi_scale`` (scalar or (n,)) multiplies xi: a downstream shift of unique content."""
        c = self.cfg
        z, labels = self.sample_z(n, gen, class_probs, sparsity)
        xi = c.sigma_xi * torch.randn(n, c.k_xi, generator=gen)
        xi = xi * (xi_scale[:, None] if isinstance(xi_scale, Tensor) else xi_scale)
        zeta = self.zeta_mean(z) + c.sigma_zeta * torch.randn(n, c.k_zeta, generator=gen)
        x = torch.cat([z, xi], 1) @ self.G.T + c.noise / math.sqrt(c.dx) * torch.randn(n, c.dx, generator=gen)
        y = torch.cat([z, zeta], 1) @ self.H.T + c.noise / math.sqrt(c.dy) * torch.randn(n, c.dy, generator=gen)
        return Sample(x, y, z, labels, xi, zeta)

    def prompts(self, styles: Tensor | None = None) -> Tensor:
        """(K, dy) class prompts y_k = H [e_k; zeta_k]; ``styles`` (K, k_zeta) replaces the world's own zeta_k (e.g.
        fresh draws, to average a zero-shot error over prompt styles)."""
        styles = self.prompt_zeta if styles is None else styles
        if styles.shape != (self.cfg.K, self.cfg.k_zeta):
            raise ValueError(f"styles must be (K, k_zeta) = ({self.cfg.K}, {self.cfg.k_zeta}), got {tuple(styles.shape)}")
        return torch.cat([torch.eye(self.cfg.K), styles], 1) @ self.H.T

    # ------------------------------------------------------------------ ground truth
    def ground_truth(self) -> tuple[Tensor, Tensor]:
        """W* (K, dx), V* (K, dy): the encoders that read off z (Lemma 1's completeness witness)."""
        K = self.cfg.K
        return self.G[:, :K].T.clone(), self.H[:, :K].T.clone()

    def bayes_square_predictor(self, x: Tensor) -> Tensor:
        """(n, dx) -> (n, dy): E[y | x] = H [z; E(zeta | z)] (T5), z read off the noise-free x.

        Exact for one-hot z without noise; with noise it is the plug-in at the nearest topic."""
        K = self.cfg.K
        zhat = x @ self.G[:, :K]                                          # (n, K) = z + projected noise
        if self.cfg.sparsity == 1:
            zhat = torch.nn.functional.one_hot(zhat.argmax(1), K).float()
        return torch.cat([zhat, self.zeta_mean(zhat)], 1) @ self.H.T

    # ------------------------------------------------------------------ encoder blocks
    def blocks(self, W: Tensor, V: Tensor) -> dict[str, Tensor]:
        """Split the effective maps W G (d, K + k_xi) and V H (d, K + k_zeta) into shared and unique blocks."""
        K = self.cfg.K
        WG, VH = W @ self.G, V @ self.H
        return {"img_shared": WG[:, :K], "img_unique": WG[:, K:], "txt_shared": VH[:, :K], "txt_unique": VH[:, K:]}
