"""Train a CLIP model: data -> model -> loss -> optimiser -> evaluation -> checkpoint, in one loop.

    python -m clipcore.train                                   # tiny preset on the embedded animal-mnist
    python -m clipcore.train --train-data pairs.csv --val-data val.csv --model small --epochs 30
    python -m clipcore.train --train-data images/ --loss reg --reg-lambda 0.1
    python -m clipcore.train --resume latest                   # continue the run named by the same flags
    python -m clipcore.train --method reco --init logs/<run>/checkpoints/latest.pt   # a paper method (clipcore.methods)
    torchrun --nproc_per_node 4 -m clipcore.train --model small --batch-size 1024     # DDP (clipcore.distributed)
    python -m clipcore.train --train-data 'shards/{00000..00099}.tar' --dataset-type webdataset  # clipcore.shards

This module is the command line and the run shell (run folder, resume, checkpoints, logs, signals, evaluation).
The library it drives lives elsewhere: every default in :class:`clipcore.training.TrainConfig` (a method's own
options in its ``Config``; the CLI only overrides them), the optimiser and schedule beside it, the fit loop in
:mod:`clipcore.loop`, plain CLIP's task in :mod:`clipcore.clip_task`. A method (``--method``, :mod:`clipcore.methods`) supplies model, data, batch format, loss and
evaluation as a :class:`~clipcore.methods.Task`; this loop does the rest for all of them. Outputs go to
``{logs}/{name}/``: ``metrics.jsonl``, ``loss.png``, ``checkpoints/latest.pt`` and its predecessor
``latest.prev.pt`` (each with a ``.sha256``; clipcore.checkpoint), and TensorBoard events when tensorboard is
installed. The folder is locked while a run uses it; SIGTERM / SIGUSR1 checkpoint and stop at the next step
(README: Reliability).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from clipcore import checkpoint as ckpt_io
from clipcore import distributed
from clipcore.clip_task import clip_task, dataset_type
from clipcore.errors import ConfigError, UserError, cli
from clipcore.flags import Parser, add_config_flags
from clipcore.losses import LOSSES, REG_PAIRS
from clipcore.loop import Optimisation, Progress, fit
from clipcore.methods import Task, available, get_method, method_config, method_module, trainable_parameters
from clipcore.runlog import Metrics, StopSignals, claim, elapsed_bar, summary
from clipcore.training import (TrainConfig, check_config, make_optimizer, make_schedule, resolve_epochs,
                               resolve_precision, resolve_warmup)

__all__ = ["TrainConfig", "train", "main", "parse_args", "build_parser"]


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


def build_task(cfg: TrainConfig, device: torch.device) -> Task:
    if cfg.method == "clip":
        if cfg.options:
            raise ConfigError(f"--method clip takes no method options; got {sorted(cfg.options)}")
        return clip_task(cfg, device)
    module = get_method(cfg.method)
    return module.build(cfg, method_config(module, cfg.options), device)


# ----------------------------------------------------------------------------- the run shell
def train(cfg: TrainConfig, task: Task | None = None) -> dict:
    """Run training; return the final held-out metrics (and ``run_dir``, ``losses``, ``stopped_by`` when a signal
    stopped it). Under torchrun every rank runs this; rank 0 alone locks the run folder, logs, evaluates and
    writes checkpoints (clipcore.distributed). ``task``: a Task built in code (experiments, notebooks) instead of
    the one ``cfg`` names."""
    check_config(cfg)
    dd = distributed.init(cfg.device)
    out = Path(distributed.broadcast(str(run_dir(cfg))))  # chosen once: rank 0 may create it before others look
    with claim(out, dd.main), StopSignals() as signals:
        return _Run(cfg, task, dd, out, signals).run()


class _Run:
    """One run in its folder: builds the task, optimiser and schedule, resumes, then hands :func:`clipcore.loop.fit`
    the :class:`clipcore.loop.Hooks` it needs (checkpoint, log, stop, evaluate) and writes the summary."""

    def __init__(self, cfg: TrainConfig, task: Task | None, dd, out: Path, signals: StopSignals):
        self.cfg, self.dd, self.out, self.signals, self.main = cfg, dd, out, signals, dd.main
        device = dd.device
        random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)
        self.task = task = task or build_task(cfg, device)
        if task.steps_per_epoch == 0:
            raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the training set ({task.describe}); lower it")
        if cfg.accum_freq > 1:
            check_accumulation(cfg, task)
        self.epochs, self.epochs_why = resolve_epochs(cfg, task.steps_per_epoch)
        total = task.steps_per_epoch * self.epochs
        self.warmup, self.warmup_why = resolve_warmup(cfg, total)
        if self.warmup >= total and self.main:   # the lr would never reach --lr, and the cosine would never start
            warnings.warn(f"--warmup {self.warmup} >= the run's {total} steps ({self.epochs} epochs x "
                          f"{task.steps_per_epoch}): the learning rate never reaches --lr {cfg.lr:g}; pass a smaller "
                          "--warmup", stacklevel=3)
        self.precision = resolve_precision(cfg.precision, device)
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        opt = make_optimizer(task.model, cfg.lr, cfg.wd)
        self.ckpt_path = out / "checkpoints" / "latest.pt"
        self.optim = Optimisation(
            task, distributed.wrap(task.model, dd), opt, make_schedule(opt, self.warmup, total),
            torch.amp.GradScaler(device.type, enabled=self.precision == "fp16"),
            lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
            accum_freq=cfg.accum_freq, grad_clip=cfg.grad_clip, checkpoint=self.ckpt_path)
        self.progress, self.resumed_at = Progress(), None
        if cfg.resume:  # every rank reads the checkpoint (shared filesystem), so optimiser states agree
            o = self.optim
            state = ckpt_io.load(self.ckpt_path if cfg.resume == "latest" else cfg.resume, fallback=True)
            ckpt_io.restore(state, cfg, dd.world, task.model, o.opt, o.sched, o.scaler,
                            streamed=dataset_type(cfg) == "webdataset")
            self.progress = Progress(state["step"], state["epoch"], state["batch"])
            self.resumed_at = state["step"]
            if self.main:
                print(f"resumed from {state['loaded_from']} at step {state['step']} "
                      + (f"(epoch {state['epoch'] + 1}, batch {state['batch']})" if state["epoch"] < self.epochs
                         else "(all epochs done)"))
        self.saved_at = self.progress.step      # the step of the last checkpoint
        self.log_ = Metrics(out, resume_step=self.resumed_at, tensorboard=cfg.report_to == "tensorboard") if self.main else None
        self.held_out = None

    # -- the hooks of clipcore.loop.fit
    def save(self, p: Progress) -> None:
        if self.main:
            o = self.optim
            ckpt_io.save_atomic({
                "model": self.task.model.state_dict(), "optimizer": o.opt.state_dict(),
                "scheduler": o.sched.state_dict(), "scaler": o.scaler.state_dict(), "rng": ckpt_io.rng_state(),
                "step": p.step, "epoch": p.epoch, "batch": p.batch, "world_size": self.dd.world,
                "method": self.cfg.method, "train_config": dataclasses.asdict(self.cfg), **self.task.meta,
            }, self.ckpt_path, keep_previous=True)
        self.saved_at = p.step

    def batches(self, epoch: int, start: int):
        """The epoch's batches; a data error (UserError) from the loader first checkpoints the progress."""
        p = self.progress
        try:
            yield from self.signals.shield(self.task.loader(epoch, start))   # workers ignore SIGTERM / SIGUSR1
        except UserError as e:
            if p.step > self.saved_at:
                self.save(p)
            msg = str(e)     # from a DataLoader worker: "Caught ... Original Traceback ...", the message last
            msg = msg.rstrip().rsplit(f"{type(e).__name__}: ", 1)[-1] if "\nOriginal Traceback" in msg else msg
            e.args = (f"{msg} [stopped at step {p.step}" + (f"; progress is saved in {self.ckpt_path}: fix the data "
                      "(or pass --skip-bad) and continue with --resume latest, or --resume <that path>]"
                      if p.step else "]"),)
            # without the loader's frames the DataLoader iterator is deleted now and shuts its workers down
            # cleanly, instead of multiprocessing killing them at exit (and torch reporting that as an error)
            raise e.with_traceback(None)

    def stop(self, p: Progress) -> bool:
        return bool(self.cfg.max_steps) and p.step >= self.cfg.max_steps or \
            self.signals.agreed(self.dd.world, self.dd.device) is not None

    def log(self, p: Progress, info: dict) -> None:
        if self.main:
            self.log_.write({"step": p.step, "epoch": p.epoch + 1, "loss": p.losses[-1],
                             "lr": self.optim.sched.get_last_lr()[0], **info, "time": time.time() - self.t0})

    def end_epoch(self, p: Progress, epochs: int) -> None:
        if not self.main:
            return
        line = f"epoch {p.epoch}/{epochs}: mean loss {np.mean(p.epoch_losses):.3f} over {len(p.epoch_losses)} steps"
        if "val" in self.task.eval_splits:
            with elapsed_bar(f"epoch {p.epoch}: evaluating the val data"):
                self.held_out = self.task.evaluate("val")
            self.log_.write({"step": p.step, "epoch": p.epoch, "time": time.time() - self.t0,
                             **{f"val/{k}": v for k, v in self.held_out.items()}})
            line += "  val " + "  ".join(f"{k} {v:.3f}" for k, v in self.held_out.items())
        print(line + f"  [{time.time() - self.t0:.0f} s]")

    # -- the run
    def describe(self) -> str:
        cfg, task, dd = self.cfg, self.task, self.dd
        return (f"run {self.out} [{cfg.method}]: {task.describe}; {trainable_parameters(task.model):,} trainable "
                f"parameters, {task.steps_per_epoch} steps/epoch x {self.epochs} epochs"
                + (f" ({self.epochs_why})" if cfg.epochs is None else "") + f", batch {cfg.batch_size} (global), "
                f"lr {cfg.lr:g}, warm-up {self.warmup} steps ({self.warmup_why}), precision {self.precision}"
                + (f" (--precision {cfg.precision})" if self.precision != cfg.precision else "")
                + f", device {dd.device}" + (f", {dd.world} processes" if dd.world > 1 else ""))

    def summary(self, how: str, held_out: dict | None, what: str) -> None:
        p = self.progress
        summary(self.out, self.ckpt_path, p.step, p.epoch, self.epochs, self.cfg.max_steps, p.losses, p.epoch_losses,
                self.resumed_at, how, held_out, what, time.time() - self.t0, self.signals.signum)
        self.log_.close()

    def run(self) -> dict:
        cfg, task, p = self.cfg, self.task, self.progress
        if self.main:
            print(self.describe())
        self.t0, how = time.time(), "error"
        try:
            stopped = fit(self.optim, p, self.epochs, self, log_every=cfg.log_every, save_every=cfg.save_every,
                          show_progress=self.main)
            how = ("signal" if self.signals.signum is not None else "max_steps") if stopped else "completed"
        finally:
            if self.main and how == "error":   # the error itself follows (one line for a UserError, else its traceback)
                self.summary(how, None, "")
        result = {"run_dir": str(self.out), "steps": p.step, "seconds": time.time() - self.t0, "losses": p.losses,
                  "stopped": how}
        if how == "signal":
            result["stopped_by"] = self.signals.signum
        if self.main and "test" in task.eval_splits and how == "completed":
            with elapsed_bar(f"evaluating ({task.held_out})"):
                self.held_out = task.evaluate("test")
            self.log_.write({"step": p.step, "time": time.time() - self.t0,
                             **{f"test/{k}": v for k, v in self.held_out.items()}})
        if how == "completed" and self.held_out is not None:
            result.update(self.held_out)
        if self.main:
            self.summary(how, self.held_out if how == "completed" else None, task.held_out if task.eval_splits else "")
        distributed.barrier()  # no rank leaves (and tears down the process group) while rank 0 still evaluates
        return result


def check_accumulation(cfg: TrainConfig, task: Task) -> None:
    """--accum-freq K > 1 needs the Task's embed / loss_from_embeddings, and a model without batch norm (whose
    statistics depend on the chunk, :func:`clipcore.distributed.has_batch_norm`)."""
    if task.embed is None or task.loss_from_embeddings is None:
        raise ConfigError(f"--accum-freq {cfg.accum_freq}: --method {cfg.method} does not provide embed and "
                          "loss_from_embeddings (clipcore.methods.Task), which exact accumulation needs; use --accum-freq 1")
    if distributed.has_batch_norm(task.model):
        raise ConfigError(f"--accum-freq {cfg.accum_freq}: the model has batch norm, whose statistics depend on the "
                          "chunk, so accumulation would not equal the full batch; use a model without it "
                          "(e.g. --model tiny-vit) or --accum-freq 1")


# ----------------------------------------------------------------------------- CLI
EPILOG = """\
--batch-size is the global batch: all processes together (open_clip's --batch-size is per GPU), so a run takes the
same steps on 1 or 64 GPUs. Every default lives in TrainConfig (clipcore/training.py), a method's in its Config; the
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
