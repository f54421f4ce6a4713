"""A long tail of fine-grained classes for RECO (docs/methods.md, RECO §7): a frozen base CLIP that knows the frequent
classes and is weak on the rare ones, and a memory of image-text pairs that holds the rare ones.

Classes: ``groups`` coarse groups x ``fine`` sibling classes (C = groups * fine). In every group the first
``head`` classes are frequent: the base image tower has aligned their fine identity with language. The other
classes are rare: the tower sees their fine identity but maps only a share ``rho = tail_alignment`` of it onto
the class's text direction, the rest into an image-private direction. Rare classes are split in two halves:
``train-rare`` may serve as RECO's training queries; ``eval-rare`` (the last half of each group) are the
evaluated classes and are never training queries, so a gain on them cannot be learned, only retrieved.

Ground truth, in an orthonormal basis of the embedding space R^D (Q, fixed by the seed):

    image embedding (before L2):  w_g g_G + w_f (sqrt(rho_c) f_c + sqrt(1 - rho_c) u_c) + w_i P a + eps_x
    text embedding  (before L2):  w_g g_G + w_f f_c                                   + w_i P (a + eta) + eps_y + o

g_G group direction; f_c class direction (text space; all in one fine_dim-dim subspace);
u_c image-private class direction; a ~ N(0, I/r) instance attributes shared by an image and its caption (what
makes instance retrieval possible), eta their paraphrase noise; eps isotropic noise of total norm ``noise_*``;
o a constant offset of every text (a modality gap). rho_c = 1 for head classes, ``tail_alignment`` for rare ones.
Class prompts are the noise-free text of the class (a = 0). Raw inputs are the factors themselves:

    x = [onehot(G); onehot(c); a; eps_x]            (G + C + r + D)         "images"
    y = [onehot(G); onehot(c); a + eta; eps_y; 1]   (G + C + r + D + 1)     "captions"

and the frozen towers are clipcore linear towers (VectorTower, no bias) whose weights hold the maps above.
Image-image search compares w_f^2 (rho <f, f'> + (1 - rho) <u, u'>): rare siblings stay apart; image-text
search and zero-shot compare only w_f^2 sqrt(rho) <f, f'>: rare siblings blur. That asymmetry is RECO's premise.

    w = LongTail(LongTailConfig(), seed=0)
    base = w.base_model()                                  # frozen clipcore CLIP
    mem = w.sample_pairs(w.memory_classes(4000, relevance=0.3, gen=g), g)   # Pairs(x, y, labels)
    model, log = train_reco(w, embed(base, mem), Config(k=10), seed=0)       # the protocol of experiments/test_reco.py
    zero_shot(model, w, test)                              # {"eval_rare": acc, "head": acc, ...}

Defaults (tail_alignment, noise) were set, before any RECO run, so that the base reaches ~100% on head classes
and far less on rare ones, image->image search precise and image->text search not (calibration printed by
experiments/test_reco.py). Many rare classes (fine=16) make a per-class mapping hard to memorise from the
training queries, as in web-scale data, where retrieval rather than memorisation must carry the rare concepts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.evaluate import retrieval_metrics, zero_shot_metrics
from clipcore.memory import MemoryBank
from clipcore.methods.reco import RECO, Config, make_task, precompute
from clipcore.models import CLIP, get_config
from clipcore.training import make_optimizer, make_schedule
from theory.world import orthonormal


@dataclass(frozen=True)
class LongTailConfig:
    groups: int = 8              # coarse groups ("cars", "birds", ...)
    fine: int = 16                # sibling classes per group
    head: int = 2                # frequent classes per group (aligned by the base)
    dim: int = 32                # embedding width D
    fine_dim: int = 8           # text-space subspace of the class directions f_c
    private_dim: int = 8        # image-private subspace of the directions u_c
    inst_dim: int = 4            # instance attributes a (shared by an image and its caption)
    w_group: float = 1.0
    w_fine: float = 1.0
    w_inst: float = 0.7
    tail_alignment: float = 0.05  # rho of the rare classes (1 = as well aligned as the head)
    noise_image: float = 0.7     # total norm of eps_x
    noise_text: float = 0.5      # total norm of eps_y
    paraphrase: float = 0.3      # std of eta relative to a
    text_offset: float = 0.5     # ||o||: modality gap
    head_share: float = 0.6      # of the memory pairs not drawn from eval-rare classes, the share from head classes

    def replace(self, **kw) -> "LongTailConfig":
        return dataclasses.replace(self, **kw)


@dataclass
class Pairs:
    x: Tensor        # (n, dx) images
    y: Tensor        # (n, dy) captions
    labels: Tensor   # (n,) class ids


class LongTail:
    """One draw of the fixed parts (basis, class directions) from ``seed``."""

    def __init__(self, cfg: LongTailConfig = LongTailConfig(), seed: int = 0):
        c = cfg
        used = c.groups + c.fine_dim + c.private_dim + c.inst_dim + 1
        if used > c.dim or not 0 <= c.head < c.fine:
            raise ValueError(f"need groups + fine_dim + private_dim + inst_dim + 1 <= dim ({used} > {c.dim}) and 0 <= head < fine")
        self.cfg, self.C = cfg, c.groups * c.fine
        g = torch.Generator().manual_seed(10_000 + seed)
        q = orthonormal(c.dim, used, g)
        parts = q.split([c.groups, c.fine_dim, c.private_dim, c.inst_dim, 1], dim=1)
        self.group_dir, q_fine, q_priv, self.inst_map, self.offset = parts[0].T, parts[1], parts[2], parts[3], parts[4][:, 0]
        self.f = F.normalize(torch.randn(self.C, c.fine_dim, generator=g), dim=1) @ q_fine.T      # (C, D)
        self.u = F.normalize(torch.randn(self.C, c.private_dim, generator=g), dim=1) @ q_priv.T   # (C, D)
        j = torch.arange(self.C) % c.fine                          # index inside the group
        self.group_of = torch.arange(self.C) // c.fine
        self.is_head = j < c.head
        self.is_eval = j >= c.head + (c.fine - c.head) // 2         # eval-rare: last half of the rare siblings
        self.is_train_rare = ~self.is_head & ~self.is_eval
        self.rho = torch.where(self.is_head, torch.tensor(1.0), torch.tensor(c.tail_alignment))
        self.dx = c.groups + self.C + c.inst_dim + c.dim
        self.dy = self.dx + 1

    # --------------------------------------------------------------------- data
    def classes(self, kind: str) -> Tensor:
        """Class ids of ``head`` | ``train_rare`` | ``eval_rare`` | ``all``."""
        mask = {"head": self.is_head, "train_rare": self.is_train_rare, "eval_rare": self.is_eval,
                "all": torch.ones(self.C, dtype=torch.bool)}[kind]
        return mask.nonzero()[:, 0]

    def memory_classes(self, n: int, relevance: float, gen: torch.Generator) -> Tensor:
        """(n,) class ids of a memory: a share ``relevance`` from the eval-rare classes (uniform), the rest from
        head (share ``head_share``) and train-rare classes. relevance = 0 is the irrelevant-memory control."""
        n_rel = round(relevance * n)
        n_head = round(self.cfg.head_share * (n - n_rel))
        pick = lambda cls, m: cls[torch.randint(len(cls), (m,), generator=gen)]  # noqa: E731
        labels = torch.cat([pick(self.classes("eval_rare"), n_rel), pick(self.classes("head"), n_head),
                            pick(self.classes("train_rare"), n - n_rel - n_head)])
        return labels[torch.randperm(n, generator=gen)]

    def sample_pairs(self, labels: Tensor, gen: torch.Generator) -> Pairs:
        """Raw (image, caption) pairs of the given classes."""
        c, n = self.cfg, len(labels)
        a = torch.randn(n, c.inst_dim, generator=gen) / c.inst_dim**0.5
        eta = c.paraphrase * torch.randn(n, c.inst_dim, generator=gen) / c.inst_dim**0.5
        ex = c.noise_image * torch.randn(n, c.dim, generator=gen) / c.dim**0.5
        ey = c.noise_text * torch.randn(n, c.dim, generator=gen) / c.dim**0.5
        grp, cls = F.one_hot(self.group_of[labels], c.groups).float(), F.one_hot(labels, self.C).float()
        x = torch.cat([grp, cls, a, ex], 1)
        y = torch.cat([grp, cls, a + eta, ey, torch.ones(n, 1)], 1)
        return Pairs(x, y, labels.clone())

    def prompts(self) -> Tensor:
        """(C, dy) the noise-free caption of every class ("a photo of a <class>")."""
        c = self.cfg
        grp, cls = F.one_hot(self.group_of, c.groups).float(), torch.eye(self.C)
        return torch.cat([grp, cls, torch.zeros(self.C, c.inst_dim + c.dim), torch.ones(self.C, 1)], 1)

    # --------------------------------------------------------------------- the frozen base
    def tower_weights(self) -> tuple[Tensor, Tensor]:
        """W_I (D, dx), W_T (D, dy): the ground-truth frozen towers of the module docstring."""
        c = self.cfg
        img_cls = c.w_fine * (self.rho.sqrt()[:, None] * self.f + (1 - self.rho).sqrt()[:, None] * self.u)   # (C, D)
        eye = torch.eye(c.dim)
        w_i = torch.cat([c.w_group * self.group_dir.T, img_cls.T, c.w_inst * self.inst_map, eye], 1)
        w_t = torch.cat([c.w_group * self.group_dir.T, c.w_fine * self.f.T, c.w_inst * self.inst_map, eye,
                         c.text_offset * self.offset[:, None]], 1)
        return w_i, w_t

    def base_model(self) -> CLIP:
        """A clipcore CLIP with the ground-truth linear towers, frozen, in eval mode."""
        model = CLIP(get_config("tiny", embed_dim=self.cfg.dim, tokenizer="none", vision__kind="linear",
                                vision__input_dim=self.dx, text__kind="linear", text__input_dim=self.dy))
        w_i, w_t = self.tower_weights()
        with torch.no_grad():
            model.visual.net.weight.copy_(w_i)
            model.text.net.weight.copy_(w_t)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()


# ----------------------------------------------------------------------------- protocol (experiments/test_reco.py)
@torch.no_grad()
def embed(base: CLIP, pairs: Pairs, ids: Tensor | None = None) -> MemoryBank:
    """The frozen base's embeddings of pairs as a memory (labels kept for diagnostics and multi-positive NCE)."""
    return MemoryBank(base.encode_image(pairs.x), base.encode_text(pairs.y), ids=ids, labels=pairs.labels,
                      meta={"encoder": "theory.longtail base"})


