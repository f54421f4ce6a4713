"""Train a CLIP model: data -> model -> loss -> optimiser -> evaluation -> checkpoint, in one loop.

    python -m clipcore.train                                   # tiny preset on the embedded animal-mnist
    python -m clipcore.train --train-data pairs.csv --val-data val.csv --model small --epochs 30
    python -m clipcore.train --train-data images/ --loss reg --reg-lambda 0.1
    python -m clipcore.train --resume latest                   # continue the run named by the same flags
    python -m clipcore.train --method reco --init logs/<run>/checkpoints/latest.pt   # a paper method (clipcore.methods)
    torchrun --nproc_per_node 4 -m clipcore.train --model small --batch-size 1024     # DDP (clipcore.distributed)
    python -m clipcore.train --train-data 'shards/{00000..00099}.tar' --dataset-type webdataset  # clipcore.shards

Every default lives in :class:`TrainConfig` (a method's own options in its ``Config``); the CLI only
overrides them. A method (``--method``, :mod:`clipcore.methods`) supplies model, data, batch format, loss and
evaluation as a :class:`~clipcore.methods.Task`; this loop does the rest for all of them. Outputs go to
``{logs}/{name}/``: ``metrics.jsonl``, ``loss.png``, ``checkpoints/latest.pt`` and its predecessor
``latest.prev.pt`` (each with a ``.sha256``; clipcore.checkpoint), and TensorBoard events when tensorboard is
installed. The folder is locked while a run uses it; SIGTERM / SIGUSR1 checkpoint and stop at the next step
(README: Reliability).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from clipcore import checkpoint as ckpt_io
from clipcore import distributed
from clipcore.data import DataError, load_dataset, make_loader
from clipcore.errors import ConfigError, UserError, cli
from clipcore.flags import Parser, add_config_flags
from clipcore.evaluate import evaluate_model
from clipcore.images import PreprocessCfg
from clipcore.losses import LOSSES, REG_PAIRS, make_loss
from clipcore.methods import (Task, available, get_method, load_model, method_config, method_module,
                              trainable_parameters)
from clipcore.models import CLIP, get_config
from clipcore.runlog import Metrics, StopSignals, claim, elapsed_bar, summary, summary_writer


@dataclass
class TrainConfig:
    # data
    train_data: str | None = None    # None: embedded animal-mnist (train split); a .csv/.tsv; an image folder; shards
    dataset_type: Literal["auto", "csv", "folder", "webdataset"] = "auto"  # auto: webdataset when the name has .tar
    val_data: str | None = None      # CSV/TSV or folder scored after every epoch; default: the embedded data's val split when training on it, else none
    csv_img_key: str | None = None   # CSV column of the image paths (open_clip's flag); default: filepath
    csv_caption_key: str | None = None  # CSV column of the captions (open_clip's flag); default: caption, else title
    csv_separator: str | None = None  # CSV/TSV separator (open_clip's flag); default: a tab for .tsv, else a comma
    skip_bad: bool = False           # skip unreadable rows / empty captions instead of stopping (reports the count)
    workers: int = 0                 # DataLoader worker processes (file-backed data benefits; in-memory needs none)
    # method, model and loss
    method: str = "clip"             # clip (pretraining) | a paper method of clipcore.methods (reco, grain, arf)
    options: dict = field(default_factory=dict)  # the method's options (its Config fields; CLI --<method>-<field>)
    init: str | None = None          # start from this checkpoint's model (a method's frozen base or starting point)
    model: str = "tiny"              # a preset (clipcore.models.PRESETS) or open_clip:NAME (clipcore.adapters)
    pretrained: str | None = None    # weights for --model from disk: open_clip .pt/.bin or clipcore .safetensors
    loss: str = "multipos"           # multipos = clip when no two pairs share a label/caption
    loss_impl: Literal["fused", "naive"] = "fused"  # fused: tiled, never the B x B logits (clipcore.fused) | naive: materialised
    loss_kernel: Literal["torch", "triton"] = "torch"  # fused loss: torch tiles (inductor on CUDA) | triton (clipcore.fused_triton, GPU-unmeasured)
    reg_lambda: float = 0.1          # reg loss: weight of the pair penalty (README: the theory paper's claims)
    reg_pairs: str = "pos"           # reg loss: which pairs it penalises (pos: the paper's; the rest are ablations)
    local_loss: bool = True          # torchrun: local rows x all columns (open_clip --local-loss); off: full N x N per rank
    gather_with_grad: bool = True    # torchrun: gather embeddings with gradient (exact); off: open_clip's default
    # optimisation: tuned for tiny on 2 CPU cores (README: accuracy and time of the default run)
    batch_size: int = 256            # the global batch (all ranks together; open_clip's is per GPU)
    accum_freq: int = 1              # split each batch into K chunks, exact full-batch gradient (GradCache)
    grad_checkpointing: bool = False  # recompute transformer blocks in the backward (less memory)
    epochs: int | None = None        # passes over the training data; default: 8, or on small data as many as make 100 steps
    lr: float = 2e-3                 # peak learning rate (AdamW, betas 0.9/0.98, eps 1e-6)
    wd: float = 0.1                  # AdamW decay on matrices only: not on biases, norms, logit scale
    warmup: int | None = None        # linear warm-up steps, then cosine to zero; default: min(100, 10 % of the run's steps)
    grad_clip: float = 1.0           # max global grad norm (0: off)
    precision: Literal["fp32", "bf16", "fp16", "amp"] = "fp32"  # autocast dtype (fp16 adds a GradScaler); amp: bf16 on CUDA, fp32 on CPU
    compile: bool = False            # torch.compile the model
    seed: int = 0                    # seeds the model's initialisation, the data order and the captions drawn
    device: str = "auto"             # auto (cuda when available) | cpu | cuda | cuda:N
    # bookkeeping
    logs: str = "logs"               # folder of run folders (under torchrun spell it --logs-dir: torchrun claims --logs)
    name: str | None = None          # run folder under --logs; default from model, data, loss and seed
    resume: str | None = None        # "latest" or a checkpoint path; the run continues in that checkpoint's folder
    resume_override: bool = False    # resume although settings differ from the checkpoint's (checkpoint.RESUME_KEYS)
    save_every: int = 0              # also checkpoint every N steps (0: at epoch ends only)
    max_steps: int = 0               # stop after this global step, checkpointing (0: run all epochs)
    log_every: int = 10              # log the loss every N steps (and at step 1 and each epoch's end)
    report_to: Literal["none", "tensorboard"] = "none"  # also log to TensorBoard: <run>/tensorboard, tags train/... and val/...


# smallest allowed value of each numeric flag (checked by check_config, so by the CLI and by train())
MINIMUM = dict(batch_size=1, accum_freq=1, epochs=1, log_every=1, workers=0, warmup=0, save_every=0, max_steps=0,
               lr=0.0, wd=0.0, grad_clip=0.0, reg_lambda=0.0)


class NonFiniteLoss(UserError, RuntimeError):
    pass


def check_config(cfg: TrainConfig) -> None:
    """ConfigError naming the first flag below its minimum (:data:`MINIMUM`), or a --device that is not there."""
    for name, least in MINIMUM.items():
        value = getattr(cfg, name)
        if value is not None and not value >= least:   # also catches NaN; None: a default decided later
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least {least}")
    if cfg.report_to == "tensorboard":
        summary_writer()      # fails now, not after the data are loaded
    if cfg.device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = cfg.device.partition(":")[2]
        if count == 0:
            raise ConfigError(f"--device {cfg.device}: this machine has no usable CUDA device (torch "
                              f"{torch.__version__} sees none); use --device cpu, or --device auto to take a GPU when "
                              "there is one")
        if index and not (index.isdigit() and int(index) < count):
            raise ConfigError(f"--device {cfg.device}: this machine has CUDA devices 0..{count - 1}")


DEFAULT_EPOCHS, MIN_STEPS = 8, 100    # the default run's epochs; the fewest optimiser steps a default run takes


def resolve_epochs(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, str]:
    """(epochs, how they were chosen): --epochs when given, else 8 -- or, on data so small that 8 epochs are fewer
    than 100 optimiser steps (1,437 pairs at batch 256: 40 steps, 79 % zero-shot on digits), as many as make 100."""
    if cfg.epochs is not None:
        return cfg.epochs, "--epochs"
    if steps_per_epoch * DEFAULT_EPOCHS >= MIN_STEPS:
        return DEFAULT_EPOCHS, f"default: {DEFAULT_EPOCHS}"
    return math.ceil(MIN_STEPS / steps_per_epoch), f"default: {DEFAULT_EPOCHS}, raised to make {MIN_STEPS} steps"


def resolve_warmup(cfg: TrainConfig, total: int) -> tuple[int, str]:
    """(warm-up steps, how they were chosen): --warmup when given, else min(100, 10 % of the run's ``total`` steps)
    -- a fixed 100 would never end on a small data set (5 steps x 8 epochs)."""
    if cfg.warmup is not None:
        return cfg.warmup, "--warmup"
    return min(100, round(0.1 * total)), f"default: min(100, 10 % of {total})"


def resolve_precision(precision: str, device: torch.device) -> str:
    """--precision amp (open_clip's name) -> bf16 autocast on CUDA, fp32 elsewhere (CPU autocast is slower than
    fp32 on most CPUs, and open_clip's amp does nothing there either); other values as given."""
    if precision != "amp":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


# ----------------------------------------------------------------------------- factories
def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """Weight decay on weight matrices only (open_clip's rule): not biases, norms, gains or logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int):
    """Step -> lr multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def resolve_device(device: str) -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))


