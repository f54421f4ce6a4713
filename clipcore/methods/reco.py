"""RECO: retrieval-enhanced contrastive vision-text models (Iscen, Caron, Fathi, Schmid; ICLR 2024).

    python -m clipcore.train --epochs 8 --logs runs --name base                          # a base CLIP to freeze
    python -m clipcore.train --method reco --init runs/base/checkpoints/latest.pt --epochs 5 --reco-k 10
    python -m clipcore.train --method reco --init base.pt --reco-memory mem.safetensors --reco-search cross

Both towers stay frozen: v = f_I(x), t = f_T(y), L2-normalised. A memory M = {(v_m, t_m)} of pair embeddings
(:mod:`clipcore.memory`) is searched *within* a modality and the *other* modality of the hits is fused
("uni-modal search, cross-modal fusion", the paper's Table 5):

    image query:  N_k(v) = top-k_m <v, v_m>      v_bar = phi_I(v; {t_m : m in N_k(v)})
    text query:   N_k(t) = top-k_m <t, t_m>      t_bar = phi_T(t; {v_m : m in N_k(t)})
    phi(u; r) = h_0 / ||h_0||,  h = TEL([u; r_1; ...; r_k])       one pre-norm transformer encoder layer, width D
    L = l1 NCE(v_bar, t_bar) + l2 NCE(v_bar, t) + l3 NCE(v, t_bar)   (NCE = clipcore's symmetric InfoNCE)

Only phi_I, phi_T (and the temperature) train; v, t and the neighbour lists of the training pairs are computed
once. A training query never sees its own pair (excluded by id when the memory is the training split).
:class:`RECO` exposes ``encode_image`` / ``encode_text`` returning the refined embeddings, so zero-shot and
retrieval go through :mod:`clipcore.evaluate` unchanged. Tags in comments: [PAPER] stated by the paper,
[RECON] a reconstruction (docs/methods.md, RECO), exposed as an option of :class:`Config`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore.data import EpochBatchSampler, load_dataset
from clipcore.errors import ConfigError
from clipcore.losses import contrastive_loss
from clipcore.memory import MemoryBank, build_memory
from clipcore.methods import HeldOut, Task, base_meta, load_init, model_from_meta
from clipcore.models import Block, _init_transformer, logit_scale_from, num_params
from clipcore.training import TrainConfig

MODES = ("uni", "cross")
FUSERS = ("transformer", "mlp", "adapter", "none")
PAPER_PARAMS = 3.16e6          # [THIRD] at CLIP-B/32 width; per module or total is not stated


@dataclass
class Config:
    k: int = 10                   # neighbours per query [RECON: paper default unknown; always sweep]
    search: Literal["uni", "cross"] = "uni"  # uni: image->image, text->text [PAPER] | cross: image->text, text->image
    fusion: Literal["cross", "uni"] = "cross"  # cross: fuse the other modality of the hits [PAPER] | uni: the same modality
    # transformer [PAPER] | mlp (an MLP fuser: sees the mean of the hits) | adapter (the paper's capacity control,
    # Fig. 3: an MLP of the same size on the query alone, no retrieval) | none (the frozen base)
    fuser: Literal["transformer", "mlp", "adapter", "none"] = "transformer"
    layers: int = 1               # [PAPER] a single layer
    heads: int = 8                # must divide the embedding width
    mlp_ratio: float = 4.0        # [RECON] 1 layer, ratio 4: 3.15M per module at d=512 (paper: 3.16M)
    output_token: Literal["query", "cls"] = "query"  # [RECON] query: read h at the query position | cls: a learned extra token
    residual: bool = False        # [RECON] u_bar = norm(u + phi(u; r)) instead of phi(u; r)
    type_embed: bool = False      # [RECON] learned query/retrieved type embeddings
    rank_embed: bool = False      # [RECON] learned rank embeddings of the k retrieved tokens
    zero_init: bool = True        # [RECON] attention/MLP output projections start at 0 (phi = identity at init)
    lambda1: float = 1.0          # [RECON] weight of NCE(v_bar, t_bar)
    lambda2: float = 1.0          # weight of NCE(v_bar, t)
    lambda3: float = 1.0          # weight of NCE(v, t_bar)
    tau: float = 0.07             # initial temperature (CLIP's); learned unless --no-reco-learn-tau
    learn_tau: bool = True        # learn the temperature
    labels: bool = True           # multi-positive NCE: pairs sharing a class label are positives (labelled data)
    alpha: float = 1.0            # [RECON] zero-shot score alpha cos(v_bar, t_bar_c) + (1 - alpha) cos(v, t_c)
    memory: str = ""              # a saved MemoryBank ("": the base model's embeddings of the training split)
    train_fraction: float = 1.0   # share of the memory searched in training (RECO-4: 0.01); evaluation uses all
    train_dedup: float = 0.0      # > 0: in training also skip neighbours whose search cosine exceeds it
    dedup: float = 0.0            # > 0: drop memory pairs whose image cosine to an evaluation image exceeds it
    backend: Literal["exact", "faiss"] = "exact"  # exact (chunked matmul + top-k) | faiss (IndexFlatIP)

    def __post_init__(self) -> None:
        for name, value, allowed in (("search", self.search, MODES), ("fusion", self.fusion, MODES),
                                     ("fuser", self.fuser, FUSERS), ("output_token", self.output_token, ("query", "cls")),
                                     ("backend", self.backend, ("exact", "faiss"))):
            if value not in allowed:
                raise ConfigError(f"reco option {name}={value!r}; choose one of {allowed}")
        if self.k < 1 or not 0 < self.train_fraction <= 1 or not 0 <= self.alpha <= 1:
            raise ConfigError(f"need k >= 1, 0 < train_fraction <= 1, 0 <= alpha <= 1; got {self.k}, "
                             f"{self.train_fraction}, {self.alpha}")


# ----------------------------------------------------------------------------- fusion modules
class TransformerFusion(nn.Module):
    """phi(u; r) = h_0 / ||h_0|| with h = TEL([u; r_1; ...; r_k]) (docs/methods.md, RECO §2).

    u (B, D) query embedding, r (B, k, D) retrieved embeddings in rank order -> (B, D) unit vectors.
    TEL = ``layers`` pre-norm blocks (clipcore.models.Block: x + attn(ln x), x + mlp(ln x)), width D; one block
    has (4 + 2 rho) D^2 + (9 + rho) D parameters. CLIP's init, with the output projections of attention and MLP
    at zero (``zero_init``, [RECON], as MLPFusion's last layer): the untrained module returns exactly u, so both
    fusion types start from the frozen base. Missing neighbours (rows -1) enter as zero vectors."""

    def __init__(self, dim: int, *, k: int = 10, layers: int = 1, heads: int = 8, mlp_ratio: float = 4.0,
                 output_token: str = "query", residual: bool = False, type_embed: bool = False,
                 rank_embed: bool = False, zero_init: bool = True):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"reco heads={heads} must divide the embedding width {dim}")
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))
        _init_transformer(self.blocks, dim)
        if zero_init:                          # residual branches start at 0: phi(u; r) = u before training
            for blk in self.blocks:
                nn.init.zeros_(blk.out.weight); nn.init.zeros_(blk.mlp[2].weight)
        self.residual = residual
        self.cls = nn.Parameter(torch.randn(dim) * dim**-0.5) if output_token == "cls" else None
        self.type_emb = nn.Parameter(torch.zeros(2, dim)) if type_embed else None
        self.rank = nn.Parameter(torch.zeros(k, dim)) if rank_embed else None

    def forward(self, u: Tensor, r: Tensor) -> Tensor:
        x = torch.cat([u[:, None], r], 1)                                      # (B, 1 + k, D)
        if self.type_emb is not None:
            x = x + self.type_emb[torch.tensor([0] + [1] * r.shape[1], device=x.device)]
        if self.rank is not None:
            x = torch.cat([x[:, :1], x[:, 1:] + self.rank[: r.shape[1]]], 1)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), 1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        out = F.normalize(x[:, 0], dim=-1)
        return F.normalize(u + out, dim=-1) if self.residual else out


class MLPFusion(nn.Module):
    """The project's MLP fuser: an MLP on the query and the mean of its retrieved embeddings,
    u_bar = norm(u + W_2 GELU(W_1 LN([u; mean_j r_j]))). Hidden width h = (4 + 2 rho) D / 3 per layer makes it
    the size of the transformer layer (3 D h ~ (4 + 2 rho) D^2); it sees the same k items, without attention."""

    def __init__(self, dim: int, *, layers: int = 1, mlp_ratio: float = 4.0, zero_init: bool = True, **_: object):
        super().__init__()
        hidden = round((4 + 2 * mlp_ratio) * dim * layers / 3)
        self.net = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if zero_init:                          # starts as the identity on u
            nn.init.zeros_(self.net[-1].weight); nn.init.zeros_(self.net[-1].bias)

    def forward(self, u: Tensor, r: Tensor) -> Tensor:
        return F.normalize(u + self.net(torch.cat([u, r.mean(1)], -1)), dim=-1)


class AdapterMLP(nn.Module):
    """The paper's capacity control (Fig. 3, left): a CLIP-style MLP of the transformer layer's size trained with
    the same loss on the same data, that never sees a neighbour: u_bar = norm(u + W_2 GELU(W_1 LN(u))), hidden
    width h = (4 + 2 rho) D / 2 per layer (2 D h ~ (4 + 2 rho) D^2). ``r`` is ignored; RECO skips the search."""

    def __init__(self, dim: int, *, layers: int = 1, mlp_ratio: float = 4.0, zero_init: bool = True, **_: object):
        super().__init__()
        hidden = round((4 + 2 * mlp_ratio) * dim * layers / 2)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if zero_init:                          # starts as the identity on u
            nn.init.zeros_(self.net[-1].weight); nn.init.zeros_(self.net[-1].bias)

    def forward(self, u: Tensor, r: Tensor | None = None) -> Tensor:
        return F.normalize(u + self.net(u), dim=-1)


def make_fuser(cfg: Config, dim: int) -> nn.Module | None:
    """The fusion module of one side (None for ``fuser="none"``)."""
    if cfg.fuser == "none":
        return None
    cls = {"transformer": TransformerFusion, "mlp": MLPFusion, "adapter": AdapterMLP}[cfg.fuser]
    return cls(dim, k=cfg.k, layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, output_token=cfg.output_token,
               residual=cfg.residual, type_embed=cfg.type_embed, rank_embed=cfg.rank_embed, zero_init=cfg.zero_init)


def fuser_params(cfg: Config, dim: int) -> int:
    """Parameters of ONE fusion module (phi_I or phi_T) at width ``dim``; RECO has two."""
    m = make_fuser(cfg, dim)
    return 0 if m is None else num_params(m)


# ----------------------------------------------------------------------------- the model
def _other(modality: str) -> str:
    return "text" if modality == "image" else "image"


class RECO(nn.Module):
    """A frozen CLIP (``base``: anything with encode_image / encode_text) + memory + phi_I, phi_T.

    ``encode_image`` / ``encode_text`` return refined, L2-normalised embeddings (B, D); with alpha < 1 they
    return the unit vector [sqrt(alpha) u_bar; sqrt(1 - alpha) u] (B, 2D), whose inner products are exactly
    the mixed score alpha cos(v_bar, t_bar) + (1 - alpha) cos(v, t) of docs/methods.md, RECO §4."""

    def __init__(self, base: nn.Module, memory: MemoryBank | None, cfg: Config = Config(), dim: int | None = None):
        super().__init__()
        if memory is None and dim is None:
            raise ValueError("RECO needs a memory (or its embedding width dim, with the memory set later)")
        self.base, self.memory, self.cfg, self.dim = base, memory, cfg, dim or memory.dim
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.phi_image, self.phi_text = make_fuser(cfg, self.dim), make_fuser(cfg, self.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.tau)), requires_grad=cfg.learn_tau)

    def train(self, mode: bool = True) -> "RECO":
        super().train(mode)
        self.base.eval()                       # frozen towers stay in eval mode (BatchNorm statistics)
        return self

    def logit_scale_value(self) -> Tensor:
        return logit_scale_from(self.logit_scale)

    def input_size(self) -> tuple[int, int]:
        """(image_size, in_channels) of the frozen base's image tower."""
        return self.base.input_size()

    def neighbours(self, u: Tensor, query: str, *, memory: MemoryBank | None = None, exclude_ids: Tensor | None = None,
                   max_score: float | None = None) -> Tensor:
        """u (B, D) queries of modality ``query`` -> (B, k) memory rows: ranked by <u, v_m> or <u, t_m>
        (uni search: the query's own modality; cross: the other one)."""
        memory = memory or self.memory
        by = query if self.cfg.search == "uni" else _other(query)
        _, rows = memory.search(u, self.cfg.k, by=by, exclude_ids=exclude_ids, backend=self.cfg.backend,
                                max_score=max_score)
        return rows

    def fuse(self, u: Tensor, rows: Tensor, query: str, memory: MemoryBank | None = None) -> Tensor:
        """u (B, D), rows (B, k) -> u_bar (B, D): phi over the hits' other modality (cross fusion) or own (uni)."""
        phi = self.phi_image if query == "image" else self.phi_text
        if phi is None:
            return u
        if self.cfg.fuser == "adapter":        # no retrieval: the capacity control sees the query alone
            return phi(u)
        memory = memory or self.memory
        tokens = memory.gather(rows, _other(query) if self.cfg.fusion == "cross" else query)   # (B, k, D)
        return phi(u, tokens.to(u.dtype))

    def refine(self, u: Tensor, query: str) -> Tensor:
        """Search + fuse with the model's memory: (B, D) -> (B, D)."""
        u = F.normalize(u.float(), dim=-1)
        if self.cfg.fuser in ("adapter", "none"):   # nothing is retrieved
            return self.fuse(u, torch.empty(len(u), 0, dtype=torch.long, device=u.device), query)
        return self.fuse(u, self.neighbours(u, query), query)

    def _mix(self, u: Tensor, u_bar: Tensor) -> Tensor:
        a = self.cfg.alpha
        return u_bar if a == 1 else torch.cat([math.sqrt(a) * u_bar, math.sqrt(1 - a) * F.normalize(u.float(), dim=-1)], -1)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        with torch.no_grad():
            v = self.base.encode_image(images, normalize=True)
        return self._mix(v, self.refine(v, "image"))

    def encode_text(self, text: Tensor, normalize: bool = True) -> Tensor:
        with torch.no_grad():
            t = self.base.encode_text(text, normalize=True)
        return self._mix(t, self.refine(t, "text"))


# ----------------------------------------------------------------------------- loss
def reco_loss(v: Tensor, t: Tensor, v_bar: Tensor, t_bar: Tensor, logit_scale: Tensor | float, *,
              lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0), labels: Tensor | None = None) -> tuple[Tensor, dict]:
    """L = l1 NCE(v_bar, t_bar) + l2 NCE(v_bar, t) + l3 NCE(v, t_bar) (docs/methods.md, RECO §3, [RECON]).

    All inputs (B, D), row i of each from pair i. NCE is clipcore's symmetric InfoNCE (mean of both directions);
    labels (B,): pairs with equal labels are all positives. A term with weight 0 is skipped.
    Returns the scalar loss and {term name: value} for logging."""
    terms = {"nce_vbar_tbar": (v_bar, t_bar), "nce_vbar_t": (v_bar, t), "nce_v_tbar": (v, t_bar)}
    loss, parts = v_bar.new_zeros(()), {}
    for lam, (name, (a, b)) in zip(lambdas, terms.items()):
        if lam:
            term = contrastive_loss(a, b, logit_scale, labels=labels)
            loss = loss + lam * term
            parts[name] = term.item()
    return loss, parts


