"""The figures of experiments/test_arf.py (ARF-1's ID-vs-OOD scatter, ARF-6's WiSE-FT curves), written through
experiments.common.savefig into the tier's results folder."""
from __future__ import annotations

from experiments.common import savefig


def scatter(runs, methods) -> str:
    """Effective-robustness scatter: ID vs shift and ID vs ZS, one point per method (of ``methods``) and seed."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    df = pd.DataFrame([{"method": m, "seed": r["seed"], **v} for r in runs for m, v in r["rows"].items()
                       if m in methods])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, y in zip(axes, ("shift", "ZS")):
        sns.scatterplot(data=df, x="ID", y=y, hue="method", style="method", s=60, ax=ax, legend=ax is axes[1])
        ax.set(xlabel="ID accuracy (%)", ylabel=f"{y} accuracy (%)")
    axes[1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    fig.suptitle(f"ARF world: ID vs OOD after finetuning ({len(runs)} seeds)")
    return savefig(fig, "ARF-1")


def wise_curves(runs, alphas) -> str:
    """ID, shift and ZS of FLYP and ARF along the WiSE-FT grid ``alphas`` (95% bootstrap CI bands over seeds,
    seeded so that the same numbers give the same picture)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    df = pd.DataFrame([{"method": m, "alpha": a, "seed": r["seed"], **r["wise"][m][a]}
                       for r in runs for m in ("FLYP", "ARF") for a in alphas])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, y in zip(axes, ("ID", "shift", "ZS")):
        sns.lineplot(data=df, x="alpha", y=y, hue="method", marker="o", errorbar=("ci", 95), seed=0, ax=ax)
        ax.set(xlabel="WiSE-FT alpha (0 = theta0, 1 = finetuned)", ylabel=f"{y} (%)")
    fig.suptitle("WiSE-FT curves, FLYP vs ARF")
    return savefig(fig, "ARF-6")