def run_dir(cfg: TrainConfig) -> Path:
    """The run folder. ``--resume PATH`` of ``<run>/checkpoints/<file>``: that run; ``--resume latest``: the folder
    named by the flags. Otherwise an existing folder is never reused: a suffix is added."""
    if cfg.resume and cfg.resume != "latest" and Path(cfg.resume).parent.name == "checkpoints":
        return Path(cfg.resume).parent.parent
    data = data_name(cfg.train_data) if cfg.train_data else getattr(method_module(cfg.method), "DEFAULT_DATA", "animal-mnist")
    what = f"{cfg.model}_{data}_{cfg.loss}" if cfg.method == "clip" else f"{cfg.method}_{data}"
    base = Path(cfg.logs) / (cfg.name or f"{what}_s{cfg.seed}")
    if cfg.resume == "latest":
        if not base.is_dir():
            raise ckpt_io.CheckpointError(f"--resume latest: there is no run folder {base} (its name comes from --logs, "
                                          "--name, --model, --train-data, --loss and --seed: pass the same flags, or "
                                          "--resume PATH)")
        return base
    if not base.exists():
        return base
    i = 1
    while base.with_name(f"{base.name}-{i}").exists():
        i += 1
    return base.with_name(f"{base.name}-{i}")


def data_name(source: str) -> str:
    """The data's part of a run-folder name: the file or folder stem, without shard brace patterns
    ('shards/tiny_{00000..00003}.tar' -> 'tiny'; 'shards/{0..9}.tar' -> 'shards')."""
    path = Path(source.split("::")[0])
    name = re.sub(r"\.(tar|csv|tsv|jsonl|json)$", "", path.name)
    stem = re.sub(r"[_\-.]*\{[^}]*\}[_\-.]*", "_", name).strip("_-.")
    return stem or path.parent.name or "data"