# ----------------------------------------------------------------------------- training data
@dataclass
class TrainPairs:
    """Precomputed training queries (towers frozen, so once per run): v, t (N, D), labels (N,) (-1 unknown),
    and their neighbour rows (N, k) in ``memory`` for the image and the text query, own pair excluded."""
    v: Tensor
    t: Tensor
    labels: Tensor
    rows_image: Tensor
    rows_text: Tensor
    memory: MemoryBank


@torch.no_grad()
def precompute(model: RECO, v: Tensor, t: Tensor, ids: Tensor | None, memory: MemoryBank, *,
               labels: Tensor | None = None, max_score: float | None = None, chunk: int = 4096) -> TrainPairs:
    """Neighbour lists of the training pairs (v (N, D), t (N, D), ids (N,)) in ``memory``. ``ids``: the pairs'
    ids in the memory (each query's own pair is excluded from BOTH lists); None when the pairs are not in it."""
    dev = memory.device
    v, t = F.normalize(v.float(), dim=-1).to(dev), F.normalize(t.float(), dim=-1).to(dev)
    rows = {"image": [], "text": []}
    for s in range(0, len(v), chunk):
        ex = None if ids is None else ids[s:s + chunk].to(dev)
        for q, u in (("image", v), ("text", t)):
            rows[q].append(model.neighbours(u[s:s + chunk], q, memory=memory, exclude_ids=ex, max_score=max_score))
    labels = torch.full((len(v),), -1, dtype=torch.long) if labels is None else labels
    return TrainPairs(v, t, labels.to(dev), torch.cat(rows["image"]), torch.cat(rows["text"]), memory)


