"""Linear CLIP encoders f(x) = W x, g(y) = V y on the synthetic world, and the ONE fitting loop every
theory experiment uses.

    model = linear_clip(world.cfg, embed_dim=16, tau=0.1)             # clipcore CLIP, fixed temperature
    loss = make_loss("reg", reg_lambda=0.1, reg_over_tau=True)        # clipcore.losses
    hist = fit(model, loss, fresh_batches(world, 32, seed=1), steps=1000, lr=1.0 * tau)
    img, txt = embed(model, sample)                                   # (N, d) each
    world, model, traj = train_protocol(cfg, tau=0.1, seed=0, steps=1000)   # all of the above, as the experiments do

Batches from ``fresh_batches`` are i.i.d. draws of B pairs (the population loss E[L_B] of docs/methods.md, theory §3).
``fixed_batches`` (for T1) returns the same (n/B, B, dim) partition of a fixed sample every step: the loss is
then the empirical loss averaged over the n/B disjoint batches, evaluated with ``torch.func.vmap``.

The symmetric clipcore loss is the *average* of the two directions, i.e. 1/2 of the paper's L_B.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from clipcore.losses import make_loss
from clipcore.models import CLIP, get_config
from theory.measures import class_alignment, suppression
from theory.world import World, WorldConfig

Batch = tuple[Tensor, Tensor]


def linear_clip(cfg: WorldConfig, embed_dim: int, tau: float, normalize: bool = True, seed: int = 0) -> CLIP:
    """clipcore CLIP with linear towers (no bias) and a fixed temperature tau (logit scale 1/tau <= 100)."""
    torch.manual_seed(seed)
    return CLIP(get_config("tiny", embed_dim=embed_dim, tokenizer="none", normalize=normalize,
                           vision__kind="linear", vision__input_dim=cfg.dx,
                           text__kind="linear", text__input_dim=cfg.dy,
                           init_logit_scale=1.0 / tau, learn_logit_scale=False))


def weights(model: CLIP) -> tuple[Tensor, Tensor]:
    """W (d, dx), V (d, dy), detached."""
    return model.visual.net.weight.detach(), model.text.net.weight.detach()


@torch.no_grad()
def embed(model: CLIP, sample) -> tuple[Tensor, Tensor]:
    """Encoder outputs (normalised when the model normalises) of a ``world.Sample``: (N, d), (N, d)."""
    return model.encode_image(sample.x), model.encode_text(sample.y)


def fresh_batches(world: World, batch_size: int, seed: int, chunk: int = 64, **sample_kw) -> Callable[[int], Batch]:
    """step -> (x (B, dx), y (B, dy)), a new i.i.d. batch every call (drawn ``chunk`` batches at a time)."""
    gen = torch.Generator().manual_seed(seed)
    buf: list[Batch] = []

    def next_batch(step: int) -> Batch:
        if not buf:
            s = world.sample(chunk * batch_size, gen, **sample_kw)
            buf.extend(reversed(list(zip(s.x.split(batch_size), s.y.split(batch_size)))))
        return buf.pop()
    return next_batch


def fixed_batches(x: Tensor, y: Tensor, batch_size: int) -> Callable[[int], Batch]:
    """step -> the fixed partition (n/B, B, dx), (n/B, B, dy) of a sample of n pairs (n divisible by B)."""
    n = len(x)
    if n % batch_size:
        raise ValueError(f"n={n} must be a multiple of the batch size {batch_size}")
    xb, yb = x.view(n // batch_size, batch_size, -1), y.view(n // batch_size, batch_size, -1)
    return lambda step: (xb, yb)


def batch_loss(model: CLIP, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """Loss of one batch (B, dim), or the mean loss over a stack of batches (n/B, B, dim) via vmap."""
    scale = model.logit_scale_value()
    img, txt = model.encode_image(x.flatten(0, -2)), model.encode_text(y.flatten(0, -2))
    if x.dim() == 2:
        return loss_fn(img, txt, scale)
    shape = (*x.shape[:-1], img.shape[-1])
    per = torch.func.vmap(lambda a, b: loss_fn(a, b, scale))(img.view(shape), txt.view(shape))
    return per.mean()


def fit(model: CLIP, loss_fn, batches: Callable[[int], Batch], *, steps: int, lr: float, opt: str = "sgd",
        momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "constant",
        callback: Callable[[int, CLIP], None] | None = None, every: int = 0) -> list[float]:
    """Minimise ``loss_fn(img, txt, logit_scale)`` over ``steps`` batches; returns the loss per step.

    opt: ``sgd`` (with ``momentum``; the gradient-descent setting of the theory, whose vanishing gradients
    T6 is about) or ``adam`` (AdamW). ``callback(step, model)`` runs before step 0, every ``every`` steps
    and after the last step. schedule: ``constant`` lr, or ``cosine`` (lr * (1 + cos(pi t / steps)) / 2, decaying
    to 0: a run that ends on a plateau of the training loss, i.e. trained to convergence at that step count)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opt == "sgd":
        optim = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif opt == "adam":
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"opt must be 'sgd' or 'adam', got {opt!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps) if schedule == "cosine" else None
    hist = []
    for step in range(steps):
        if callback and (step == 0 or (every and step % every == 0)):
            callback(step, model)
        x, y = batches(step)
        loss = batch_loss(model, loss_fn, x, y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if sched is not None:
            sched.step()
        hist.append(loss.item())
    if callback:
        callback(steps, model)
    return hist


@torch.no_grad()
def population_loss(model: CLIP, loss_fn, world: World, batch_size: int, n: int, seed: int) -> float:
    """Monte-Carlo E[L_B]: mean loss over n // B fresh i.i.d. batches of size B."""
    s = world.sample(n - n % batch_size, torch.Generator().manual_seed(seed))
    return batch_loss(model, loss_fn, *fixed_batches(s.x, s.y, batch_size)(0)).item()


def train_protocol(cfg: WorldConfig, tau: float, seed: int, *, steps: int, batch_size: int = 32, embed_dim: int = 16,
                   eta0: float = 1.0, loss: str = "clip", reg_lambda: float = 0.0, reg_pairs: str = "pos",
                   track_points: int = 20, rep: int = 0) -> tuple[World, CLIP, list[dict]]:
    """The theory experiments' common protocol: world and init from ``seed``, linear normalised towers into
    ``embed_dim``, fixed tau, fresh i.i.d. batches, SGD (momentum 0.9) with lr = eta0 * tau, i.e. SGD on tau * L so
    that the step in score units is the same at every tau. ``loss``/``reg_*`` go to clipcore's ``make_loss`` with
    ``reg_over_tau=True`` (objective L + lambda R / tau). Returns (world, model, trajectory), the trajectory holding
    the unique-feature ratios and the mean class alignment at ``track_points`` + 1 steps. ``rep`` > 0 gives a
    replicate on the same world with another init and batch stream (a null arm: the same method, other seeds)."""
    world = World(cfg, seed)
    model = linear_clip(cfg, embed_dim, tau, seed=seed + 7919 * rep)
    traj: list[dict] = []

    def track(step: int, m: CLIP) -> None:
        b = world.blocks(*weights(m))
        traj.append({"step": step, **suppression(b), "align": class_alignment(b).mean().item()})
    fn = make_loss(loss, reg_lambda=reg_lambda, reg_pairs=reg_pairs, reg_over_tau=True)
    fit(model, fn, fresh_batches(world, batch_size, seed=1000 + seed + 7919 * rep), steps=steps, lr=eta0 * tau,
        callback=track, every=max(steps // track_points, 1))
    return world, model, traj