# ----------------------------------------------------------------------------- the CLIP task
def build_model(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, object, dict]:
    """(model, tokenizer, checkpoint meta) from --init, or --model (a preset or open_clip:NAME) + --pretrained."""
    if cfg.init:
        model, tokenizer, ckpt = load_model(cfg.init, device)
        meta = {k: ckpt[k] for k in ("model_config", "open_clip_model") if k in ckpt}
        meta["preprocess"] = ckpt_io.preprocess_of(ckpt, model).to_dict()   # its images, read as in its training
    elif cfg.model.startswith("open_clip:"):
        from clipcore.adapters import OpenCLIP
        model = OpenCLIP(cfg.model.split(":", 1)[1]).to(device)
        tokenizer, meta = model.tokenizer, {"open_clip_model": model.name}
    else:
        model_cfg = get_config(cfg.model)
        model, tokenizer = CLIP(model_cfg).to(device), ckpt_io.tokenizer_for(model_cfg)
        meta = {"model_config": dataclasses.asdict(model_cfg)}
    if cfg.pretrained:
        from clipcore.adapters import load_pretrained
        load_pretrained(model, cfg.pretrained)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    meta["tokenizer"] = ckpt_io.tokenizer_record(model, tokenizer)
    return model, tokenizer, meta


def dataset_type(cfg: TrainConfig) -> str:
    if cfg.dataset_type != "auto":
        return cfg.dataset_type
    return "webdataset" if cfg.train_data and ".tar" in cfg.train_data else "files"