def make_task(model: RECO, pairs: TrainPairs, *, batch_size: int, seed: int, evaluate=None,
              eval_splits: tuple[str, ...] = (), meta: dict | None = None, describe: str = "",
              held_out: str = "test split") -> Task:
    """The Task of clipcore.train for precomputed pairs: batches are index tensors of a (seed, epoch) permutation."""
    n = len(pairs.v)
    lambdas = (model.cfg.lambda1, model.cfg.lambda2, model.cfg.lambda3)
    use_labels = model.cfg.labels and bool((pairs.labels >= 0).all())

    def loader(epoch: int, start: int) -> Iterator[Tensor]:
        # clipcore.data's resumable sampler, whole batches on every rank: the RECO loss is not gathered, so a rank
        # computes the global batch's loss itself (exact under torchrun, no faster)
        for rows in EpochBatchSampler(n, batch_size, seed=seed, epoch=epoch, start_batch=start):
            yield torch.tensor(rows)

    def step(idx: Tensor) -> tuple[Tensor, dict]:
        idx = idx.to(pairs.v.device)
        v, t = pairs.v[idx], pairs.t[idx]
        v_bar = model.fuse(v, pairs.rows_image[idx], "image", pairs.memory).float()
        t_bar = model.fuse(t, pairs.rows_text[idx], "text", pairs.memory).float()
        scale = model.logit_scale_value()
        loss, parts = reco_loss(v, t, v_bar, t_bar, scale, lambdas=lambdas,
                                labels=pairs.labels[idx] if use_labels else None)
        return loss, {**parts, "logit_scale": scale.item()}

    return Task(model=model, steps_per_epoch=n // batch_size, loader=loader, step=step, evaluate=evaluate,
                eval_splits=eval_splits, meta=meta or {}, describe=describe, held_out=held_out)


