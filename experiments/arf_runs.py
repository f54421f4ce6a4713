"""The runs behind experiments/test_arf.py: stage 0 (theta0) per seed, then every finetuning arm from theta0,
spread over 2 single-threaded worker processes (spawn) as (seed, chunk of arms) jobs so that both cores stay busy.

What runs is given by a :class:`Spec` (the test file holds the pre-registered one): the world, the schedule and the
arms. An :class:`Arm` is a ``clipcore.methods.arf.Config`` plus where its anchors come from (``pool``: a key of
``Spec.pools``, ArfWorldConfig overrides; ``random_pool``: the pool its uniformly drawn anchors come from), its
learning rate and a run-seed offset (a copy of an arm on other data-order seeds: the null of the controls).

    runs = run_all(spec, seeds=[0, 1, 2])   # [{seed, rows: {arm: metrics}, wise: {arm: {alpha: metrics}},
                                            #   anchors: {arm: make-up}, wall_s}]
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np
import torch

DOMAINS = ("photo", "sketch", "painting")
COST = {"ft": 1, "lpft": 1, "flyp": 3, "arf": 7}        # rough CPU cost of one arm per mode, to balance the chunks


@dataclass(frozen=True)
class Arm:
    cfg: object                       # clipcore.methods.arf.Config
    pool: str = "full"                # key of Spec.pools: the pool retrieval (or the random draw) reads
    lr: float | None = None           # None: Spec.lr
    seed_offset: int = 0              # > 0: the same arm on other data-order seeds (a null copy)
    wise: bool = False                # also evaluate the WiSE-FT grid of this arm


@dataclass(frozen=True)
class Spec:
    world: object                     # theory.arfworld.ArfWorldConfig
    arms: dict                        # name -> Arm
    pools: dict = field(default_factory=lambda: {"full": {}})   # key -> ArfWorldConfig overrides
    epochs0: int = 3
    lr0: float = 2e-3
    batch0: int = 256
    epochs: int = 10
    lr: float = 1e-4
    batch: int = 64
    alphas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    template: str = "a photo of a {}"
    chunks: int = 2                   # arm chunks per seed


def _model(w, tok, seed: int):
    from clipcore.models import CLIP, get_config
    torch.manual_seed(seed)
    cfg = get_config("tiny", tokenizer="word", embed_dim=64,
                     vision__kind="mlp", vision__image_size=w.cfg.image_size, vision__width=256, vision__layers=1,
                     text__vocab_size=tok.vocab_size, text__context_length=24, text__width=64, text__layers=1,
                     text__heads=4)
    return CLIP(cfg)


def _tok(w):
    from clipcore.tokenizer import WordTokenizer
    return WordTokenizer.from_texts(w.vocabulary_texts(), context_length=24)


def _pairs_task(model, images, tokens, batch, seed):
    """Stage 0: symmetric InfoNCE on (image, rich caption) pairs held in memory."""
    from clipcore.data import EpochBatchSampler
    from clipcore.losses import contrastive_loss
    from clipcore.methods import Task

    def loader(epoch, start):
        yield from EpochBatchSampler(len(images), batch, seed=seed, epoch=epoch, start_batch=start)

    def step(idx):
        i = torch.as_tensor(idx)
        a, b, s = model(images[i], tokens[i])
        return contrastive_loss(a, b, s), {"logit_scale": s.item()}

    return Task(model=model, steps_per_epoch=len(images) // batch, loader=loader, step=step,
                describe=f"stage 0: {len(images)} pairs")


def _fit(task, seed: int, epochs: int, lr: float, batch: int, warmup: int) -> None:
    """train() on ``task`` for ``epochs`` epochs, handed to the loop as ONE epoch of all their batches (the same
    batches in the same order and the same schedule: only the per-epoch checkpoint writes, ~7 % of a quick-tier
    run, are saved; nothing here resumes)."""
    from clipcore.methods import Task
    from clipcore.train import TrainConfig, train
    n = task.steps_per_epoch

    def loader(_epoch, start):
        for e in range(epochs):
            if start < (e + 1) * n:
                yield from task.loader(e, max(0, start - e * n))

    whole = Task(model=task.model, steps_per_epoch=n * epochs, loader=loader, step=task.step,
                 describe=task.describe)
    with tempfile.TemporaryDirectory() as logs, contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(batch_size=batch, epochs=1, lr=lr, warmup=warmup, seed=seed, logs=logs, name="run",
                          log_every=10_000, device="cpu"), task=whole)


def stage0(spec: Spec, seed: int) -> dict:
    """theta0 of one seed: a CLIP pretrained from scratch on the world's rich captions -> its state dict."""
    from theory.arfworld import ArfWorld
    torch.set_num_threads(1)
    t0 = time.time()
    w = ArfWorld(spec.world, seed)
    tok = _tok(w)
    x0, y0, d0 = w.draw("pretrain")
    theta0 = _model(w, tok, seed)
    _fit(_pairs_task(theta0, x0, tok(w.rich_captions(y0, d0, "pretrain")), spec.batch0, seed),
         seed, spec.epochs0, spec.lr0, spec.batch0, warmup=50)
    return {"state": {k: v.detach().clone() for k, v in theta0.state_dict().items()}, "wall_s": time.time() - t0}