def csv_keys(cfg: TrainConfig) -> dict:
    """load_dataset keywords of open_clip's --csv-img-key / --csv-caption-key / --csv-separator ('\\t', 'tab' and
    'comma' are accepted spellings)."""
    sep = cfg.csv_separator and {"\\t": "\t", "tab": "\t", "comma": ","}.get(cfg.csv_separator, cfg.csv_separator)
    keys = (("image_key", cfg.csv_img_key), ("caption_key", cfg.csv_caption_key), ("sep", sep))
    return {k: v for k, v in keys if v}


def clip_task(cfg: TrainConfig, device: torch.device) -> Task:
    """Plain CLIP training (``--method clip``): image-caption batches and the contrastive loss of ``--loss``."""
    model, tokenizer, meta = build_model(cfg, device)
    image_size, in_channels = model.input_size()
    world, rank = distributed.world_rank()
    data_kw = dict(image_size=image_size, in_channels=in_channels, seed=cfg.seed, skip_bad=cfg.skip_bad,
                   preprocess=PreprocessCfg.from_dict(meta["preprocess"]) if "preprocess" in meta else None)
    data_kw.update(csv_keys(cfg))
    if dataset_type(cfg) == "webdataset":
        from clipcore.shards import ShardSource
        train_src = ShardSource(cfg.train_data, image_size=image_size, in_channels=in_channels, seed=cfg.seed,
                                preprocess=data_kw["preprocess"])
        steps = train_src.steps_per_epoch(cfg.batch_size, world, cfg.workers)
        describe = f"{train_src.num_samples} train pairs in {len(train_src.shards)} webdataset shards"
        loader = lambda epoch, start: train_src.loader(tokenizer, cfg.batch_size, epoch=epoch, start_batch=start,
                                                       rank=rank, world_size=world, num_workers=cfg.workers)
        data_kw["preprocess"] = train_src.preprocess_cfg       # held-out data read as the training data
    else:
        if cfg.dataset_type not in ("auto", "csv", "folder"):
            raise DataError(f"--dataset-type {cfg.dataset_type!r}: use auto, csv, folder or webdataset")
        train_ds = load_dataset(cfg.train_data, "train", **data_kw)
        steps, describe = len(train_ds) // cfg.batch_size, f"{len(train_ds)} train pairs"
        data_kw["preprocess"] = train_ds.preprocess_cfg        # held-out data read as the training data
        loader = lambda epoch, start: make_loader(train_ds, tokenizer, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                                  start_batch=start, num_workers=cfg.workers, rank=rank, world_size=world)
    meta["preprocess"] = data_kw["preprocess"].to_dict()       # the checkpoint carries it (clipcore.images)
    splits = {}
    if cfg.val_data or not cfg.train_data:
        splits["val"] = load_dataset(cfg.val_data, "val", **data_kw)
    if not cfg.train_data:
        splits["test"] = load_dataset(None, "test", **data_kw)
    full = make_loss(cfg.loss, reg_lambda=cfg.reg_lambda, reg_pairs=cfg.reg_pairs, impl=cfg.loss_impl,
                     kernel=cfg.loss_kernel)
    loss_fn = distributed.gathered_loss(full, cfg.loss, impl=cfg.loss_impl, local_loss=cfg.local_loss,
                                        gather_with_grad=cfg.gather_with_grad, reg_lambda=cfg.reg_lambda,
                                        reg_pairs=cfg.reg_pairs, kernel=cfg.loss_kernel)
    fwd = torch.compile(model) if cfg.compile else model

    def embed(batch):
        images, tokens, labels = (t.to(device) for t in batch)
        img, txt, scale = fwd(images, tokens)
        return img.float(), txt.float(), scale, labels

    def loss_from_embeddings(img, txt, scale, labels):
        return loss_fn(img, txt, scale, labels=labels), {"logit_scale": scale.item()}

    def evaluate(split: str) -> dict:
        ds = splits.get(split) if split == "val" else splits.get("test", splits.get("val"))
        return evaluate_model(model, tokenizer, ds, device=device, retrieval=split == "test")

    return Task(
        model=model, steps_per_epoch=steps, loader=loader,
        step=lambda batch: loss_from_embeddings(*embed(batch)), embed=embed, loss_from_embeddings=loss_from_embeddings,
        evaluate=evaluate if splits else None,
        eval_splits=tuple(splits), meta=meta, describe=describe,
        held_out=f"test split, {len(splits['test'])} images" if "test" in splits else "val data",
    )