def describe_params(model: RECO) -> str:
    """Trainable counts at this width and at CLIP-B/32 width (d = 512), per module and total, vs the paper."""
    d = model.dim
    here, b32 = fuser_params(model.cfg, d), fuser_params(model.cfg, 512)
    return (f"fuser {model.cfg.fuser}: {here:,} per module x 2 = {2 * here:,} at d={d}; at CLIP-B/32 width d=512: "
            f"{b32 / 1e6:.2f}M per module, {2 * b32 / 1e6:.2f}M total (paper: {PAPER_PARAMS / 1e6:.2f}M, "
            "per module or total not stated)")


# ----------------------------------------------------------------------------- the plug-in
def build(cfg: TrainConfig, mcfg: Config, device: torch.device) -> Task:
    """``python -m clipcore.train --method reco --init <base checkpoint>``: frozen base, memory (a saved bank or
    the base's embeddings of the training split), RECO trained on the training split, evaluated on val/test."""
    from clipcore.evaluate import encode_images, evaluate_model

    base, tokenizer, ckpt, data_kw = load_init(
        cfg, device, "--method reco needs --init <checkpoint of the frozen base CLIP>; train one first with "
                     "`python -m clipcore.train --epochs 8 --name base` and pass logs/base/checkpoints/latest.pt")
    train_ds = load_dataset(cfg.train_data, "train", **data_kw)
    held = HeldOut(cfg, data_kw)
    train_bank = build_memory(base, train_ds, tokenizer, device=device,
                              meta={"encoder": str(cfg.init), "source": cfg.train_data or "animal-mnist train"})
    train_bank = train_bank.to(device)
    memory = MemoryBank.load(mcfg.memory, device) if mcfg.memory else train_bank
    own = not mcfg.memory                     # training pairs are memory rows (ids 0..N-1): exclude each one's own
    model = RECO(base, memory, mcfg).to(device)
    train_memory = memory.sample(mcfg.train_fraction, cfg.seed) if mcfg.train_fraction < 1 else memory
    pairs = precompute(model, train_bank.image, train_bank.text, train_bank.ids if own else None, train_memory,
                       labels=train_bank.labels, max_score=mcfg.train_dedup or None)

    def evaluate(split: str) -> dict:
        ds = held.dataset(split)
        out = {}
        if mcfg.dedup:                       # de-duplicate the evaluation memory against this split's images
            batches = torch.utils.data.DataLoader(ds, batch_size=512, collate_fn=lambda b: torch.stack([x[0] for x in b]))
            model.memory, removed = memory.dedup_against(encode_images(base, batches, device=device), mcfg.dedup)
            out["memory_removed"] = float(removed)
        try:
            out = {**evaluate_model(model, tokenizer, ds, device=device, retrieval=split == "test"), **out}
        finally:
            model.memory = memory
        if split == "test":                  # every zero-shot mode: the refined (primary) and the frozen base's
            out.update({f"base/{k}": v for k, v in evaluate_model(base, tokenizer, ds, device=device).items()})
        return out

    src = mcfg.memory or "base embeddings of the training split"
    describe = (f"{len(train_ds)} train pairs; memory {len(memory)} pairs ({src}), training memory {len(train_memory)}; "
                f"k={mcfg.k}, {mcfg.search} search + {mcfg.fusion} fusion; " + describe_params(model))
    return make_task(model, pairs, batch_size=cfg.batch_size, seed=cfg.seed, evaluate=evaluate if held else None,
                     eval_splits=held.eval_splits(final=True),
                     meta={"reco_config": dataclasses.asdict(mcfg), "base_checkpoint": str(cfg.init),
                           "base": base_meta(ckpt, data_kw), "tokenizer": ckpt.get("tokenizer"),
                           "preprocess": data_kw["preprocess"].to_dict(), "memory_meta": memory.meta},
                     describe=describe, held_out=held.describe)


