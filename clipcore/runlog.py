"""The run folder of clipcore.train: its lock, the stop signals, and the run log -- metrics as JSON lines
(always), TensorBoard scalars (``--report-to tensorboard``), and the loss-curve PNG drawn from the metrics file on
close (on a matplotlib Figure of its own: the process's pyplot backend and figures are left alone)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from clipcore.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)   # pre-emption, and SLURM's --signal=USR1@<seconds> warning


@contextlib.contextmanager
def claim(folder: Path, main: bool = True) -> Iterator[None]:
    """Create ``folder`` and hold an exclusive ``fcntl.flock`` on ``folder/.lock`` while the block runs (the kernel
    drops it when the process dies, so a crash never leaves the folder locked). A second process gets a
    UserError naming the holder. ``main`` False (torchrun ranks > 0): nothing is done."""
    if not main:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"run folder {folder} is in use by {holder} (it holds {folder / '.lock'}); wait for it to "
                            "finish, or start a separate run (another --name, or no --resume)") from None
        f.seek(0); f.truncate(); f.write(f"pid {os.getpid()} on {socket.gethostname()}\n"); f.flush()
        yield
    finally:
        f.close()   # releases the lock


class StopSignals:
    """``with StopSignals() as s``: SIGTERM / SIGUSR1 set ``s.signum`` instead of killing the process, so the loop
    checkpoints and stops at the next step boundary; the previous handlers come back on exit. Outside the main
    thread (where handlers cannot be set) it does nothing but :meth:`shield`."""

    def __enter__(self) -> "StopSignals":
        import multiprocessing
        self.signum, self.old = None, {}
        self.released = multiprocessing.RawValue("b", 0)   # shared with worker processes: 1 once training is over
        with contextlib.suppress(ValueError):
            for sig in STOP_SIGNALS:
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def agreed(self, world: int, device) -> int | None:
        """The signal to stop on, the same on every rank: under torchrun (``world`` > 1; one all-reduce) a signal
        to any rank stops all of them (those that got none report SIGTERM)."""
        if world > 1:
            import torch

            from clipcore import distributed
            got = distributed.mean_across(torch.tensor(float(self.signum or 0), device=device)).item() > 0
            self.signum = self.signum or (signal.SIGTERM if got else None)
        return self.signum

    def shield(self, loader):
        """Return ``loader``; when it is a DataLoader with workers, they ignore SIGTERM / SIGUSR1 while training
        runs. A cluster pre-empting a job signals its whole process group, and torch's workers would die of it and
        take the run down mid-step; the main process alone decides (checkpoint, then stop them). Once this block
        has exited they die of SIGTERM again, as multiprocessing's clean-up at exit expects."""
        from torch.utils.data import DataLoader
        if isinstance(loader, DataLoader) and loader.num_workers > 0 and not isinstance(loader.worker_init_fn, _Shielded):
            loader.worker_init_fn = _Shielded(self.released, loader.worker_init_fn)
        return loader

    def __exit__(self, *exc) -> None:
        self.released.value = 1
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class _Shielded:
    """A DataLoader ``worker_init_fn`` (picklable) that installs the workers' stop-signal handler, then runs the
    loader's own init function."""

    def __init__(self, released, init_fn):
        self.released, self.init_fn = released, init_fn

    def __call__(self, worker_id: int) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        if self.init_fn is not None:
            self.init_fn(worker_id)

    def _handle(self, signum, frame) -> None:
        if self.released.value:      # training is over: die as asked (multiprocessing's terminate() at exit)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