def build_task(cfg: TrainConfig, device: torch.device) -> Task:
    if cfg.method == "clip":
        if cfg.options:
            raise ConfigError(f"--method clip takes no method options; got {sorted(cfg.options)}")
        return clip_task(cfg, device)
    module = get_method(cfg.method)
    return module.build(cfg, method_config(module, cfg.options), device)


# ----------------------------------------------------------------------------- loop
def train(cfg: TrainConfig, task: Task | None = None) -> dict:
    """Run training; return the final held-out metrics (and ``run_dir``, ``losses``, ``stopped_by`` when a signal
    stopped it). Under torchrun every rank runs this; rank 0 alone locks the run folder, logs, evaluates and
    writes checkpoints (clipcore.distributed)."""
    check_config(cfg)
    dd = distributed.init(cfg.device)
    out = Path(distributed.broadcast(str(run_dir(cfg))))  # chosen once: rank 0 may create it before others look
    with claim(out, dd.main), StopSignals() as signals:
        return _train(cfg, task, dd, out, signals)


def _train(cfg: TrainConfig, task: Task | None, dd, out: Path, signals: StopSignals) -> dict:
    device, main = dd.device, dd.main
    random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)
    task = task or build_task(cfg, device)   # a Task built in code (experiments, notebooks) skips the factory
    model, steps_per_epoch = task.model, task.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the training set ({task.describe}); lower it")
    if cfg.accum_freq > 1:
        if task.embed is None or task.loss_from_embeddings is None:
            raise ConfigError(f"--accum-freq {cfg.accum_freq}: --method {cfg.method} does not provide embed and "
                             "loss_from_embeddings (clipcore.methods.Task), which exact accumulation needs; use --accum-freq 1")
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(f"--accum-freq {cfg.accum_freq}: the model has batch norm, whose statistics depend on the "
                             "chunk, so accumulation would not equal the full batch; use a model without it "
                             "(e.g. --model tiny-vit) or --accum-freq 1")
    runner = distributed.wrap(model, dd)
    epochs, epochs_why = resolve_epochs(cfg, steps_per_epoch)
    total = steps_per_epoch * epochs
    warmup, warmup_why = resolve_warmup(cfg, total)
    if warmup >= total and main:            # the lr would never reach --lr, and the cosine would never start
        warnings.warn(f"--warmup {warmup} >= the run's {total} steps ({epochs} epochs x {steps_per_epoch}): "
                      f"the learning rate never reaches --lr {cfg.lr:g}; pass a smaller --warmup", stacklevel=2)
    # fused=True: one kernel over all parameters (3x faster than the per-tensor default on CPU, measured)
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total))
    precision = resolve_precision(cfg.precision, device)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    ckpt_path = out / "checkpoints" / "latest.pt"
    step = epoch = start_batch = 0
    if cfg.resume:  # every rank reads the checkpoint (shared filesystem), so optimiser states agree
        state = ckpt_io.load(ckpt_path if cfg.resume == "latest" else cfg.resume, fallback=True)
        ckpt_io.restore(state, cfg, dd.world, model, opt, sched, scaler, streamed=dataset_type(cfg) == "webdataset")
        step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
        if main:
            print(f"resumed from {state['loaded_from']} at step {step} "
                  + (f"(epoch {epoch + 1}, batch {start_batch})" if epoch < epochs else "(all epochs done)"))
    resumed_at = step if cfg.resume else None
    log = Metrics(out, resume_step=resumed_at, tensorboard=cfg.report_to == "tensorboard") if main else None
    saved_at, pos = step, start_batch    # the step of the last checkpoint; the batches of this epoch done

    def save(epoch: int, batch: int) -> None:
        nonlocal saved_at
        if main:
            ckpt_io.save_atomic({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": ckpt_io.rng_state(), "step": step, "epoch": epoch, "batch": batch,
                "world_size": dd.world, "method": cfg.method, "train_config": dataclasses.asdict(cfg), **task.meta,
            }, ckpt_path, keep_previous=True)
        saved_at = step

    def batches(epoch: int, start: int):
        """The epoch's batches; a data error (UserError) from the loader first checkpoints the progress."""
        try:
            yield from signals.shield(task.loader(epoch, start))   # workers ignore SIGTERM / SIGUSR1
        except UserError as e:
            if step > saved_at:
                save(epoch, pos)
            msg = str(e)     # from a DataLoader worker: "Caught ... Original Traceback ...", the message last
            msg = msg.rstrip().rsplit(f"{type(e).__name__}: ", 1)[-1] if "\nOriginal Traceback" in msg else msg
            e.args = (f"{msg} [stopped at step {step}" + (f"; progress is saved in {ckpt_path}: fix the data (or "
                      "pass --skip-bad) and continue with --resume latest, or --resume <that path>]" if step else "]"),)
            # without the loader's frames the DataLoader iterator is deleted now and shuts its workers down
            # cleanly, instead of multiprocessing killing them at exit (and torch reporting that as an error)
            raise e.with_traceback(None)

    def backward(loss: Tensor) -> None:
        """NaN/inf guard (on the mean over ranks, so all ranks stop together), then the scaled backward."""
        value = distributed.mean_across(loss)
        if not torch.isfinite(value):
            raise NonFiniteLoss(f"loss is {value.item()} at step {step + 1} (epoch {epoch}, batch {i}); "
                                f"the last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none (none saved yet)'}. "
                                "Lower --lr, raise --warmup or use --precision fp32.")
        ckpt_io.pause_for_test(f"step:{step + 1}")
        scaler.scale(loss).backward()

    if main:
        print(f"run {out} [{cfg.method}]: {task.describe}; {trainable_parameters(model):,} trainable parameters, "
              f"{steps_per_epoch} steps/epoch x {epochs} epochs"
              + (f" ({epochs_why})" if cfg.epochs is None else "") + f", batch {cfg.batch_size} (global), lr {cfg.lr:g}, "
              f"warm-up {warmup} steps ({warmup_why}), precision {precision}"
              + (f" (--precision {cfg.precision})" if precision != cfg.precision else "") + f", device {device}"
              + (f", {dd.world} processes" if dd.world > 1 else ""))
    t0, losses, epoch_losses, stop, held_out, how = time.time(), [], [], False, None, "error"
    try:
        while epoch < epochs and not stop:
            model.train()
            epoch_losses = []
            bar = tqdm(batches(epoch, start_batch), desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr,
                       total=steps_per_epoch - start_batch, disable=None if main else True)
            for i, batch in enumerate(bar, start=start_batch):
                opt.zero_grad(set_to_none=True)
                if cfg.accum_freq > 1:
                    loss, info = distributed.grad_cache_step(runner, task.embed, task.loss_from_embeddings, batch,
                                                             cfg.accum_freq, autocast, backward)
                else:
                    with autocast():
                        loss, info = runner(task.step, batch)
                    backward(loss)
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt); scaler.update(); sched.step()
                step, pos = step + 1, i + 1
                losses.append(distributed.mean_across(loss).item())  # the global batch's loss on every rank
                epoch_losses.append(losses[-1])
                at_end = i + 1 == steps_per_epoch
                stop = bool(cfg.max_steps) and step >= cfg.max_steps or signals.agreed(dd.world, device) is not None
                if main and (step % cfg.log_every == 0 or step == 1 or at_end or stop):   # from step 1, and the last
                    log.write({"step": step, "epoch": epoch + 1, "loss": losses[-1], "lr": sched.get_last_lr()[0],
                               **info, "time": time.time() - t0})
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", **{k: f"{v:.3g}" for k, v in info.items()})
                if (cfg.save_every and step % cfg.save_every == 0) or (stop and not at_end):
                    save(epoch, i + 1)
                if stop or at_end:
                    break
            else:
                i = steps_per_epoch - 1
            if i + 1 == steps_per_epoch:
                epoch, start_batch, pos = epoch + 1, 0, 0
                save(epoch, 0)
                line = f"epoch {epoch}/{epochs}: mean loss {np.mean(epoch_losses):.3f} over {len(epoch_losses)} steps"
                if main and "val" in task.eval_splits:
                    with elapsed_bar(f"epoch {epoch}: evaluating the val data"):
                        held_out = task.evaluate("val")
                    log.write({"step": step, "epoch": epoch, "time": time.time() - t0,
                               **{f"val/{k}": v for k, v in held_out.items()}})
                    line += "  val " + "  ".join(f"{k} {v:.3f}" for k, v in held_out.items())
                if main:
                    print(line + f"  [{time.time() - t0:.0f} s]")
        how = ("signal" if signals.signum is not None else "max_steps") if stop else "completed"
    finally:
        if main and how == "error":     # the error itself follows (one line for a UserError, else its traceback)
            summary(out, ckpt_path, step, epoch, epochs, cfg.max_steps, losses, epoch_losses,
                    resumed_at, how, None, "", time.time() - t0)
            log.close()

    result = {"run_dir": str(out), "steps": step, "seconds": time.time() - t0, "losses": losses, "stopped": how}
    if how == "signal":
        result["stopped_by"] = signals.signum
    if main and "test" in task.eval_splits and how == "completed":
        with elapsed_bar(f"evaluating ({task.held_out})"):
            held_out = task.evaluate("test")
        log.write({"step": step, "time": time.time() - t0, **{f"test/{k}": v for k, v in held_out.items()}})
    if how == "completed" and held_out is not None:
        result.update(held_out)
    if main:
        summary(out, ckpt_path, step, epoch, epochs, cfg.max_steps, losses, epoch_losses, resumed_at, how,
                held_out if how == "completed" else None, task.held_out if task.eval_splits else "",
                time.time() - t0, signals.signum)
        log.close()
    distributed.barrier()  # no rank leaves (and tears down the process group) while rank 0 still evaluates
    return result