def load(ckpt: dict, device: str | torch.device = "cpu", memory: MemoryBank | str | None = None
         ) -> tuple[RECO, object]:
    """The model of a ``--method reco`` checkpoint (``clipcore.methods.load_model`` calls this) -> (RECO in eval
    mode, tokenizer). The memory is not in the checkpoint: pass a bank or a path; by default the saved ``memory``
    option, else the base's embeddings of the training split recorded in the checkpoint's train_config
    (recomputed)."""
    from clipcore.checkpoint import preprocess_of

    if "reco_config" not in ckpt:
        raise ConfigError(f"{ckpt.get('loaded_from', 'the checkpoint')} is not a --method reco checkpoint (no "
                          "reco_config); load it with clipcore.methods.load_model")
    # the frozen base: "base" (any encoder); older checkpoints: a clipcore CLIP's "base_model_config"
    base_meta_ = ckpt.get("base") or {"model_config": ckpt["base_model_config"], "tokenizer": ckpt.get("tokenizer")}
    base, tokenizer = model_from_meta(base_meta_)
    mcfg = Config(**ckpt["reco_config"])
    memory = memory or mcfg.memory or None
    if isinstance(memory, str):
        memory = MemoryBank.load(memory)
    model = RECO(base, memory, mcfg, dim=None if memory is not None else _embed_dim(base))
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    if memory is None:                              # recompute the base's embeddings of the training split
        tc = ckpt["train_config"]
        ds = load_dataset(tc["train_data"], "train", preprocess=preprocess_of(ckpt, model), seed=tc["seed"])
        memory = build_memory(model.base, ds, tokenizer, device=device)
    model.memory = memory.to(device)
    return model, tokenizer


def eval_references(model: RECO) -> dict[str, nn.Module]:
    """clipcore.eval also scores the frozen base the refined embeddings come from (metrics "base/...")."""
    return {"base": model.base}


def _embed_dim(model: nn.Module) -> int:
    """The embedding width of any encoder (a CLIP's config, else one text embedding)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "embed_dim"):
        return cfg.embed_dim
    tok = getattr(model, "tokenizer", None)
    with torch.no_grad():
        return model.encode_text(tok(["a"])).shape[-1]