@contextlib.contextmanager
def elapsed_bar(desc: str, enabled: bool = True) -> Iterator[None]:
    """A tqdm line on stderr counting the seconds while the block runs: progress for work (an evaluation) that
    cannot report its own steps. Off when stderr is not a terminal (tqdm's rule) or ``enabled`` is False."""
    from tqdm import tqdm
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False,
               disable=None if enabled else True)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            bar.refresh()
    ticker = threading.Thread(target=tick, daemon=True)
    t0 = time.time()
    ticker.start()
    try:
        yield
    finally:
        done.set(); ticker.join(); bar.close()
        if enabled and time.time() - t0 > 5:
            print(f"{desc}: {time.time() - t0:.0f} s", file=sys.stderr)


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file; a torn (half-written, unparsable) line is skipped."""
    rows = []
    for line in open(path):
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


class Metrics:
    """JSON lines (always), TensorBoard (``tensorboard=True``), and a loss-curve PNG titled with the run folder's
    name on close. ``resume_step``: the step a resumed run continues from; rows of later steps (logged by the run
    before it stopped, about to be logged again) and a torn last line are dropped from the file first.

    TensorBoard events go to ``<run>/tensorboard``: a row's ``val/...`` and ``test/...`` keys keep their name as
    the tag, every other number is tagged ``train/<key>`` (``train/loss``, ``train/lr``, ``train/logit_scale``)."""

    def __init__(self, out: Path, resume_step: int | None = None, tensorboard: bool = False):
        self.out, self.path = out, out / "metrics.jsonl"
        if self.path.exists():
            text = self.path.read_text()
            lines = text.splitlines(keepends=True)
            keep = [ln for ln in lines if ln.endswith("\n") and _step_at_most(ln, resume_step)]
            if len(keep) != len(lines):
                tmp = self.path.with_name(f"metrics.jsonl.{os.getpid()}.tmp")
                tmp.write_text("".join(keep)); os.replace(tmp, self.path)
        self.tb = summary_writer()(str(out / "tensorboard")) if tensorboard else None
        self.f = open(self.path, "a")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n"); self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, row["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
        plot_losses(self.path, self.out / "loss.png", title=self.out.name)


def summary(out: Path, ckpt: Path, step: int, epoch: int, epochs: int, max_steps: int, losses: list[float],
            epoch_losses: list[float], resumed_at: int | None, how: str, held_out: dict | None, what: str,
            seconds: float, signum: int | None = None) -> None:
    """Print the closing lines of a clipcore.train run (``how``: completed, max_steps, signal or error; ``epoch``
    0-based unless completed): how it stopped, steps, the last epoch's mean loss, the held-out result (or why
    there is none), the checkpoint and, when resumed, the step it continued from."""
    stopped = {"completed": "completed", "max_steps": f"stopped by --max-steps {max_steps}",
               "signal": f"stopped by {signal.Signals(signum).name if signum else 'a signal'}",
               "error": "stopped by an error (below)"}[how]
    lines = [f"run {out.name}: {stopped} at step {step} (epoch {min(epoch + 1, epochs) if how != 'completed' else epoch}"
             f"/{epochs}) after {seconds:.0f} s" + (f"; resumed at step {resumed_at}" if resumed_at is not None else "")]
    if epoch_losses:
        lines.append(f"  loss: {sum(epoch_losses) / len(epoch_losses):.4f} (mean of the last epoch's {len(epoch_losses)} steps"
                     + (" this session" if resumed_at else "") + f"; last step {losses[-1]:.4f})")
    if held_out:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in list(held_out.items())[:4])
        lines.append(f"  held-out ({what}): " + (f"zero-shot top-1 {held_out['acc1']:.4f}"
                     + (f", top-5 {held_out['acc5']:.4f}" if "acc5" in held_out else "") if "acc1" in held_out else metrics))
        modes = {k.split("/")[1]: v for k, v in held_out.items() if k.startswith("all/") and k.endswith("/acc")}
        if modes:      # GRAIN: acc1 is its primary mode (name+desc); every zero-shot mode beside it
            lines.append("  zero-shot top-1 by mode: " + ", ".join(f"{m} {v:.4f}" for m, v in modes.items()))
    elif not what:
        lines.append("  held-out: no validation data (pass --val-data, or evaluate the checkpoint with python -m clipcore.eval)")
    elif how != "completed":
        lines.append(f"  held-out ({what}): not evaluated, the run did not finish (python -m clipcore.eval scores the checkpoint)")
    saved = ckpt.exists()
    lines.append(f"  checkpoint: {ckpt}" if saved else "  checkpoint: none saved")
    if how in ("signal", "max_steps", "error") and saved:
        lines.append("  continue with --resume latest (same flags)" + (" and a larger --max-steps" if how == "max_steps" else ""))
    print("\n".join(lines), flush=True)


def summary_writer():
    """TensorBoard's SummaryWriter class; a UserError when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--report-to tensorboard: the tensorboard package is not installed (pip install "
                        "tensorboard), or use --report-to none") from None
    return SummaryWriter


def _step_at_most(line: str, step: int | None) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return step is None or row.get("step", 0) <= step


def plot_losses(metrics_path: Path, png: Path, title: str = "") -> None:
    """Loss (and val zero-shot top-1 when logged) against step, from the metrics file of the whole run, drawn on a
    Figure with its own Agg canvas: no pyplot state, no backend switch (a notebook's figures keep showing)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_rows(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val/acc1"]) for r in rows if "val/acc1" in r]
    if not train:
        return
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(*zip(*train), ".-" if len(train) < 20 else "-", label="train loss")
        ax.set_xlabel("step"); ax.set_ylabel("contrastive loss")
        if title:
            ax.set_title(title, fontsize=9)
        if val:
            ax2 = ax.twinx()
            ax2.plot(*zip(*val), "o-", color="C1", label="val zero-shot top-1")
            ax2.set_ylabel("val zero-shot top-1"); ax2.set_ylim(0, 1); ax2.grid(False)
            fig.legend(loc="lower left", ncol=2, fontsize=8)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
