"""THY-8: CLIP+Reg vs CLIP, zero-shot and linear-probe accuracy (docs/methods.md, theory §6, §7: +2.06
zero-shot and +1.54 linear probe on CC3M, single runs, no error bars), on a nonlinear synthetic task and on the real
animal-mnist, on the calibrated protocol (experiments/README.md).

    pytest experiments/test_thy8.py                  # quick tier: THY-8, 3 seeds (THY-8r: not run, see below)
    CLIPCORE_FULL=1 pytest experiments/test_thy8.py  # paper tier: 5 seeds, THY-8 and THY-8r

Pre-registered (protocol 2):
- Gain = 100 x (accuracy of CLIP+Reg - accuracy of CLIP), in points, paired by seed (the two arms of a seed share
  world, init, data order and everything else). The row's rule is composite over the two metrics (zero-shot top-1,
  linear-probe top-1), k=2: each gain's t-CI at family_conf(2) = 97.5 %; "holds" when both lie wholly > 0 (the
  paper's direction), "fails" when either lies wholly <= 0, else "inconclusive". Non-inferiority (CI above -0.5
  points) is reported beside it and decides nothing.
- Controls, decided by the same rule on the same seeds. Negative: CLIP against CLIP on seeds + NULL (other world,
  init and data) must be inconclusive. Positive: THY-8, a gain planted by construction (each of CLIP's held-out
  errors corrected with probability PLANT = 0.15, about the paper's +2 points); THY-8r, CLIP trained twice as long
  (same lr and batch), a gain known from pilots. Headroom: CLIP's accuracy away from chance and from 100 %; for
  THY-8r CLIP's held-out zero-shot must lie in 60-90 % (the brief's off-ceiling regime).
- THY-8 (synthetic): the theory world (theory.world defaults: K=10, ||xi||, ||zeta|| ~ 3 ||z||) seen through a
  frozen random 2-layer tanh map on each modality (``NonlinearWorld``), MLP towers, theory.fit.fit (AdamW, 1000
  steps at lr 2e-3, B=32), plain CLIP (diagonal targets: same-topic pairs in a batch are negatives). The temperature
  is FIXED at tau = 0.01 in both arms (the regime T6/T7 speak about; protocol 1 learned tau ~ 0.1, where the theory
  predicts no benefit), and lambda is scaled with tau: CLIP+Reg = CLIP + (lambda / tau) mean ||f(x_i) - g(y_i)||^2
  over positive pairs (clipcore's ``reg_over_tau``), lambda = 0.1 as pre-registered in the issue. The full tier adds
  an EXPLORATORY lambda sweep (0.3, 1, 3) that decides nothing.
- THY-8r (animal-mnist): clipcore.train's default pipeline (tiny preset, multi-positive InfoNCE, learned temperature,
  the library's reg form lambda = 0.1 not divided by tau: TrainConfig has no such field) in a regime off the ceiling:
  the default 8 epochs put both arms at 98.4 %, so REAL_EPOCHS epochs at lr REAL_LR, batch REAL_BATCH, the warm-up
  keeping the default's fraction of the schedule. Held-out test zero-shot from ``train`` and the linear probe of
  ``evaluate_checkpoint`` (probe fitted on the embedded train split, weight decay chosen on val). 4 runs per seed
  (CLIP, CLIP+Reg, the two controls) at ~35-70 CPU-s each: the quick tier does not run it (its row says so and is
  "untestable here"); only the paper tier decides.
Runs go to a pool of 2 single-threaded worker processes (2 cores); each job is deterministic given its seed.

History. Protocol 1 (learned tau, lambda not scaled, the default 8-epoch THY-8r at 98.4 %): both rows inconclusive
with gains ~0. The synthetic task's free settings (tanh gain 3, 1000 AdamW steps at lr 2e-3, B=32) were picked then on
pilot runs; protocol 2's pilots (seeds 1000-1002) checked only CLIP's accuracy at tau = 0.01 (83-88 % zero-shot,
88-91 % probe: off the ceiling) and, for THY-8r, CLIP's zero-shot per regime: 2 epochs at lr 2e-3 (the default lr)
92 %; 2 epochs at lr 1e-3 90-91 %; 2 epochs at batch 512 27-53 %; 3 epochs at lr 5e-4 92 %; 3 epochs at batch 512
88.5 %; 2 epochs at lr 5e-4 85.0, 85.2, 88.4 % (linear probe 91.4-91.9 %): the regime. The positive-control arm
(4 epochs, same lr) gave 94.8 % zero-shot and 94.9 % probe on pilot seed 1000 (+9.8 and +3.0 points; its other
pilot seeds were stopped for time). CLIP+Reg was never run on pilot seeds: nothing was chosen on the gain.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcore.data import CLASSNAMES
from clipcore.train import TrainConfig
from experiments.common import (FULL, all_of, conclude, controls, family_conf, final_verdict, headroom, mean_ci,
                                save_result, savefig, seeds, tier, verdict_from_ci)
from theory.world import WorldConfig

LAMBDA = 0.1                                      # pre-registered: the library default
PAPER_GAIN = {"zero-shot": 2.06, "linear probe": 1.54}   # CC3M, docs/methods.md, theory §7 (points)
NONINFERIOR = -0.5                                # points; reported, not the verdict
METRICS = ("zero-shot", "linear probe")
CONF = family_conf(len(METRICS))                  # the row's rule: both metrics, k=2 (Bonferroni)
SEEDS = seeds(3, 5)
NULL = 500                                        # negative control: CLIP on seeds seed + NULL (never >= 1000)
PLANT = 0.15                                      # positive control (THY-8): 15% of CLIP's held-out errors corrected
WORKERS = 2

# nonlinear synthetic task (THY-8)
SYN_TAU = 0.01                                    # fixed in both arms: the small-tau regime of T6/T7
SYN_STEPS = 1000                                  # both tiers (the regime chosen on pilot seeds); tiers differ by seeds
SYN_BATCH = 32
SYN_LR = 2e-3
SYN_EMBED = 16
NL_WIDTH, NL_GAIN = 64, 3.0                       # frozen map R^32 -> R^64: tanh(g B tanh(g A v))
TOWER_WIDTH, TOWER_LAYERS = 128, 2
N_PROBE_TRAIN, N_TEST = 1000, 2000
EXPLORE_LAMBDAS = tier((), (0.3, 1.0, 3.0))     # EXPLORATORY sweep (full tier only: time), beside the verdict

# real data (THY-8r)
DEFAULT_EPOCHS = 8                                 # the default run's (CLIP 98.4% zero-shot: at the ceiling)
DEFAULT_WARMUP = 100                               # the default run's warm-up when THY-8r was registered
REAL_EPOCHS, REAL_LR, REAL_BATCH = 2, 5e-4, 256    # off the ceiling: chosen on pilot seeds 1000-1002 (see History)
POS_EPOCHS = 2 * REAL_EPOCHS                       # positive control: CLIP trained twice as long, same lr and batch
REAL_HEADROOM = (0.60, 0.90)                       # CLIP's held-out zero-shot must lie in this range
REAL_SEEDS = seeds(3, 5)


# ------------------------------------------------------------------------------------------- workers
def _init_worker() -> None:
    torch.set_num_threads(1)          # 2 single-threaded processes beat 1 two-threaded one on small models
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pool():
    """WORKERS spawned single-threaded processes (spawn: no fork of a threaded torch), shared by both tests."""
    with ProcessPoolExecutor(WORKERS, mp_context=get_context("spawn"), initializer=_init_worker) as ex:
        yield ex


def _pool_map(pool, fn, jobs: list[tuple]) -> list:
    """fn(*job) for every job on the pool, results in job order."""
    return list(pool.map(fn, *zip(*jobs)))


class NonlinearWorld:
    """A ``theory.world.World`` seen through frozen random maps x -> phi(x), y -> psi(y), each
    v -> tanh(g B tanh(g A v)) with A (w, d) ~ N(0, 1/d), B (w, w) ~ N(0, 1/w): (n, 32) -> (n, 64).
    ``sample`` and ``prompts`` mirror World's, so theory.fit.fresh_batches works unchanged."""

    def __init__(self, world, seed: int, width: int = NL_WIDTH, gain: float = NL_GAIN):
        self.base, self.cfg, self.gain, self.dim = world, world.cfg, gain, width
        g = torch.Generator().manual_seed(7_000 + seed)
        mat = lambda r, c: torch.randn(r, c, generator=g) / math.sqrt(c)  # noqa: E731
        self.ax, self.bx = mat(width, world.cfg.dx), mat(width, width)
        self.ay, self.by = mat(width, world.cfg.dy), mat(width, width)

    def _map(self, v, a, b):
        return torch.tanh(self.gain * torch.tanh(self.gain * v @ a.T) @ b.T)

    def sample(self, n: int, gen: torch.Generator, **kw):
        s = self.base.sample(n, gen, **kw)
        return dataclasses.replace(s, x=self._map(s.x, self.ax, self.bx), y=self._map(s.y, self.ay, self.by))

    def prompts(self):
        return self._map(self.base.prompts(), self.ay, self.by)


