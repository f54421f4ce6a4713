"""The fit loop: epochs of optimiser steps over a :class:`~clipcore.methods.Task`'s batches, and nothing else.

Run folders, resume, checkpoints, logs, signals and evaluation are the run shell's (:func:`clipcore.train.train`):
it hands them in as :class:`Hooks`. What this module owns is one optimiser step (:class:`Optimisation`: forward
under autocast inside the DDP runner or GradCache accumulation, the non-finite guard, the scaled backward, gradient
clipping, the optimiser and schedule step) and the order of things in an epoch (:func:`fit`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from clipcore import checkpoint as ckpt_io
from clipcore import distributed
from clipcore.errors import UserError
from clipcore.methods import Task


class NonFiniteLoss(UserError, RuntimeError):
    pass


@dataclass
class Progress:
    """Where a run stands: optimiser steps done, epochs done, batches of the current epoch done, and the losses
    (the global batch's, on every rank) of the whole run and of the current epoch."""
    step: int = 0
    epoch: int = 0
    batch: int = 0
    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)


class Hooks(Protocol):
    """The run shell's side of :func:`fit` (every method is called on every rank)."""

    def batches(self, epoch: int, start: int) -> Iterator:
        """The epoch's batches from batch ``start`` on."""

    def stop(self, progress: Progress) -> bool:
        """Stop after this step (--max-steps reached, or a signal all ranks agree on)."""

    def log(self, progress: Progress, info: dict) -> None:
        """Record the last step's loss (``progress.losses[-1]``) and ``info``."""

    def save(self, progress: Progress) -> None:
        """Checkpoint at ``progress``."""

    def end_epoch(self, progress: Progress, epochs: int) -> None:
        """After epoch ``progress.epoch`` (1-based once done): evaluation and its line."""


@dataclass
class Optimisation:
    """One optimiser step of a Task's loss: ``runner`` is the (DDP-wrapped) :class:`clipcore.distributed.Runner`;
    accum_freq > 1 computes the full batch's gradient in chunks (GradCache, :func:`distributed.grad_cache_step`);
    grad_clip: max global gradient norm (0: off); checkpoint: the run's checkpoint file, which the non-finite-loss
    error names when it exists (a resumed run's included)."""
    task: Task
    runner: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable
    accum_freq: int = 1
    grad_clip: float = 0.0
    checkpoint: Path | None = None

    def backward(self, loss: Tensor, progress: Progress, batch: int) -> None:
        """NaN/inf guard (on the mean over ranks, so all ranks stop together), then the scaled backward."""
        value = distributed.mean_across(loss)
        if not torch.isfinite(value):
            last = self.checkpoint if self.checkpoint is not None and self.checkpoint.exists() else "none (none saved yet)"
            raise NonFiniteLoss(f"loss is {value.item()} at step {progress.step + 1} (epoch {progress.epoch}, batch "
                                f"{batch}); the last good checkpoint is {last}. Lower --lr, raise --warmup "
                                "or use --precision fp32.")
        ckpt_io.pause_for_test(f"step:{progress.step + 1}")
        self.scaler.scale(loss).backward()

    def step(self, batch, progress: Progress, index: int) -> tuple[Tensor, dict]:
        """Gradients of ``batch`` (the epoch's ``index``-th), clipped, applied; -> (this rank's loss, info)."""
        task, opt = self.task, self.opt
        opt.zero_grad(set_to_none=True)
        backward = lambda loss: self.backward(loss, progress, index)  # noqa: E731
        if self.accum_freq > 1:
            loss, info = distributed.grad_cache_step(self.runner, task.embed, task.loss_from_embeddings, batch,
                                                     self.accum_freq, self.autocast, backward)
        else:
            with self.autocast():
                loss, info = self.runner(task.step, batch)
            backward(loss)
        if self.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), self.grad_clip)
        self.scaler.step(opt); self.scaler.update(); self.sched.step()
        return loss, info


def fit(optimisation: Optimisation, progress: Progress, epochs: int, hooks: Hooks, *, log_every: int = 10,
        save_every: int = 0, show_progress: bool = True) -> bool:
    """Train from ``progress`` to the end of epoch ``epochs``, or until ``hooks.stop``; -> whether it stopped early.

    Logs at step 1, every ``log_every`` steps, at each epoch's end and at a stop; checkpoints every ``save_every``
    steps (0: never mid-epoch), at a stop inside an epoch, and at every epoch's end (then ``hooks.end_epoch``).
    An epoch whose batches end early (``task.finished`` then says why) ends the run as completed.
    ``progress`` is updated in place, so the shell sees how far a run got even when it raises."""
    task, p, stop = optimisation.task, progress, False
    steps_per_epoch = task.steps_per_epoch
    finished = task.finished or (lambda: False)      # the method's own end of training (early stopping)
    while p.epoch < epochs and not stop and not finished():
        task.model.train()
        p.epoch_losses = []
        bar = tqdm(hooks.batches(p.epoch, p.batch), desc=f"epoch {p.epoch + 1}/{epochs}", leave=False, file=sys.stderr,
                   total=steps_per_epoch - p.batch, disable=None if show_progress else True)
        for i, batch in enumerate(bar, start=p.batch):
            loss, info = optimisation.step(batch, p, i)
            p.step, p.batch = p.step + 1, i + 1
            p.losses.append(distributed.mean_across(loss).item())   # the global batch's loss on every rank
            p.epoch_losses.append(p.losses[-1])
            at_end = i + 1 == steps_per_epoch
            stop = hooks.stop(p)
            if p.step % log_every == 0 or p.step == 1 or at_end or stop:   # from step 1, and the last
                hooks.log(p, info)
                bar.set_postfix(loss=f"{p.losses[-1]:.3f}", **{k: f"{v:.3g}" for k, v in info.items()})
            if (save_every and p.step % save_every == 0) or (stop and not at_end):
                hooks.save(p)
            if stop or at_end:
                break
        else:
            p.batch = steps_per_epoch    # the loader ended: the epoch is done
        if p.batch == steps_per_epoch:
            p.epoch, p.batch = p.epoch + 1, 0
            hooks.save(p)
            hooks.end_epoch(p, epochs)
    return stop
