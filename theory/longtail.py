"""A long tail of fine-grained classes for RECO (docs/methods.md, RECO §7): a base CLIP TRAINED by clipcore.train on
long-tailed pairs of this world (so it is weak on the rare classes because it saw them rarely, not because a
hand-built tower says so), then frozen, and a memory of web-like image-text pairs that holds the rare classes.

Classes: ``groups`` coarse groups x ``fine`` sibling classes (C = groups * fine). In every group the first ``head``
classes are frequent in pretraining; the others are rare (``rare_pretrain`` pairs each). Rare classes are split in
two halves: ``train-rare`` may serve as RECO's training queries; ``eval-rare`` (the last half of each group) are
the evaluated classes and never training queries, so a gain on them is retrieved, not learned.

Raw data (a pair = an image and its caption):

    image    x = p_c + A a + eps_x                                    (dx = vis_dim)
             p_c = w_group g_G + w_fine d_c: a group centre plus a small class offset (siblings are close)
    caption  y = [onehot(G); n_c~; a + eta; eps_y; 1]                 (dy = G + vis_dim + inst_dim + noise_dim + 1)
             n_c = sqrt(name_info) M d_c + sqrt(1 - name_info) xi_c: the class NAME, a distributed code (like
             sub-word tokens) that describes the class's look to a degree ``name_info`` (M a fixed rotation, xi_c
             a private part); c~ = c, or with probability ``label_noise`` a random head class of c's group (a web
             caption that names the wrong class names a common sibling)
    prompt     [onehot(G); n_c; 0; 0; 1]                              ("a photo of a <class>")

a ~ N(0, I/r) are instance attributes shared by an image and its caption (what makes instance retrieval
possible), eta their paraphrase noise, eps isotropic noise of total norm ``noise_image`` / ``noise_text``. The base
is a clipcore CLIP with linear towers (no bias) trained from scratch with clipcore.train: its shared weights are
fitted mostly on the head classes, so it aligns a rare class's name with its look only as far as the name
describes it and the few rare pairs teach, and zero-shot is weak there, while image->image search still separates
siblings (same offset, fresh noise) and text->text search finds captions naming the class. World parameters with realistic defaults (chosen on pilot
seeds >= 1000, experiments/test_reco.py): memory ``relevance`` (share of the memory from the evaluated classes),
caption ``label_noise``, and the image noise that sets image->image search precision (measured and reported).

    w = LongTail(LongTailConfig(), seed=0)
    base = train_base(w, seed=0, logs=tmp)                                # clipcore.train on w.pretraining_pairs
    mem = embed(base, w.sample_pairs(w.memory_classes(20000, 0.03, g), g))
    model = train_reco(w, base, mem, Config(k=10), seed=0, logs=tmp)     # clipcore.train on RECO's Task
    zero_shot(model, w, test)                                             # {"acc": ..., "correct": (n,) bool}
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.evaluate import retrieval_metrics, zero_shot_metrics
from clipcore.memory import MemoryBank
from clipcore.methods import Task
from clipcore.methods.reco import RECO, Config, make_task, precompute
from clipcore.models import CLIP, get_config
from clipcore.train import TrainConfig, train


@dataclass(frozen=True)
class LongTailConfig:
    groups: int = 8              # coarse groups ("cars", "birds", ...)
    fine: int = 16               # sibling classes per group
    head: int = 4                # frequent classes per group (rare: the other fine - head)
    dim: int = 32                # embedding width D of the base
    vis_dim: int = 32            # raw image width (and of a class name code)
    inst_dim: int = 4            # instance attributes a (shared by an image and its caption)
    noise_dim: int = 16          # caption noise width
    w_group: float = 1.0         # norm of a group centre g_G
    w_fine: float = 1.0          # norm of a class offset d_c (siblings differ by ~ sqrt(2) w_fine)
    w_inst: float = 0.3          # norm scale of A a in the image
    name_info: float = 0.75      # share of a class name that describes the class's look (1: fully descriptive)
    noise_image: float = 0.8     # total norm of eps_x (sets image->image search precision)
    noise_text: float = 0.3      # total norm of eps_y
    paraphrase: float = 0.3      # std of eta relative to a
    label_noise: float = 0.15    # share of captions naming a random head class of the group instead of the class
    head_pretrain: int = 1000    # pretraining pairs per head class
    rare_pretrain: int = 0       # pretraining pairs per rare class (train-rare and eval-rare alike): absent

    def replace(self, **kw) -> "LongTailConfig":
        return dataclasses.replace(self, **kw)


@dataclass
class Pairs:
    x: Tensor        # (n, dx) images
    y: Tensor        # (n, dy) captions
    labels: Tensor   # (n,) true class ids
    named: Tensor    # (n,) the class each caption names (another one under label noise)


class LongTail:
    """One draw of the fixed parts (group centres, class offsets, instance map) from ``seed``."""

    def __init__(self, cfg: LongTailConfig = LongTailConfig(), seed: int = 0):
        c = cfg
        if not 0 <= c.head < c.fine or not 0 <= c.label_noise <= 1:
            raise ValueError(f"need 0 <= head < fine and 0 <= label_noise <= 1; got {c.head}, {c.fine}, {c.label_noise}")
        self.cfg, self.C = cfg, c.groups * c.fine
        g = torch.Generator().manual_seed(10_000 + seed)
        unit = lambda n: F.normalize(torch.randn(n, c.vis_dim, generator=g), dim=1)  # noqa: E731
        self.group_of = torch.arange(self.C) // c.fine
        offset = unit(self.C)                                                                   # (C, dx) d_c
        self.proto = c.w_group * unit(c.groups)[self.group_of] + c.w_fine * offset              # (C, dx) p_c
        rot = torch.linalg.qr(torch.randn(c.vis_dim, c.vis_dim, generator=g))[0]                # M
        self.names = c.name_info**0.5 * offset @ rot.T + (1 - c.name_info)**0.5 * unit(self.C)  # (C, dx) n_c
        self.inst_map = c.w_inst * F.normalize(torch.randn(c.vis_dim, c.inst_dim, generator=g), dim=0)  # (dx, r)
        j = torch.arange(self.C) % c.fine                          # index inside the group
        self.is_head = j < c.head
        self.is_eval = j >= c.head + (c.fine - c.head) // 2         # eval-rare: last half of the rare siblings
        self.is_train_rare = ~self.is_head & ~self.is_eval
        self.dx, self.dy = c.vis_dim, c.groups + c.vis_dim + c.inst_dim + c.noise_dim + 1

    # --------------------------------------------------------------------- data
    def classes(self, kind: str) -> Tensor:
        """Class ids of ``head`` | ``train_rare`` | ``eval_rare`` | ``train`` (head + train-rare) | ``all``."""
        mask = {"head": self.is_head, "train_rare": self.is_train_rare, "eval_rare": self.is_eval,
                "train": ~self.is_eval, "all": torch.ones(self.C, dtype=torch.bool)}[kind]
        return mask.nonzero()[:, 0]

    def pretraining_classes(self) -> Tensor:
        """Class ids of the base's long-tailed pretraining set: ``head_pretrain`` per head class, ``rare_pretrain``
        per rare class."""
        counts = torch.where(self.is_head, self.cfg.head_pretrain, self.cfg.rare_pretrain)
        return torch.arange(self.C).repeat_interleave(counts)

    def memory_classes(self, n: int, relevance: float, gen: torch.Generator) -> Tensor:
        """(n,) class ids of a memory: a share ``relevance`` from the eval-rare classes (uniform), the rest uniform
        over head and train-rare classes. relevance = 0 is the irrelevant-memory control."""
        n_rel = round(relevance * n)
        pick = lambda cls, m: cls[torch.randint(len(cls), (m,), generator=gen)]  # noqa: E731
        labels = torch.cat([pick(self.classes("eval_rare"), n_rel), pick(self.classes("train"), n - n_rel)])
        return labels[torch.randperm(n, generator=gen)]

    def sample_pairs(self, labels: Tensor, gen: torch.Generator, *, clean: bool = False) -> Pairs:
        """Raw (image, caption) pairs of the given classes. ``clean``: no image noise and no label noise (the
        oracle memory of experiments/test_reco.py)."""
        c, n = self.cfg, len(labels)
        a = torch.randn(n, c.inst_dim, generator=gen) / c.inst_dim**0.5
        eta = c.paraphrase * torch.randn(n, c.inst_dim, generator=gen) / c.inst_dim**0.5
        ex = (0.0 if clean else c.noise_image) * torch.randn(n, c.vis_dim, generator=gen) / c.vis_dim**0.5
        ey = c.noise_text * torch.randn(n, c.noise_dim, generator=gen) / c.noise_dim**0.5
        flip = torch.rand(n, generator=gen) < (0.0 if clean else c.label_noise)
        sibling = self.group_of[labels] * c.fine + torch.randint(c.head, (n,), generator=gen)
        named = torch.where(flip, sibling, labels)
        x = self.proto[labels] + a @ self.inst_map.T + ex
        grp = F.one_hot(self.group_of[labels], c.groups).float()
        y = torch.cat([grp, self.names[named], a + eta, ey, torch.ones(n, 1)], 1)
        return Pairs(x, y, labels.clone(), named)

    def prompts(self) -> Tensor:
        """(C, dy) the noise-free caption of every class."""
        c = self.cfg
        grp = F.one_hot(self.group_of, c.groups).float()
        return torch.cat([grp, self.names, torch.zeros(self.C, c.inst_dim + c.noise_dim), torch.ones(self.C, 1)], 1)


# ----------------------------------------------------------------------------- training (clipcore.train)
def _fit(task: Task, *, seed: int, epochs: int, lr: float, batch: int, logs: str, name: str) -> dict:
    """clipcore.train's loop on ``task`` (AdamW, warm-up + cosine, clip 1.0, a run folder under ``logs``)."""
    cfg = TrainConfig(batch_size=batch, epochs=epochs, lr=lr, seed=seed, logs=logs, name=name, log_every=100_000,
                      device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):      # the run's summary lines: many runs per experiment
        return train(cfg, task=task)