def _mlp_clip(dim: int, seed: int):
    """MLP towers with the temperature fixed at SYN_TAU (logit scale 1/tau, not learned)."""
    from clipcore.models import CLIP, get_config
    torch.manual_seed(seed)
    return CLIP(get_config("tiny", embed_dim=SYN_EMBED, tokenizer="none",
                           vision__kind="mlp", vision__input_dim=dim, vision__width=TOWER_WIDTH,
                           vision__layers=TOWER_LAYERS, text__kind="mlp", text__input_dim=dim,
                           text__width=TOWER_WIDTH, text__layers=TOWER_LAYERS,
                           init_logit_scale=1.0 / SYN_TAU, learn_logit_scale=False))


def planted(acc: float, n: int, seed: int) -> float:
    """Positive control: the accuracy after correcting each of the n (1 - acc) held-out errors with probability
    PLANT (a binomial draw from ``seed``): a gain of about PLANT (1 - acc), planted by construction."""
    wrong = round((1 - acc) * n)
    return acc + int(np.random.default_rng(66_000 + seed).binomial(wrong, PLANT)) / n


def syn_job(seed: int, lam: float, steps: int, run_seed: int | None = None) -> dict:
    """One synthetic run: lam = 0 is CLIP, lam > 0 CLIP+Reg (penalty lambda R / tau, R the mean squared distance
    of positive pairs). Held-out zero-shot (world prompts through psi) and linear probe (fit on N_PROBE_TRAIN fresh
    pairs, 20% of them for the weight decay) on N_TEST images. ``run_seed`` (default ``seed``) seeds world, init
    and data: the negative control runs CLIP with run_seed = seed + NULL and is paired with seed."""
    run_seed, verdict_seed = (seed if run_seed is None else run_seed), seed
    seed = run_seed
    from clipcore.evaluate import linear_probe, zero_shot_metrics
    from clipcore.losses import make_loss
    from theory.fit import fit, fresh_batches
    from theory.world import World
    t0, c0 = time.time(), time.process_time()
    world = NonlinearWorld(World(WorldConfig(), seed), seed)
    model = _mlp_clip(world.dim, seed)
    loss = make_loss("reg", reg_lambda=lam, reg_over_tau=True) if lam else make_loss("clip")
    hist = fit(model, loss, fresh_batches(world, SYN_BATCH, seed=1000 + seed), steps=steps, lr=SYN_LR, opt="adam")
    tr = world.sample(N_PROBE_TRAIN, torch.Generator().manual_seed(300 + seed))
    te = world.sample(N_TEST, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        img_tr, img_te = model.encode_image(tr.x), model.encode_image(te.x)
        zs = zero_shot_metrics(img_te, te.labels, model.encode_text(world.prompts()))["acc1"]
        lp = linear_probe(img_tr, tr.labels, img_te, te.labels)["acc1"]
        pos_cos = (img_te * model.encode_text(te.y)).sum(1).mean().item()
        raw = linear_probe(tr.x, tr.labels, te.x, te.labels)["acc1"] if lam == 0 else math.nan
    return {"seed": verdict_seed, "run_seed": run_seed, "lam": lam, "zero-shot": zs, "linear probe": lp,
            "planted": {"zero-shot": planted(zs, N_TEST, run_seed), "linear probe": planted(lp, N_TEST, run_seed + 1)},
            "raw_input_probe": raw,
            "pos_cos": pos_cos, "logit_scale": model.logit_scale_value().item(),
            "final_loss": float(np.mean(hist[-50:])), "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0}


def real_job(seed: int, loss: str, epochs: int, logs: str, run_seed: int | None = None) -> dict:
    """One clipcore.train run on the embedded animal-mnist in the THY-8r regime (REAL_LR, REAL_BATCH, ``epochs``, the
    warm-up keeping the default's fraction of the schedule), then evaluate_checkpoint's zero-shot + linear probe.
    ``run_seed`` (default ``seed``) seeds init and data order; the row is paired with ``seed``."""
    from clipcore.eval import evaluate_checkpoint
    from clipcore.train import train
    t0, c0 = time.time(), time.process_time()
    run_seed = seed if run_seed is None else run_seed
    cfg = TrainConfig(loss=loss, reg_lambda=LAMBDA, epochs=epochs, seed=run_seed, logs=logs, lr=REAL_LR,
                      batch_size=REAL_BATCH, name=f"{loss}_s{run_seed}_e{epochs}",
                      warmup=max(1, round(DEFAULT_WARMUP * epochs / DEFAULT_EPOCHS)), log_every=10_000)
    res = train(cfg)
    ev = evaluate_checkpoint(str(Path(res["run_dir"]) / "checkpoints" / "latest.pt"), split="test", linear=True)
    rows = [json.loads(line) for line in open(Path(res["run_dir"]) / "metrics.jsonl")]
    return {"seed": seed, "run_seed": run_seed, "loss": loss, "zero-shot": res["acc1"], "zero-shot (eval)": ev["acc1"],
            "linear probe": ev["linear_probe/acc1"], "probe_wd": ev["linear_probe/wd"],
            "val_curve": [(r["epoch"], r["val/acc1"]) for r in rows if "val/acc1" in r],
            "final_loss": float(np.mean(res["losses"][-10:])), "epochs": epochs, "steps": res["steps"],
            "warmup": cfg.warmup, "lr": REAL_LR, "batch_size": REAL_BATCH,
            "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0}


# ------------------------------------------------------------------------------------------- claims
def _gains(rows: list[dict], arm_key: str, clip_arm, reg_arm) -> dict[str, list[float]]:
    """Per-seed paired gains (points) of reg_arm over clip_arm, per metric."""
    by = {(r["seed"], r[arm_key]): r for r in rows}
    run_seeds = sorted({r["seed"] for r in rows})
    return {m: [100 * (by[(s, reg_arm)][m] - by[(s, clip_arm)][m]) for s in run_seeds] for m in METRICS}


def _measured_text(cis, accs) -> str:
    parts = []
    for m in METRICS:
        c = cis[m]
        parts.append(f"{m} gain {c['mean']:+.2f} ± {c['half']:.2g} pt (n={c['n']}; CLIP {100 * accs[m]['CLIP']:.1f}% -> "
                     f"CLIP+Reg {100 * accs[m]['CLIP+Reg']:.1f}%; non-inferior at {NONINFERIOR}: {c['lo'] > NONINFERIOR})")
    return "; ".join(parts)


def _t_ci(v) -> tuple[float, float]:
    """seaborn errorbar callable: the same 95% t-interval as the table (mean_ci)."""
    c = mean_ci(list(v)) if len(v) > 1 else {"lo": float(np.mean(v)), "hi": float(np.mean(v))}
    return c["lo"], c["hi"]


def _figure(claim_id: str, title: str, acc_rows: list[dict], gains: dict, chance: float, extra=None):
    """Panel 1: accuracy per seed, CLIP -> CLIP+Reg joined by a line (same seed). Panel 2: the paired gains
    (points) with the 95% t-CI, 0 and the paper's CC3M gains. ``extra(ax)`` draws an optional third panel."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    n = 3 if extra else 2
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 4.2))
    df = pd.DataFrame(acc_rows)
    arms = [(m, a) for m in METRICS for a in ("CLIP", "CLIP+Reg")]
    df["x"] = [arms.index((m, a)) for m, a in zip(df["metric"], df["method"])]
    sns.lineplot(data=df, x="x", y="accuracy", hue="metric", units="seed", estimator=None, marker="o", ax=axes[0],
                 alpha=0.8, legend=False)
    axes[0].set_xticks(range(len(arms)), [f"{m}\n{a}" for m, a in arms], fontsize=8)
    axes[0].axhline(chance, color="gray", ls=":", lw=1)
    axes[0].annotate("chance", (len(arms) - 1, chance), textcoords="offset points", xytext=(0, 3), ha="right",
                     fontsize=8, color="gray")
    axes[0].set(xlabel="", ylabel="held-out top-1 accuracy (%)", title="per seed (line: same seed, both arms)")
    g = pd.DataFrame([{"metric": m, "gain": v} for m in METRICS for v in gains[m]])
    sns.pointplot(data=g, x="metric", y="gain", errorbar=_t_ci, ax=axes[1], color="C2", capsize=0.15,
                  linestyle="none", marker="D", label="mean, 95% t-CI")
    sns.stripplot(data=g, x="metric", y="gain", ax=axes[1], color="k", alpha=0.5, label="seeds")
    axes[1].axhline(0, color="k", lw=0.8)
    for i, m in enumerate(METRICS):
        axes[1].plot([i - 0.35, i + 0.35], [PAPER_GAIN[m]] * 2, "r--", lw=1.2, label="paper, CC3M" if i == 0 else None)
    handles, labels = axes[1].get_legend_handles_labels()
    keep = {lab: h for h, lab in zip(handles, labels)}               # one entry per label
    axes[1].legend(keep.values(), keep.keys(), fontsize=8, loc="best")
    axes[1].set(xlabel="", ylabel="CLIP+Reg - CLIP (points, paired by seed)", title=f"gain at λ={LAMBDA:g} (pre-registered)")
    if extra:
        extra(axes[2])
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return savefig(fig, claim_id)


def _acc_rows(rows, arm_key, names: dict) -> list[dict]:
    return [{"method": names[r[arm_key]], "metric": m, "accuracy": 100 * r[m], "seed": r["seed"]}
            for r in rows if r[arm_key] in names for m in METRICS]


def _mean_acc(rows, arm_key, names) -> dict:
    return {m: {names[a]: float(np.mean([r[m] for r in rows if r[arm_key] == a])) for a in names} for m in METRICS}


def _rule(gains: dict[str, list[float]]) -> tuple[str, dict[str, dict]]:
    """The row's rule: per metric, the CI (at CONF, k=2) of the paired gain > 0; all_of the two metrics."""
    cis = {m: mean_ci(gains[m], CONF) for m in METRICS}
    return all_of(*(verdict_from_ci(cis[m], lower=0.0) for m in METRICS)), cis


def _ctrl_text(cis: dict) -> str:
    return ", ".join(f"{m} {cis[m]['mean']:+.2f} ± {cis[m]['half']:.2g} pt" for m in METRICS)


def test_thy8_nonlinear_synthetic(pool):
    """CLIP+Reg vs CLIP on the theory world through a frozen random nonlinearity, MLP towers, tau fixed small."""
    t0 = time.time()
    lams = (0.0, LAMBDA) + tuple(EXPLORE_LAMBDAS)
    jobs = [(s, lam, SYN_STEPS) for s in SEEDS for lam in lams] + [(s, 0.0, SYN_STEPS, s + NULL) for s in SEEDS]
    rows = _pool_map(pool, syn_job, [j + (None,) * (4 - len(j)) for j in jobs])
    conclude(synthetic_record(rows, t0))


def synthetic_record(rows: list[dict], t0: float) -> dict:
    """THY-8's verdict, controls, figure and JSON from the per-run rows of ``syn_job``."""
    null_rows = [r for r in rows if r["run_seed"] != r["seed"]]
    rows = [r for r in rows if r["run_seed"] == r["seed"]]
    names = {0.0: "CLIP", LAMBDA: "CLIP+Reg"}
    gains = _gains(rows, "lam", 0.0, LAMBDA)
    verdict, cis = _rule(gains)
    accs = _mean_acc(rows, "lam", names)
    clip = {r["seed"]: r for r in rows if r["lam"] == 0.0}
    pos, pos_cis = _rule({m: [100 * (clip[s]["planted"][m] - clip[s][m]) for s in SEEDS] for m in METRICS})
    neg, neg_cis = _rule({m: [100 * (r[m] - clip[r["seed"]][m]) for r in sorted(null_rows, key=lambda r: r["seed"])]
                          for m in METRICS})
    ctrl = controls(pos, neg, pos_detail=f"CLIP with {100 * PLANT:g}% of its held-out errors corrected (planted gain): "
                    + _ctrl_text(pos_cis), neg_detail=f"CLIP on seeds +{NULL} minus CLIP: " + _ctrl_text(neg_cis))
    chance = 1 / WorldConfig().K
    checks = [headroom(f"CLIP {m} accuracy", [clip[s][m] for s in SEEDS], floor=chance, ceiling=1.0, margin=0.05)
              for m in METRICS]
    explore = {lam: {m: mean_ci(g) for m, g in _gains(rows, "lam", 0.0, lam).items()} for lam in EXPLORE_LAMBDAS}
    raw = mean_ci([r["raw_input_probe"] for r in rows if r["lam"] == 0.0])

    def sweep(ax):
        import pandas as pd
        import seaborn as sns
        df = pd.DataFrame([{"λ": lam, "metric": m, "gain": v} for lam in (LAMBDA,) + tuple(EXPLORE_LAMBDAS)
                           for m, vs in _gains(rows, "lam", 0.0, lam).items() for v in vs])
        sns.pointplot(data=df, x="λ", y="gain", hue="metric", errorbar=_t_ci, dodge=0.25, capsize=0.1, ax=ax,
                      native_scale=False)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(ylabel="CLIP+Reg - CLIP (points)", title="EXPLORATORY: gain vs λ (decides nothing)")

    fig = _figure("THY-8", f"THY-8: CLIP+Reg vs CLIP, nonlinear synthetic task (MLP towers, tau={SYN_TAU:g} fixed, "
                  f"{SYN_STEPS} steps)", _acc_rows(rows, "lam", names), gains, chance=100 * chance,
                  extra=sweep if EXPLORE_LAMBDAS else None)
    ex_text = "; ".join(f"λ={lam:g}: zs {c['zero-shot']['mean']:+.2f} ± {c['zero-shot']['half']:.2g}, "
                        f"lp {c['linear probe']['mean']:+.2f} ± {c['linear probe']['half']:.2g}" for lam, c in explore.items())
    cpu = sum(r["cpu_s"] for r in rows + null_rows)
    return save_result(
        "THY-8", claim="s6-7: CLIP+Reg (one-sided positive-pair penalty) beats CLIP in zero-shot and linear-probe "
        "accuracy (CC3M: +2.06 and +1.54 points) -- here on a nonlinear synthetic task",
        prediction=f"theory world through a frozen random 2-layer tanh map, MLP towers, {SYN_STEPS} AdamW steps, "
        f"B={SYN_BATCH}, tau={SYN_TAU:g} fixed in both arms; CLIP+Reg = CLIP + (lambda/tau) mean ||f(x_i) - g(y_i)||^2 "
        f"over positive pairs (reg_over_tau: lambda scaled with tau), lambda={LAMBDA}: paired gain > 0 in zero-shot "
        "and linear probe (the paper's direction); non-inferiority at -0.5 pt reported",
        threshold=f"all of 2 metrics (k=2, CIs at {CONF:.3f}): the paired gain's CI > 0 holds, wholly <= 0 fails. "
        f"Controls: a planted gain ({100 * PLANT:g}% of CLIP's errors corrected) must hold; CLIP on other seeds vs CLIP "
        "must be inconclusive. Headroom: CLIP accuracy 5 pt away from chance and from 100%",
        measured=cis["zero-shot"], measured_text=_measured_text(cis, accs),
        verdict=final_verdict(verdict, ctrl, checks), controls=ctrl, checks=checks,
        details={"rows": rows, "control_rows": null_rows, "gains": gains, "cis": cis, "explore": explore,
                 "raw_input_probe": raw, "lambda": LAMBDA, "tau": SYN_TAU, "steps": SYN_STEPS, "cpu_s": cpu},
        figure=fig, seeds=SEEDS, wall_s=time.time() - t0,
        changed="protocol 2: tau fixed at 0.01 in both arms (protocol 1 learned tau ~0.1, where the theory predicts no "
                "benefit) and lambda scaled with tau (penalty lambda R / tau); Bonferroni over the two metrics; planted "
                "and null controls; CLIP's headroom checked",
        note=f"Mean held-out positive-pair cosine CLIP {np.mean([r['pos_cos'] for r in rows if r['lam'] == 0]):.3f} vs CLIP+Reg "
             f"{np.mean([r['pos_cos'] for r in rows if r['lam'] == LAMBDA]):.3f}. A linear probe on the raw "
             f"nonlinear input reaches {100 * raw['mean']:.1f}%."
             + (f" EXPLORATORY λ sweep (gains in points, decides nothing): {ex_text}." if ex_text else
                " (The exploratory λ sweep runs in the full tier.)"))


def test_thy8r_animal_mnist(pool):
    """CLIP+Reg vs CLIP with clipcore.train on the real animal-mnist, in a regime off the ceiling."""
    t0 = time.time()
    if not FULL:
        rec = not_run_record(t0)
        pytest.skip(rec["measured_text"])
    with tempfile.TemporaryDirectory(prefix="thy8r_") as logs:
        jobs = [(s, loss, REAL_EPOCHS, logs, s) for s in REAL_SEEDS for loss in ("multipos", "reg")]
        jobs += [(s, "multipos", POS_EPOCHS, logs, s) for s in REAL_SEEDS]            # positive control
        jobs += [(s, "multipos", REAL_EPOCHS, logs, s + NULL) for s in REAL_SEEDS]     # negative control
        rows = _pool_map(pool, real_job, jobs)
    conclude(real_record(rows, t0))


REAL_CLAIM = ("s6-7: CLIP+Reg beats CLIP in zero-shot and linear-probe accuracy (CC3M: +2.06 and +1.54 points) -- "
              "here on real data, animal-mnist")
REAL_PREDICTION = (f"clipcore.train (tiny preset, multipos, batch {REAL_BATCH}, lr {REAL_LR:g}), {REAL_EPOCHS} epochs "
                   f"(off the ceiling; the default's 8 epochs reach 98.4%), loss=reg lambda={LAMBDA} vs multipos (library "
                   "form, learned temperature); held-out test zero-shot and evaluate_checkpoint's linear probe: paired "
                   "gain > 0 in both (the paper's direction); non-inferiority at -0.5 pt reported")
REAL_THRESHOLD = (f"all of 2 metrics (k=2, CIs at {CONF:.3f}): the paired gain's CI > 0 holds, wholly <= 0 fails. "
                  f"Controls: CLIP trained {POS_EPOCHS} epochs vs {REAL_EPOCHS} (same lr, batch) must hold; CLIP on seeds "
                  f"+{NULL} vs CLIP must be inconclusive. Headroom: CLIP zero-shot in "
                  f"{100 * REAL_HEADROOM[0]:.0f}-{100 * REAL_HEADROOM[1]:.0f}%, linear probe 5 pt below 100%")


def not_run_record(t0: float) -> dict:
    """The quick tier's row: THY-8r is not run there (time budget); the paper tier decides."""
    runs = 4 * len(seeds(3, 5))
    ctrl = controls("not run", "not run", neg_clean=(), pos_detail="not run at the quick tier",
                    neg_detail="not run at the quick tier")
    check = {"name": "tier", "mean": 0.0, "ok": False,
             "text": f"not run at the quick tier ({runs} clipcore.train runs of ~35-70 CPU-s each exceed its budget)"}
    return save_result("THY-8r", claim=REAL_CLAIM, prediction=REAL_PREDICTION, threshold=REAL_THRESHOLD,
                       measured={}, measured_text="not run at the quick tier (time budget); the paper tier decides "
                       "(CLIPCORE_FULL=1: results/full/THY-8r.json)", verdict="untestable here", controls=ctrl,
                       checks=[check], seeds=[], wall_s=time.time() - t0,
                       changed="protocol 2: the quick tier no longer runs a 1-epoch smoke test that decided nothing")


def real_record(rows: list[dict], t0: float) -> dict:
    """THY-8r's verdict, controls, figure and JSON from the per-run rows of ``real_job``."""
    base = [r for r in rows if r["run_seed"] == r["seed"] and r["epochs"] == REAL_EPOCHS]
    longer = {r["seed"]: r for r in rows if r["epochs"] == POS_EPOCHS and r["epochs"] != REAL_EPOCHS}
    null = {r["seed"]: r for r in rows if r["run_seed"] != r["seed"]}
    names = {"multipos": "CLIP", "reg": "CLIP+Reg"}
    gains = _gains(base, "loss", "multipos", "reg")
    verdict, cis = _rule(gains)
    accs = _mean_acc(base, "loss", names)
    clip = {r["seed"]: r for r in base if r["loss"] == "multipos"}
    pos, pos_cis = _rule({m: [100 * (longer[s][m] - clip[s][m]) for s in REAL_SEEDS] for m in METRICS})
    neg, neg_cis = _rule({m: [100 * (null[s][m] - clip[s][m]) for s in REAL_SEEDS] for m in METRICS})
    ctrl = controls(pos, neg, pos_detail=f"CLIP {POS_EPOCHS} epochs minus CLIP {REAL_EPOCHS}: " + _ctrl_text(pos_cis),
                    neg_detail=f"CLIP on seeds +{NULL} minus CLIP: " + _ctrl_text(neg_cis))
    lo, hi = REAL_HEADROOM
    zs = [clip[s]["zero-shot"] for s in REAL_SEEDS]
    checks = [{**headroom("CLIP held-out zero-shot", zs, floor=lo, ceiling=hi, margin=0.0),
               "text": f"CLIP held-out zero-shot {100 * np.mean(zs):.1f}% "
                       f"{'within' if lo < np.mean(zs) < hi else 'OUTSIDE'} {100 * lo:.0f}-{100 * hi:.0f}%"},
              headroom("CLIP linear probe", [clip[s]["linear probe"] for s in REAL_SEEDS], ceiling=1.0, margin=0.05)]

    def val_curves(ax):
        import pandas as pd
        import seaborn as sns
        df = pd.DataFrame([{"epoch": e, "val zero-shot (%)": 100 * a, "method": names[r["loss"]]}
                           for r in base for e, a in r["val_curve"]])
        sns.lineplot(data=df, x="epoch", y="val zero-shot (%)", hue="method", marker="o", errorbar=_t_ci, ax=ax)
        ax.set(title="validation zero-shot during training (95% t-CI)")

    fig = _figure("THY-8r", f"THY-8r: CLIP+Reg vs CLIP on animal-mnist ({REAL_EPOCHS} epochs, lr {REAL_LR:g}, off the "
                  "ceiling)", _acc_rows(base, "loss", names), gains, chance=100 / len(CLASSNAMES), extra=val_curves)
    cpu = sum(r["cpu_s"] for r in rows)
    return save_result(
        "THY-8r", claim=REAL_CLAIM, prediction=REAL_PREDICTION, threshold=REAL_THRESHOLD,
        measured=cis["zero-shot"], measured_text=_measured_text(cis, accs),
        verdict=final_verdict(verdict, ctrl, checks), controls=ctrl, checks=checks,
        details={"rows": base, "control_rows": list(longer.values()) + list(null.values()), "gains": gains, "cis": cis,
                 "lambda": LAMBDA, "epochs": REAL_EPOCHS, "lr": REAL_LR, "batch_size": REAL_BATCH, "cpu_s": cpu,
                 "workers": WORKERS},
        figure=fig, seeds=REAL_SEEDS, wall_s=time.time() - t0,
        changed=f"protocol 2: a regime off the ceiling ({REAL_EPOCHS} epochs at lr {REAL_LR:g}; the default 8 epochs put "
                "both arms at 98.4%), Bonferroni over the two metrics, longer-training and null controls, headroom check",
        note=f"{base[0]['steps']} steps in all, warm-up {base[0]['warmup']} steps. Zero-shot from train() and from "
             f"evaluate_checkpoint agree: {all(abs(r['zero-shot'] - r['zero-shot (eval)']) < 1e-9 for r in rows)}. "
             f"Compute: {cpu:.0f} CPU-s over {len(rows)} runs on {WORKERS} single-threaded workers.")
