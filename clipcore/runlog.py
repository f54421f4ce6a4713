"""Run logging of clipcore.train: metrics as JSON lines (always), TensorBoard scalars (when installed), and the
loss-curve PNG drawn from the metrics file when the run closes."""
from __future__ import annotations

import json
from pathlib import Path


class Metrics:
    """JSON lines (always), TensorBoard (when installed), and a loss-curve PNG on close."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / "metrics.jsonl"
        self.f = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n"); self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
        plot_losses(self.path, self.out / "loss.png")


def plot_losses(metrics_path: Path, png: Path) -> None:
    """Loss (and val zero-shot top-1 when logged) against step, from the metrics file of the whole run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = [json.loads(line) for line in open(metrics_path)]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val/acc1"]) for r in rows if "val/acc1" in r]
    if not train:
        return
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="train loss")
    ax.set_xlabel("step"); ax.set_ylabel("contrastive loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="C1", label="val zero-shot top-1")
        ax2.set_ylabel("val zero-shot top-1"); ax2.set_ylim(0, 1); ax2.grid(False)
        fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout(); fig.savefig(png, dpi=120); plt.close(fig)