def base_model(world: LongTail, seed: int) -> CLIP:
    """The untrained base: a clipcore CLIP with linear towers (no bias), CLIP's init."""
    torch.manual_seed(seed)
    return CLIP(get_config("tiny", embed_dim=world.cfg.dim, tokenizer="none", vision__kind="linear",
                           vision__input_dim=world.dx, text__kind="linear", text__input_dim=world.dy))


def train_base(world: LongTail, seed: int, logs: str, *, epochs: int = 10, lr: float = 5e-3,
               batch: int = 256) -> CLIP:
    """The base CLIP trained by clipcore.train on the world's long-tailed pretraining pairs with clipcore's default
    loss (multi-positive InfoNCE: pairs whose captions name the same class are positives), then frozen, in eval
    mode."""
    g = torch.Generator().manual_seed(20_000 + seed)
    data = world.sample_pairs(world.pretraining_classes(), g)
    model = base_model(world, seed)
    from clipcore.data import EpochBatchSampler
    from clipcore.losses import contrastive_loss

    def loader(epoch: int, start: int):
        yield from EpochBatchSampler(len(data.x), batch, seed=seed, epoch=epoch, start_batch=start)

    def step(idx):
        i = torch.as_tensor(idx)
        a, b, s = model(data.x[i], data.y[i])
        return contrastive_loss(a, b, s, labels=data.named[i]), {"logit_scale": s.item()}

    task = Task(model=model, steps_per_epoch=len(data.x) // batch, loader=loader, step=step,
                describe=f"long-tail pretraining: {len(data.x)} pairs")
    _fit(task, seed=seed, epochs=epochs, lr=lr, batch=batch, logs=logs, name=f"base_s{seed}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def embed(base: CLIP, pairs: Pairs, ids: Tensor | None = None) -> MemoryBank:
    """The frozen base's embeddings of pairs as a memory (true labels kept for diagnostics: precision@k)."""
    return MemoryBank(base.encode_image(pairs.x), base.encode_text(pairs.y), ids=ids, labels=pairs.labels,
                      meta={"encoder": "theory.longtail trained base"})


def train_reco(world: LongTail, base: CLIP, memory: MemoryBank, cfg: Config, *, seed: int, logs: str,
               epochs: int = 6, lr: float = 2e-3, batch: int = 128, queries: int = 4000,
               train_fraction: float = 1.0) -> tuple[RECO, list[float]]:
    """RECO on the frozen ``base`` with ``memory``, trained by clipcore.train. Training queries: ``queries`` memory
    pairs of head and train-rare classes (never eval-rare), each excluding its own pair; neighbours are searched
    in a ``train_fraction`` sample of the memory (RECO-4). Returns the model (its memory: the full ``memory``)
    and the training losses."""
    torch.manual_seed(seed)
    model = RECO(base, memory, cfg)
    train_mem = memory.sample(train_fraction, seed) if train_fraction < 1 else memory
    q = (~torch.isin(memory.labels, world.classes("eval_rare"))).nonzero()[:, 0]
    q = q[torch.randperm(len(q), generator=torch.Generator().manual_seed(seed))[:queries]].sort().values
    pairs = precompute(model, memory.image[q], memory.text[q], memory.ids[q], train_mem, labels=memory.labels[q])
    if cfg.fuser == "none":
        return model.eval(), []
    res = _fit(make_task(model, pairs, batch_size=batch, seed=seed), seed=seed, epochs=epochs, lr=lr, batch=batch,
               logs=logs, name=f"reco_{cfg.fuser}_{cfg.search}{cfg.fusion}_k{cfg.k}_f{train_fraction:g}_s{seed}")
    return model.eval(), res["losses"]


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def zero_shot(model, world: LongTail, test: Pairs) -> dict:
    """Zero-shot top-1 over all C classes (refined images vs refined prompts when ``model`` is a RECO):
    {"acc": clipcore.evaluate.zero_shot_metrics's acc1, "correct": (n,) bool per test image}."""
    feats, clf = model.encode_image(test.x), model.encode_text(world.prompts())
    correct = (feats.float() @ clf.float().T).argmax(1) == test.labels
    return {"acc": zero_shot_metrics(feats, test.labels, clf)["acc1"], "correct": correct}


@torch.no_grad()
def retrieval(model, test: Pairs) -> dict:
    """Recall@1 of the test pairs both ways (clipcore.evaluate.retrieval_metrics) and the per-query hits:
    {"t2i", "i2t": recall@1, "t2i_hit", "i2t_hit": (n,) bool}."""
    img, txt = model.encode_image(test.x).float(), model.encode_text(test.y).float()
    m = retrieval_metrics(img, txt, torch.arange(len(test.x)), ks=(1,))
    sim, idx = txt @ img.T, torch.arange(len(test.x))
    return {"t2i": m["image_retrieval_recall@1"], "i2t": m["text_retrieval_recall@1"],
            "t2i_hit": sim.argmax(1) == idx, "i2t_hit": sim.argmax(0) == idx}


@torch.no_grad()
def precision_at_k(memory: MemoryBank, queries: Tensor, labels: Tensor, k: int, by: str) -> float:
    """Share of the k hits (searched among the memory's ``by`` embeddings) whose true class is the query's."""
    _, rows = memory.search(queries, k, by=by)
    return (memory.labels[rows] == labels[:, None]).float().mean().item()


@torch.no_grad()
def near_duplicates(memory: MemoryBank, eval_images: Tensor, threshold: float) -> dict:
    """The near-duplicate check between memory and evaluation images: each evaluation image's highest image
    cosine to the memory; {"max_cos": its largest, "median_cos": its median, "n_eval_with_dup": evaluation images
    with a memory image above ``threshold``}."""
    best, _ = memory.search(F.normalize(eval_images.float(), dim=-1), 1, by="image")
    best = best[:, 0]
    return {"max_cos": best.max().item(), "median_cos": best.median().item(),
            "n_eval_with_dup": int((best > threshold).sum()), "threshold": threshold}
