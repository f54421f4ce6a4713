"""GRAIN's training to a plateau: early stopping on the validation loss of a held-out split of the training data
(``--grain-val-size``, ``--grain-patience``; docs/methods.md, GRAIN §5).

The training loop (``clipcore.train``) knows no early stopping; GRAIN wraps its own loader instead. Every
``every`` optimiser steps (before the next batch is handed out, i.e. after that step's update) it computes the
model's own training objective on the held-out images (eval mode, no gradient, a fixed caption draw), keeps a copy
of the weights of the best check, and after ``patience`` checks without an improvement larger than ``min_delta``
it restores those weights and hands out no more batches. The loop then runs the remaining epochs empty (they save
the restored weights) and evaluates them. A run whose epochs end first keeps its last weights (``finish()`` records
their loss); ``state()`` says which happened:

    stopper = Plateau(model, val_loss, every=50, patience=4)
    loader = stopper.wrap(loader)                       # (epoch, start_batch) -> batches, as Task.loader
    stopper.state()  # {"plateau/reached": 1.0, "plateau/best_step": 350.0, "plateau/best_val_loss": 2.91, ...}

Under torchrun every rank computes the same validation loss on the same weights, so all ranks stop together. The
stopper's state (best loss, best weights, checks) is not in the checkpoint: a run continued with ``--resume``
counts its patience afresh from the resumed weights.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import torch


class Plateau:
    """Early stopping on a validation loss; see the module docstring.

    model: the weights to snapshot and restore; val_loss: () -> float, the held-out loss of the current weights;
    every: steps between checks (> 0); patience: checks without improvement before stopping (0: never stop, the
    loss is still tracked and the best step reported); min_delta: the improvement that counts (absolute, >= 0).
    """

    def __init__(self, model: torch.nn.Module, val_loss: Callable[[], float], every: int, patience: int,
                 min_delta: float = 0.0):
        if every < 1 or patience < 0 or min_delta < 0:
            raise ValueError(f"Plateau needs every >= 1, patience >= 0, min_delta >= 0; got {every}, {patience}, {min_delta}")
        self.model, self.val_loss, self.every, self.patience, self.min_delta = model, val_loss, every, patience, min_delta
        self.step, self.checked_at, self.bad, self.stopped = 0, -1, 0, False
        self.best, self.best_step, self.best_state = math.inf, 0, None
        self.history: list[tuple[int, float]] = []

    def _validate(self) -> float:
        self.checked_at = self.step
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                loss = float(self.val_loss())
        finally:
            self.model.train(was)
        self.history.append((self.step, loss))
        return loss

    def finish(self) -> None:
        """The last check of a run whose epochs ended first (the loop asks for no batch after its last step): the
        loss of the final weights is recorded, nothing is restored (they are the weights the run keeps)."""
        if not self.stopped and self.step != self.checked_at:
            loss = self._validate()
            if loss < self.best - self.min_delta:
                self.best, self.best_step = loss, self.step
            self.best = min(self.best, loss)

    def check(self) -> bool:
        """Validate the current weights (at ``self.step``); True when the patience has run out (weights restored)."""
        loss = self._validate()
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = loss, self.step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.best = min(self.best, loss)
        self.bad += 1
        if self.patience and self.bad >= self.patience:
            self.model.load_state_dict(self.best_state)
            self.stopped = True
        return self.stopped

    def wrap(self, loader: Callable[[int, int], Iterable[Any]]) -> Callable[[int, int], Iterator[Any]]:
        """A Task loader that checks every ``every`` steps and ends (now and in every later epoch) once stopped."""
        def batches(epoch: int, start: int) -> Iterator[Any]:
            for batch in ([] if self.stopped else loader(epoch, start)):
                # asked for the next batch: the loop has made the update of every batch handed out so far
                if self.step % self.every == 0 and self.step != self.checked_at and self.step > 0 and self.check():
                    return
                self.step += 1
                yield batch
        return batches

    def state(self) -> dict[str, float]:
        """What to report with the held-out metrics: whether the plateau stopped the run, the step of the best check
        (the weights in use when it did), its loss, the steps trained and the number of checks."""
        return {"plateau/reached": float(self.stopped), "plateau/best_step": float(self.best_step),
                "plateau/best_val_loss": self.best, "plateau/steps": float(self.step),
                "plateau/checks": float(len(self.history))}