def makeup(w, yp: torch.Tensor, dp: torch.Tensor, caps: list[str], rows: torch.Tensor) -> dict:
    """What an anchor set is made of: count, share per domain, share of ID-class / zero-shot-class / other-class
    pairs (other: a class neither finetuned nor zero-shot tested; none in this world) and of captions naming their
    class."""
    rows = rows.tolist()
    cls, dom = yp[rows].numpy(), dp[rows].numpy()
    idc, zsc = set(w.id_classes.tolist()), set(w.zs_classes.tolist())
    out = {"n": len(rows), **{f"frac_{d}": float(np.mean(dom == i)) for i, d in enumerate(DOMAINS)},
           "frac_other_domain": float(np.mean(dom != 0)),
           "frac_id_class": float(np.mean([c in idc for c in cls])),
           "frac_zs_class": float(np.mean([c in zsc for c in cls])),
           "frac_other_class": float(np.mean([c not in idc and c not in zsc for c in cls])),
           "frac_named": float(np.mean([w.classnames[c] in caps[r].split() for c, r in zip(cls, rows)]))}
    return out


def run_chunk(spec: Spec, seed: int, names: list[str], state: dict, with_theta0: bool) -> dict:
    """Finetune the arms ``names`` of one seed from theta0 (``state``) and score them."""
    from clipcore.methods import arf
    from theory.arfworld import ArfWorld
    torch.set_num_threads(1)
    t0 = time.time()
    w = ArfWorld(spec.world, seed)
    tok = _tok(w)
    theta0 = _model(w, tok, seed)
    theta0.load_state_dict(state)
    theta0.eval()
    xf, yf, df = w.draw("finetune")
    id_names = [w.classnames[c] for c in w.id_classes]
    remap = {int(c): i for i, c in enumerate(w.id_classes)}
    finetune = arf.Pairs(xf, w.captioner(yf, df), torch.tensor([remap[int(c)] for c in yf]), id_names)
    tests = {}
    for dom in DOMAINS:
        for kind, classes in (("id", w.id_classes), ("zs", w.zs_classes)):
            x, y, _ = w.draw("test", dom, classes)
            index = {int(c): i for i, c in enumerate(classes)}
            tests[(kind, dom)] = arf.Pairs(x, labels=torch.tensor([index[int(c)] for c in y]),
                                           classnames=[w.classnames[c] for c in classes])
    pools = {}

    def pool_of(key: str):
        if key not in pools:
            opts = spec.pools[key]
            wp = ArfWorld(dataclasses.replace(w.cfg, **opts), seed) if opts else w   # same seed: same classes
            xp, yp, dp = wp.draw("pool")
            caps = wp.rich_captions(yp, dp, "pool")
            pools[key] = (arf.Pairs(xp, caps), yp, dp, caps)
        return pools[key]

    def metrics(model, head: bool) -> dict:
        acc = {k: 100 * arf.accuracy(model, tok, d, d.classnames, spec.template, "cpu",
                                     use_head=head and k[0] == "id") for k, d in tests.items()}
        out = {"ID": acc[("id", "photo")], "shift": (acc[("id", "sketch")] + acc[("id", "painting")]) / 2,
               "ZS": float(np.mean([acc[("zs", d)] for d in DOMAINS]))}
        out.update({f"{k[0]}/{k[1]}": v for k, v in acc.items()})
        out["OOD"] = (out["shift"] + out["ZS"]) / 2
        return out

    rows, wise, anchors = ({"theta0": metrics(theta0, False)} if with_theta0 else {}), {}, {}
    for name in names:
        arm = spec.arms[name]
        pool, yp, dp, caps = pool_of(arm.pool)
        task = arf.arf_task(theta0, tok, finetune, arm.cfg, batch_size=spec.batch, seed=seed + arm.seed_offset,
                            device=torch.device("cpu"), pool=pool)
        _fit(task, seed + arm.seed_offset, spec.epochs, arm.lr or spec.lr, spec.batch, warmup=10)
        head = arm.cfg.mode in ("ft", "lpft")
        rows[name] = metrics(task.model, head)
        if arm.wise:
            wise[name] = {a: metrics(arf.wise_model(task, a), head) for a in spec.alphas}
        if task.anchors is not None:
            anchors[name] = {**makeup(w, yp, dp, caps, task.anchors["rows"]), "pool": arm.pool,
                             "pool_rows": len(pool)}
    return {"seed": seed, "rows": rows, "wise": wise, "anchors": anchors, "wall_s": time.time() - t0}


