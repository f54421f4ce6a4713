"""Paper methods as plug-ins of the one training loop (``clipcore.train``).

A method is one module and its entry in :data:`METHODS`. The module defines

- ``Config``: a dataclass of its options (defaults visible in one place) that checks them in ``__post_init__``, so
  a bad option fails before any checkpoint, memory or pool is read;
- ``build(cfg: TrainConfig, mcfg: Config, device) -> Task``: what the training loop runs;
- ``load(ckpt: dict, device) -> (model, tokenizer)``: the model of a checkpoint it wrote (``ckpt["method"]`` names
  the method), which :func:`load_model` returns; :mod:`clipcore.checkpoint` itself knows no method.

and may define, for ``clipcore.train`` and ``clipcore.eval`` (which name no method either):

- ``DEFAULT_DATA``: the name of the data it trains on without ``--train-data`` (run folders, messages;
  default: the embedded animal-mnist);
- ``eval_held_out(model, tokenizer, ckpt, data, preprocess, device) -> dict | None``: its own held-out metrics of
  a checkpoint (with a "primary" key), None to use the standard evaluation;
- ``eval_references(model) -> {prefix: model}``: further models scored on the same data, reported as
  ``prefix/metric`` (RECO: the frozen base it refines).

The loop owns the optimiser, schedule, precision, checkpoints, logging and the NaN guard; the method owns its
model, data, batch format, loss and evaluation:

    python -m clipcore.train --method reco --init runs/base/checkpoints/latest.pt --reco-k 16
    train(TrainConfig(method="reco", init="base.pt", options={"k": 16}))

Every ``Config`` field ``x`` of method ``m`` becomes the CLI flag ``--m-x`` (bools: ``--m-x`` / ``--no-m-x``).
``clip`` (plain CLIP pretraining, :func:`clipcore.train.clip_task`) is the default method.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from clipcore import checkpoint as ckpt_io
from clipcore.errors import ConfigError
from clipcore.models import CLIP, config_from_dict

# name -> module path; each module defines Config, build(cfg, mcfg, device) -> Task and load(ckpt, device)
METHODS = {
    "reco": "clipcore.methods.reco",
    "grain": "clipcore.methods.grain.method",
    "arf": "clipcore.methods.arf",
}


@dataclass
class Task:
    """What a method hands the training loop.

    model           every weight the method owns; parameters with requires_grad are optimised (frozen towers
                    stay frozen), ``state_dict()`` goes into the checkpoint under "model"
    steps_per_epoch optimiser steps in one epoch
    loader          (epoch, start_batch) -> the batches of that epoch from ``start_batch`` on, deterministic in
                    (seed, epoch) so that resume continues exactly
    step            batch -> (scalar loss, {name: float} to log); runs the forward pass under the loop's autocast
    evaluate        split name ("val" or "test") -> {metric: float}, "acc1" first when there is one; None: no eval
    eval_splits     which of "val"/"test" exist (val after each epoch, test at the end)
    meta            extra checkpoint entries, e.g. {"model_config": ..., "tokenizer": ..., "preprocess": ...} so the
                    result loads with :func:`load_model` and reads images as it was trained
    finished        () -> bool, optional: the method ends training itself (GRAIN's early stopping, whose loader
                    then yields no more batches); checked before every epoch, True ends the run as completed

    Optional, for exact gradient accumulation (``--accum-freq K``, GradCache) and the global-batch loss under
    torchrun (``step`` is then ``loss_from_embeddings(*embed(batch))``):
    embed           batch -> (image (B, D), text (B, D), logit_scale, labels (B,) or None): the forward pass only;
                    a batch is a tuple of tensors with a leading batch dimension (split into K chunks)
    loss_from_embeddings  (image, text, logit_scale, labels) -> (loss, info) of the whole batch, holding no
                    trainable parameters of its own; under torchrun it gathers the other ranks' rows
                    (:func:`clipcore.losses.make_loss`) so that it is the global batch's loss

    Under torchrun the loop runs ``step`` inside DistributedDataParallel's forward (gradients are averaged over
    ranks); ``loader`` should then yield this rank's slice of each global batch (``make_loader(..., rank=,
    world_size=)`` with ``clipcore.distributed.world_rank()``); a loader that ignores the ranks gives every rank
    the whole batch (exact, but no faster).
    """
    model: torch.nn.Module
    steps_per_epoch: int
    loader: Callable[[int, int], Iterable[Any]]
    step: Callable[[Any], tuple[Tensor, dict[str, float]]]
    evaluate: Callable[[str], dict[str, float]] | None = None
    eval_splits: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    describe: str = ""        # printed at the start: data sizes, the method's settings
    held_out: str = "test split"  # what "test" evaluates, for the final line
    embed: Callable[[Any], tuple[Tensor, Tensor, Tensor, Tensor | None]] | None = None
    loss_from_embeddings: Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple[Tensor, dict[str, float]]] | None = None
    finished: Callable[[], bool] | None = None


def get_method(name: str):
    """The method module for ``name`` (a ConfigError with the known names otherwise)."""
    if name not in METHODS:
        raise ConfigError(f"unknown --method {name!r}; known: clip, {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name])


def method_module(name: str):
    """The module of method ``name``; None for plain CLIP (``clip``)."""
    return None if name == "clip" else get_method(name)


def available() -> dict[str, Any]:
    """name -> module for every method (the CLI builds its per-method flags from these)."""
    return {name: get_method(name) for name in METHODS}


def method_config(module, options: dict):
    """Build the method's Config from an options dict, naming unknown keys."""
    names = {f.name for f in dataclasses.fields(module.Config)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {module.__name__}; known: {sorted(names)}")
    return module.Config(**options)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_init(cfg, device, why: str) -> tuple[torch.nn.Module, object, dict, dict]:
    """The pretrained model a method starts from (``--init``) -> (model, tokenizer, checkpoint, data_kw), data_kw
    the ``clipcore.data.load_dataset`` keywords that read images as that model was trained on them (its
    checkpoint's preprocessing record, :func:`clipcore.checkpoint.preprocess_of`; any encoder, open_clip's
    included). ``why``: the error when --init is missing."""
    if not cfg.init:
        raise ConfigError(why)
    model, tokenizer, ckpt = load_model(cfg.init, device)
    return model, tokenizer, ckpt, dict(preprocess=ckpt_io.preprocess_of(ckpt, model), seed=cfg.seed,
                                        skip_bad=cfg.skip_bad)


class HeldOut:
    """The held-out data of a run, one rule for plain CLIP and every method: ``--val-data`` (or the embedded data's
    val split when training on the embedded default) is scored after every epoch; the embedded test split, when
    training on the default, at the end (otherwise the val data stand in for it).

    splits: {"val": dataset, "test": dataset}, the ones that exist. ``data_kw``: ``clipcore.data.load_dataset``
    keywords (the preprocessing the model was trained with)."""

    def __init__(self, cfg, data_kw: dict):
        from clipcore.data import load_dataset
        self.splits = {}
        if cfg.val_data or not cfg.train_data:
            self.splits["val"] = load_dataset(cfg.val_data, "val", **data_kw)
        if not cfg.train_data:
            self.splits["test"] = load_dataset(None, "test", **data_kw)

    def __bool__(self) -> bool:
        return bool(self.splits)

    def dataset(self, split: str):
        """The data scored for ``split``: "val" -> the val data; "test" -> the test split, else the val data."""
        return self.splits.get("val") if split == "val" else self.splits.get("test", self.splits.get("val"))

    def eval_splits(self, final: bool = False) -> tuple[str, ...]:
        """The Task's ``eval_splits``; final: a method that scores something extra at the end (the val data stand
        in for a missing test split)."""
        return tuple(self.splits) + (("test",) if final and self.splits and "test" not in self.splits else ())

    @property
    def describe(self) -> str:
        """The held-out data's name in the run's summary."""
        return f"test split, {len(self.splits['test'])} images" if "test" in self.splits else "val data"


def base_meta(ckpt: dict, data_kw: dict) -> dict:
    """Checkpoint entries of a method built on ``--init`` that rebuild its base model
    (:func:`model_from_meta`) and read images as it did: model config or open_clip name, tokenizer, preprocessing."""
    return {**{k: ckpt[k] for k in MODEL_KEYS if k in ckpt}, "preprocess": data_kw["preprocess"].to_dict()}


# ----------------------------------------------------------------------------- loading what a method wrote
MODEL_KEYS = ("model_config", "open_clip_model", "tokenizer")   # the entries model_from_meta reads


def model_from_meta(meta: dict) -> tuple[torch.nn.Module, object]:
    """An untrained model and its tokenizer from a checkpoint's model entries (:data:`MODEL_KEYS`):
    ``open_clip_model`` (an :class:`clipcore.adapters.OpenCLIP`) or ``model_config`` (a clipcore CLIP) with
    ``tokenizer``."""
    if meta.get("open_clip_model"):
        from clipcore.adapters import OpenCLIP
        model = OpenCLIP(meta["open_clip_model"])
        return model, model.tokenizer
    cfg = config_from_dict(meta["model_config"])
    return CLIP(cfg), ckpt_io.tokenizer_for(cfg, meta.get("tokenizer"))


def load_clip(ckpt: dict, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, object]:
    """The loader of plain CLIP pretraining (``--method clip``): a clipcore CLIP or an OpenCLIP
    (``--model open_clip:NAME``) with the checkpoint's weights, and its tokenizer."""
    model, tokenizer = model_from_meta(ckpt)
    model.load_state_dict(ckpt["model"])
    return model, tokenizer


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, object, dict]:
    """Checkpoint -> (model in eval mode on ``device``, tokenizer, the checkpoint dict), read and verified by
    :func:`clipcore.checkpoint.load` and built by the ``load`` of the method that wrote it (``ckpt["method"]``;
    none: plain CLIP). Every model it returns has ``encode_image`` / ``encode_text``: GRAIN's global image-query
    embedding, RECO's refined embeddings with the training memory, ARF's finetuned CLIP."""
    ckpt = ckpt_io.load(path)
    name = ckpt.get("method") or "clip"
    if name != "clip" and name not in METHODS:
        raise ckpt_io.CheckpointError(f"{path} was written by --method {name!r}, which this clipcore does not know "
                                      f"(known: clip, {', '.join(METHODS)})")
    model, tokenizer = (load_clip if name == "clip" else get_method(name).load)(ckpt, device)
    return model.to(device).eval(), tokenizer, ckpt
