"""The training library: :class:`TrainConfig` (every default of a run, in one place), its checks and the values
it leaves to be resolved (epochs, warm-up, precision), the optimiser and the schedule.

The CLI (:mod:`clipcore.train`) and everything that trains outside it -- the theory experiments, the method
plug-ins, notebooks -- take these from here, so a run's optimisation is defined once::

    opt = make_optimizer(model, cfg.lr, cfg.wd)              # AdamW, decay on matrices only
    sched = make_schedule(opt, warmup, total_steps)          # linear warm-up, then cosine to 0
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from clipcore.errors import ConfigError
from clipcore.losses import make_loss
from clipcore.runlog import summary_writer

ADAMW = dict(betas=(0.9, 0.98), eps=1e-6)   # every AdamW of clipcore (open_clip's CLIP recipe)


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
    loss_tile: int | None = None     # fused loss: rows per tile (triton: BLOCK_M); default: clipcore.fused's per device
    loss_col_tile: int | None = None  # fused loss: columns per tile (triton: BLOCK_N); default: --loss-tile's value
    reg_lambda: float = 0.1          # reg loss: weight of the pair penalty (README: the theory paper's claims)
    reg_pairs: str = "pos"           # reg loss: which pairs it penalises (pos: the paper's; the rest are ablations)
    local_loss: bool = True          # torchrun: local rows x all columns (open_clip --local-loss); off: full N x N per rank
    gather_with_grad: bool = True    # torchrun: gather embeddings with gradient (exact); off: open_clip's default
    # optimisation: tuned for tiny on 2 CPU cores (README: accuracy and time of the default run)
    batch_size: int = 256            # the global batch (all ranks together; open_clip's is per GPU)
    accum_freq: int = 1              # split each batch into K chunks, exact full-batch gradient (GradCache)
    grad_checkpointing: bool = False  # recompute transformer blocks in the backward (less memory)
    epochs: int | None = None        # passes over the training data; default: 8, or on small data as many as make 100 steps
    lr: float = 2e-3                 # peak learning rate (AdamW, betas 0.9/0.98, eps 1e-6: ADAMW)
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
               lr=0.0, wd=0.0, grad_clip=0.0, reg_lambda=0.0, loss_tile=1, loss_col_tile=1)


def check_config(cfg: TrainConfig) -> None:
    """ConfigError naming the first flag below its minimum (:data:`MINIMUM`), or a --device that is not there."""
    for name, least in MINIMUM.items():
        value = getattr(cfg, name)
        if value is not None and not value >= least:   # also catches NaN; None: a default decided later
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least {least}")
    make_loss(cfg.loss, impl=cfg.loss_impl, kernel=cfg.loss_kernel, tile=cfg.loss_tile, col_tile=cfg.loss_col_tile,
              reg_pairs=cfg.reg_pairs)      # a loss spec that cannot run fails here, before any data are read
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


# ----------------------------------------------------------------------------- optimiser and schedule
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


def make_optimizer(model: torch.nn.Module, lr: float, wd: float, *, fused: bool = True) -> torch.optim.AdamW:
    """AdamW (betas and eps of :data:`ADAMW`) over :func:`param_groups`. fused: one kernel over all parameters
    (3x faster than the per-tensor default on CPU, measured); False: torch's per-tensor default."""
    return torch.optim.AdamW(param_groups(model, wd), lr=lr, fused=fused, **ADAMW)


def make_schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of every run: :func:`warmup_cosine` over ``total`` optimiser steps."""
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total))