def chunks(spec: Spec) -> list[list[str]]:
    """The arms split into spec.chunks lists of about equal cost (greedy, most expensive first)."""
    out = [[] for _ in range(spec.chunks)]
    load = [0.0] * spec.chunks
    for name in sorted(spec.arms, key=lambda n: -COST[spec.arms[n].cfg.mode]):
        j = int(np.argmin(load))
        out[j].append(name)
        load[j] += COST[spec.arms[name].cfg.mode] * (2 if spec.arms[name].wise else 1)
    return [c for c in out if c]


def run_all(spec: Spec, seeds: list[int], workers: int = 2) -> list[dict]:
    """Every seed's theta0, then its (seed, chunk) jobs, on ``workers`` processes; merged per seed in arm order."""
    parts = chunks(spec)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        first = {ex.submit(stage0, spec, s): s for s in seeds}
        theta, jobs = {}, {}
        for f in as_completed(first):               # a seed's arms are queued as soon as its theta0 exists
            s = first[f]
            theta[s] = f.result()
            jobs.update({(s, j): ex.submit(run_chunk, spec, s, part, theta[s]["state"], j == 0)
                         for j, part in enumerate(parts)})
        done = {k: f.result() for k, f in jobs.items()}
    runs = []
    for s in seeds:
        got = [done[(s, j)] for j in range(len(parts))]
        rows = {"theta0": got[0]["rows"]["theta0"]}
        rows.update({n: g["rows"][n] for n in spec.arms for g in got if n in g["rows"]})
        runs.append({"seed": s, "rows": rows, "wise": {k: v for g in got for k, v in g["wise"].items()},
                     "anchors": {k: v for g in got for k, v in g["anchors"].items()},
                     "wall_s": theta[s]["wall_s"] + sum(g["wall_s"] for g in got)})
    return runs