# ----------------------------------------------------------------------------- CLI
EPILOG = """\
--batch-size is the global batch: all processes together (open_clip's --batch-size is per GPU), so a run takes the
same steps on 1 or 64 GPUs. Every default lives in TrainConfig (clipcore/train.py), a method's in its Config; the
README's sections "The default run", "Your own data" and "Scale-out" show what the outputs and flags mean."""


def build_parser() -> argparse.ArgumentParser:
    """The CLI, generated from :class:`TrainConfig` and every method's ``Config`` (clipcore.flags)."""
    p = Parser(prog="python -m clipcore.train", description=__doc__.split("\n\n")[0], epilog=EPILOG,
               usage="%(prog)s [flags]  (-h lists them)")
    methods = available()
    add_config_flags(p, TrainConfig, skip=("options",),
                     choices=dict(method=("clip", *methods), loss=LOSSES, reg_pairs=REG_PAIRS),
                     aliases=dict(logs=("--logs-dir",), grad_clip=("--grad-clip-norm",)))
    for name, module in methods.items():
        doc = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        add_config_flags(p, module.Config, prefix=name, title=f"--method {name}", description=doc, suppress=True)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line -> a checked TrainConfig; a bad flag raises ConfigError (one line under :func:`main`)."""
    p = build_parser()
    a = p.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if "__" in k}  # method flags the user passed (no defaults here)
    wrong = sorted(k for k in given if not k.startswith(a.method + "__"))
    if wrong:
        flags = ", ".join("--" + k.replace("__", "-").replace("_", "-") for k in wrong)
        p.error(f"{flags}: a flag of --method {wrong[0].split('__')[0]}, not of --method {a.method}")
    options = {k.split("__", 1)[1]: v for k, v in given.items()}
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "options"},
                      options=options)
    check_config(cfg)
    return cfg


@cli
def main(argv: list[str] | None = None) -> None:
    """Exit status 0 when training finished; 128 + the signal's number when SIGTERM / SIGUSR1 stopped it (after
    its checkpoint), as the shell reports a process the signal ended; 2 with one line for a UserError."""
    result = train(parse_args(argv))
    if "stopped_by" in result:
        raise SystemExit(128 + result["stopped_by"])


if __name__ == "__main__":
    main()