def fit_task(task, epochs: int, lr: float, wd: float = 0.1, warmup: int = 20) -> list[float]:
    """clipcore.training's optimisation on a Task (AdamW on matrices-only decay, warm-up + cosine, clip 1.0), without
    its run folder and checkpoints: the experiments train many small RECO models."""
    model = task.model
    opt = make_optimizer(model, lr, wd, fused=False)
    sched = make_schedule(opt, warmup, task.steps_per_epoch * epochs)
    losses = []
    model.train()
    for epoch in range(epochs):
        for batch in task.loader(epoch, 0):
            loss, _ = task.step(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(); sched.step()
            losses.append(loss.item())
    model.eval()
    return losses


def train_reco(world: LongTail, memory: MemoryBank, cfg: Config, *, seed: int, epochs: int = 10, lr: float = 2e-3,
               batch_size: int = 128, train_fraction: float = 1.0) -> tuple[RECO, list[float]]:
    """RECO on the world's frozen base with ``memory``. Training queries: the memory's pairs of head and
    train-rare classes (never eval-rare), each excluding its own pair; neighbours searched in a ``train_fraction``
    sample of the memory (RECO-4). Returns the model (its memory: the full ``memory``) and the losses."""
    torch.manual_seed(seed)
    model = RECO(world.base_model(), memory, cfg)
    train_mem = memory.sample(train_fraction, seed) if train_fraction < 1 else memory
    q = ~torch.isin(memory.labels, world.classes("eval_rare"))
    pairs = precompute(model, memory.image[q], memory.text[q], memory.ids[q], train_mem, labels=memory.labels[q])
    losses = fit_task(make_task(model, pairs, batch_size=batch_size, seed=seed), epochs, lr) if cfg.fuser != "none" else []
    return model, losses


@torch.no_grad()
def zero_shot(model, world: LongTail, test: Pairs) -> dict[str, float]:
    """Zero-shot top-1 over all C classes (refined images vs refined prompts when ``model`` is a RECO), per kind
    of class, through clipcore.evaluate.zero_shot_metrics."""
    feats, clf = model.encode_image(test.x), model.encode_text(world.prompts())
    out = {}
    for kind in ("head", "train_rare", "eval_rare"):
        m = torch.isin(test.labels, world.classes(kind))
        out[kind] = zero_shot_metrics(feats[m], test.labels[m], clf)["acc1"]
    return out


@torch.no_grad()
def retrieval(model, test: Pairs) -> dict[str, float]:
    """Image<->text recall@{1,5,10} of the test pairs (clipcore.evaluate.retrieval_metrics)."""
    return retrieval_metrics(model.encode_image(test.x), model.encode_text(test.y), torch.arange(len(test.x)))


@torch.no_grad()
def precision_at_k(memory: MemoryBank, queries: Tensor, labels: Tensor, k: int, by: str) -> float:
    """Share of the k hits (searched among the memory's ``by`` embeddings) whose class is the query's."""
    _, rows = memory.search(queries, k, by=by)
    return (memory.labels[rows] == labels[:, None]).float().mean().item()
