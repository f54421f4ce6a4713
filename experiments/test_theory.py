"""Claims of Chen, Deng, Li, Gu (ICLR 2024) on the linear synthetic world: THY-1 ... THY-4, generalisation at a
fixed batch size, alignment and suppression, margins and the positive-pair regulariser (theory.md sections 5, 8).

    pytest experiments/test_theory.py                  # quick tier (3 seeds)
    CLIPCORE_FULL=1 pytest experiments/test_theory.py  # paper tier (5 seeds, more steps)

One test per claim; every threshold below was written before the first run. The common protocol (world, towers,
optimiser, temperature) is in experiments/theory_protocol.py; THY-5 ... 7 are in test_theory_transfer.py.
"""
from __future__ import annotations

import functools
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from clipcore.losses import make_loss
from experiments.common import conclude, fmt_ci, mean_ci, save_result, savefig, tier, verdict_from_ci
from theory.fit import batch_loss, fit, fixed_batches, linear_clip, population_loss, weights
from theory.measures import class_alignment, suppression
from theory.world import World
from experiments.theory_protocol import (  # noqa: F401 (_one_thread: the autouse fixture)
    BASE, EMBED, SEEDS, TAUS, _all_verdicts, _df, _mean, _one_thread, median_margin, trained)


# ------------------------------------------------------------------------------------------- THY-1
def test_thy1_fixed_batch_generalisation():
    """T1: at fixed B the train-test gap of the CLIP loss falls with n; log-log slope near -1/2 ([RECON] sqrt(B/n))."""
    SLOPE_RANGE = (-0.8, -0.2)                     # pre-registered: "near -1/2", for every B
    t0 = time.time()
    Bs, ns = (8, 32, 128), tier((256, 512, 1024, 2048), (256, 512, 1024, 2048, 4096, 8192))
    steps, tau, lf = tier(150, 600), 0.1, make_loss("clip")
    rows, slopes = [], {B: [] for B in Bs}
    for seed in SEEDS:
        world = World(BASE, seed)
        for B in Bs:
            gaps = []
            for n in ns:
                s = world.sample(n, torch.Generator().manual_seed(100 + seed))
                model = linear_clip(BASE, EMBED, tau, seed=seed)
                fit(model, lf, fixed_batches(s.x, s.y, B), steps=steps, lr=0.03, opt="adam")
                with torch.no_grad():
                    train = batch_loss(model, lf, *fixed_batches(s.x, s.y, B)(0)).item()
                test = population_loss(model, lf, world, B, 16384, seed=20_000 + seed)
                gaps.append(test - train)
                rows.append({"seed": seed, "B": B, "n": n, "train": train, "test": test, "gap": test - train})
            keep = np.array(gaps) > 0                  # a gap <= 0 is below the Monte-Carlo noise: left out
            slopes[B].append(float(np.polyfit(np.log(np.array(ns)[keep]), np.log(np.array(gaps)[keep]), 1)[0])
                             if keep.sum() >= 2 else math.nan)
    cis = {B: mean_ci(slopes[B]) for B in Bs}
    verdict = _all_verdicts(*(verdict_from_ci(cis[B], *SLOPE_RANGE) for B in Bs))
    pooled = mean_ci([np.mean([slopes[B][i] for B in Bs]) for i in range(len(SEEDS))])
    gap_at = lambda B, n: _mean([r["gap"] for r in rows if r["B"] == B and r["n"] == n])  # noqa: E731
    params = EMBED * (BASE.dx + BASE.dy)
    note = (f"The gap falls {'faster than' if pooled['hi'] < -0.5 else 'about as fast as' if pooled['lo'] < -0.5 else 'slower than'} "
            f"n^-1/2: about n^{pooled['mean']:.2f} (a {params}-parameter model, n/p from {ns[0] / params:.2g} to "
            f"{ns[-1] / params:.2g}). T1's uniform convergence (an upper bound) allows this; the [RECON] rate sqrt(B/n) "
            f"is not what is observed. At n={ns[-1]} gap(B={Bs[-1]}) / gap(B={Bs[0]}) = {gap_at(Bs[-1], ns[-1]) / gap_at(Bs[0], ns[-1]):.2f}.")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(data=_df(rows), x="n", y="gap", hue="B", marker="o", palette="viridis", ax=ax, errorbar=("ci", 95))
    ax.set(xscale="log", yscale="log", xlabel="n training pairs (n/B fixed batches)", ylabel="test - train CLIP loss",
           title="THY-1: generalisation gap at fixed B")
    xs = np.array(ns, float)
    ax.plot(xs, _mean([r["gap"] for r in rows if r["n"] == ns[0]]) * (xs / xs[0]) ** -0.5, "k--", lw=1, label="slope -1/2")
    ax.legend(title="B")
    rec = save_result(
        "THY-1", claim="T1: at fixed batch size B the empirical CLIP loss over n/B disjoint batches converges to the "
        "population loss as n grows (no B -> inf needed)",
        prediction="train-test gap falls with n at each B in {8,32,128}; log-log slope near -1/2 ([RECON] sqrt(B/n))",
        threshold=f"95% CI of the slope inside {list(SLOPE_RANGE)} for every B",
        measured=pooled, measured_text="log-log slope of the gap vs n: " + "; ".join(f"B={B}: {fmt_ci(cis[B])}" for B in Bs)
        + f" (gap falls with n at every B: {all(cis[B]['hi'] < 0 for B in Bs)})",
        verdict=verdict, details={"slopes": slopes, "rows": rows, "steps": steps, "tau": tau}, note=note,
        figure=savefig(fig, "THY-1"), seeds=SEEDS, wall_s=time.time() - t0)
    conclude(rec)


# ------------------------------------------------------------------------------------------- THY-2
def test_thy2_alignment_and_suppression():
    """T2 / Lemma 1: after CLIP training the response to xi and zeta is small relative to the shared block and
    the class embeddings of the two modalities are aligned."""
    RATIO_MAX, ALIGN_MIN, TAU = 0.2, 0.9, 0.1     # pre-registered, at tau = 0.1 (ratios are ~1 at init)
    t0 = time.time()
    ri, rt, al, rows, traj_rows = [], [], [], [], []
    for seed in SEEDS:
        for tau in (0.02, 0.1, 0.2):
            world, model, traj = trained(BASE, tau, seed)
            b = world.blocks(*weights(model))
            sup, align = suppression(b), class_alignment(b)
            rows.append({"seed": seed, "tau": tau, **sup, "align_mean": align.mean().item(), "align_min": align.min().item()})
            traj_rows += [{"seed": seed, "tau": tau, **t} for t in traj]
            if tau == TAU:
                ri.append(sup["ratio_img"]), rt.append(sup["ratio_txt"]), al.append(align.mean().item())
    ci_i, ci_t, ci_a = mean_ci(ri), mean_ci(rt), mean_ci(al)
    verdict = _all_verdicts(verdict_from_ci(ci_i, upper=RATIO_MAX), verdict_from_ci(ci_t, upper=RATIO_MAX),
                            verdict_from_ci(ci_a, lower=ALIGN_MIN))
    names = {"ratio_img": "image: |W G_xi| / |W G_z| (rms)", "ratio_txt": "text: |V H_zeta| / |V H_z| (rms)",
             "align": "mean_k cos(W G e_k, V H e_k)"}
    df = _df(traj_rows).rename(columns=names).melt(id_vars=["seed", "tau", "step"], value_vars=list(names.values()))
    g = sns.relplot(data=df, x="step", y="value", hue="tau", col="variable", kind="line", palette="viridis",
                    height=3.2, aspect=1.1, facet_kws={"sharey": False}, errorbar=("ci", 95))
    g.set_titles("{col_name}")
    g.set_axis_labels("SGD step", "")
    g.figure.suptitle("THY-2: unique-feature response and cross-modal class alignment during CLIP training", y=1.04)
    rec = save_result(
        "THY-2", claim="T2 / Lemma 1: CLIP training suppresses the unique features xi, zeta and aligns the class "
        "embeddings of the two modalities",
        prediction=f"at tau={TAU}: rms response to xi and to zeta <= {RATIO_MAX} x the shared block's (about 1 at "
        f"init); mean_k cos(WG[e_k;0], VH[e_k;0]) >= {ALIGN_MIN}",
        threshold=f"95% CIs: ratios <= {RATIO_MAX}, alignment >= {ALIGN_MIN}",
        measured=ci_i, measured_text=f"xi ratio {fmt_ci(ci_i)}; zeta ratio {fmt_ci(ci_t)}; class cos {fmt_ci(ci_a)}",
        verdict=verdict, details={"final": rows, "trajectory": traj_rows}, figure=savefig(g.figure, "THY-2"),
        seeds=SEEDS, wall_s=time.time() - t0)
    conclude(rec)


# ------------------------------------------------------------------------------------------- THY-3
def test_thy3_margin_grows_with_tau():
    """Cor. 3 / T6: plain CLIP's margin grows roughly linearly with tau and stays well below gamma*."""
    SLOPE_RANGE = (0.4, 1.5)                       # pre-registered log-log slope of median margin vs tau
    RATIO_AT_001, RATIO_UP_TO_01 = 0.25, 0.5       # margin / gamma* at tau=0.01, and at every tau <= 0.1
    t0 = time.time()
    rows, slopes, r001, rmax = [], [], [], []
    for seed in SEEDS:
        ms = []
        for tau in TAUS:
            world, model, _ = trained(BASE, tau, seed)
            m, gstar = median_margin(world, model, seed)
            ms.append(m)
            rows.append({"seed": seed, "tau": tau, "margin": m, "gamma_star": gstar, "ratio": m / gstar})
        pos = [(t, m) for t, m in zip(TAUS, ms) if m > 0]
        slopes.append(float(np.polyfit(np.log([t for t, _ in pos]), np.log([m for _, m in pos]), 1)[0])
                      if len(pos) >= 2 else math.nan)
        rat = [r["ratio"] for r in rows if r["seed"] == seed]
        r001.append(rat[0]), rmax.append(max(r for t, r in zip(TAUS, rat) if t <= 0.1))
    all_pos = all(r["margin"] > 0 for r in rows)
    ci_s, ci_1, ci_m = mean_ci(slopes), mean_ci(r001), mean_ci(rmax)
    verdict = _all_verdicts(verdict_from_ci(ci_s, *SLOPE_RANGE) if all_pos else "fails",
                            verdict_from_ci(ci_1, upper=RATIO_AT_001), verdict_from_ci(ci_m, upper=RATIO_UP_TO_01))
    mm = [_mean([r["margin"] for r in rows if r["tau"] == tau]) for tau in TAUS]
    ratio_top = _mean([r["ratio"] for r in rows if r["tau"] == TAUS[-1]])
    note = (f"Mean median margin per tau {dict(zip(TAUS, [round(m, 3) for m in mm]))}; "
            f"{'it rises monotonically with tau' if all(a < b for a, b in zip(mm, mm[1:])) else 'it is not monotone in tau'}, "
            f"reaching {ratio_top:.2f} gamma* at tau={TAUS[-1]}. Margins <= 0 at small tau mean no separation from the "
            "hardest of ~1800 held-out negatives (THY-2: xi, zeta are not suppressed there). Direction of Cor. 3 / T6: "
            "seen; the pre-registered near-linear shape and 'margin <= gamma*/2 up to tau=0.1': see the verdict.")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(data=_df(rows), x="tau", y="margin", marker="o", ax=ax, label="CLIP (median held-out margin)", errorbar=("ci", 95))
    sns.lineplot(data=_df(rows), x="tau", y="gamma_star", ax=ax, color="k", ls="--", label="ground truth gamma*", errorbar=None)
    ax.set(xscale="log", xlabel="temperature tau", ylabel="margin (cosine scores)", title="THY-3: CLIP margin vs tau")
    rec = save_result(
        "THY-3", claim="Cor. 3 / T6: the CLIP margin is only ~O(tau): it shrinks with tau and stalls far below the "
        "ground truth's gamma (gradients vanish once gap/tau is large)",
        prediction=f"median held-out margin vs tau in {list(TAUS)}: log-log slope in {list(SLOPE_RANGE)}; "
        f"margin/gamma* <= {RATIO_AT_001} at tau=0.01 and <= {RATIO_UP_TO_01} for all tau <= 0.1",
        threshold="95% CIs inside those ranges; all median margins > 0",
        measured=ci_s, measured_text=f"slope {fmt_ci(ci_s)}; margin/gamma* at 0.01: {fmt_ci(ci_1)}; "
        f"max over tau<=0.1: {fmt_ci(ci_m)}", verdict=verdict, details={"rows": rows, "slopes": slopes}, note=note,
        figure=savefig(fig, "THY-3"), seeds=SEEDS, wall_s=time.time() - t0)
    conclude(rec)


# ------------------------------------------------------------------------------------------- THY-4
REG_TAU, REG_LAMBDAS, REG_PRIMARY = 0.01, (0.01, 0.1, 1.0), 0.1
# Two-stage protocol. THY-4 is the pre-registered test at lambda = REG_PRIMARY. Its first run showed no effect
# at lambda <= 0.1 and a large one at lambda = 1, so lambda = REG_SELECTED was then *selected* on THY-4's seeds
# and confirmed on fresh worlds/seeds (THY-4b, same thresholds); the control THY-4c was moved to that lambda
# (at 0.1 no variant moved the margin: pos-neg -0.010 +- 0.023, pos-both 0.0004 +- 0.0044, inconclusive).
REG_SELECTED = 1.0
CONFIRM_SEEDS = [100 + s for s in SEEDS]
REG_FACTOR, REG_GAMMA_FRAC = 2.0, 0.3             # pre-registered: reg >= 2 x CLIP, and reg >= 0.3 gamma*


@functools.lru_cache(maxsize=None)
def _reg_runs(seed_list: tuple, runs: tuple):
    rows = []
    for seed in seed_list:
        base, gstar = median_margin(*trained(BASE, REG_TAU, seed)[:2], seed)
        rows.append({"seed": seed, "method": "CLIP", "pairs": "-", "lam": 0.0, "margin": base, "gamma_star": gstar})
        for pairs, lam in runs:
            world, model, _ = trained(BASE, REG_TAU, seed, loss="reg", lam=lam, pairs=pairs)
            rows.append({"seed": seed, "method": f"Reg-{pairs}", "pairs": pairs, "lam": lam,
                         "margin": median_margin(world, model, seed)[0], "gamma_star": gstar})
    return rows


def _explore_runs():
    return _reg_runs(tuple(SEEDS), tuple(("pos", lam) for lam in REG_LAMBDAS)
                     + (("neg", REG_SELECTED), ("both", REG_SELECTED)))


def _margin_of(rows, seed, method, lam):
    return next(r["margin"] for r in rows if r["seed"] == seed and r["method"] == method and r["lam"] == lam)


def _reg_claim(claim_id: str, rows, seed_list, lam: float, prediction: str, t0: float, extra: str = "",
               note: str = "") -> dict:
    reg = [_margin_of(rows, s, "Reg-pos", lam) for s in seed_list]
    clip = [_margin_of(rows, s, "CLIP", 0.0) for s in seed_list]
    gstar = [next(r["gamma_star"] for r in rows if r["seed"] == s) for s in seed_list]
    ci_d = mean_ci([r - REG_FACTOR * c for r, c in zip(reg, clip)])
    ci_f, ci_reg, ci_clip = mean_ci([r / g for r, g in zip(reg, gstar)]), mean_ci(reg), mean_ci(clip)
    verdict = _all_verdicts(verdict_from_ci(ci_d, lower=0.0), verdict_from_ci(ci_f, lower=REG_GAMMA_FRAC))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    df = _df(rows)
    df["run"] = [f"{m}\nλ={l:g}" if m != "CLIP" else "CLIP" for m, l in zip(df["method"], df["lam"])]
    sns.barplot(data=df, x="run", y="margin", hue="method", ax=ax, errorbar=("ci", 95), legend=False)
    ax.axhline(_mean(df["gamma_star"]), color="k", ls="--", lw=1, label="ground truth gamma*")
    ax.set(xlabel="", ylabel="median held-out margin (cosine)",
           title=f"{claim_id}: margin at tau={REG_TAU}, CLIP vs CLIP+Reg (seeds {seed_list[0]}..)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend()
    return save_result(
        claim_id, claim="T7: adding the one-sided positive-pair penalty lambda ||f(x)-g(y)||^2 lifts the margin to "
        "~Omega(gamma), where plain CLIP's stalls at ~O(tau)", prediction=prediction,
        threshold=f"95% CI of (m_reg - {REG_FACTOR} m_clip) > 0 and of m_reg/gamma* > {REG_GAMMA_FRAC}",
        measured=ci_f, measured_text=f"m_reg {fmt_ci(ci_reg)} vs m_clip {fmt_ci(ci_clip)}; m_reg/gamma* {fmt_ci(ci_f)}"
        + extra, verdict=verdict, details={"rows": rows, "lambda": lam}, figure=savefig(fig, claim_id), note=note,
        seeds=list(seed_list), wall_s=time.time() - t0)


def test_thy4_regulariser_raises_margin():
    """T7 (pre-registered lambda): at small tau the positive-pair regulariser lifts the margin to the order of gamma."""
    t0 = time.time()
    rows = [r for r in _explore_runs() if r["method"] in ("CLIP", "Reg-pos")]
    sweep = {lam: mean_ci([_margin_of(rows, s, "Reg-pos", lam) for s in SEEDS]) for lam in REG_LAMBDAS}
    by_lam = ", ".join(f"{lam:g}: {c['mean']:.3f}" for lam, c in sweep.items())
    conclude(_reg_claim(
        "THY-4", rows, SEEDS, REG_PRIMARY, t0=t0,
        prediction=f"tau={REG_TAU}, lambda={REG_PRIMARY} (reg_over_tau): median margin >= {REG_FACTOR} x CLIP's and "
        f">= {REG_GAMMA_FRAC} gamma*; lambda sweep {list(REG_LAMBDAS)} reported",
        extra="; sweep " + ", ".join(f"λ={lam:g}: {fmt_ci(c)}" for lam, c in sweep.items()),
        note=f"Margins by lambda: {by_lam} "
             f"(CLIP alone: {_mean([_margin_of(rows, k, 'CLIP', 0.0) for k in SEEDS]):.3f}); the selected lambda="
             f"{REG_SELECTED:g} is confirmed on fresh seeds in THY-4b."))


def test_thy4b_regulariser_confirmed_on_fresh_seeds():
    """T7 at the lambda selected on THY-4's seeds, confirmed on fresh worlds and seeds."""
    t0 = time.time()
    rows = _reg_runs(tuple(CONFIRM_SEEDS), (("pos", REG_SELECTED),))
    conclude(_reg_claim(
        "THY-4b", rows, CONFIRM_SEEDS, REG_SELECTED, t0=t0,
        prediction=f"tau={REG_TAU}, lambda={REG_SELECTED} (the best of THY-4's sweep, selected on its seeds), fresh "
        f"seeds {CONFIRM_SEEDS}: median margin >= {REG_FACTOR} x CLIP's and >= {REG_GAMMA_FRAC} gamma*"))


def test_thy4_control_negatives():
    """Missing ablation: penalising negatives (clipcore's `neg`: mean ||f_i - g_j||^2, i != j) or both does not
    give the positive-only penalty's gain (reported whichever way it comes out)."""
    t0 = time.time()
    rows = _explore_runs()
    lam = REG_SELECTED
    gains = {p: [_margin_of(rows, s, "Reg-pos", lam) - _margin_of(rows, s, f"Reg-{p}", lam) for s in SEEDS]
             for p in ("neg", "both")}
    cis = {p: mean_ci(v) for p, v in gains.items()}
    verdict = _all_verdicts(*(verdict_from_ci(c, lower=0.0) for c in cis.values()))
    margins_by = {m: mean_ci([_margin_of(rows, s, m, lam) for s in SEEDS]) for m in ("Reg-pos", "Reg-neg", "Reg-both")}
    fig, ax = plt.subplots(figsize=(5, 4))
    df = _df([r for r in rows if r["lam"] in (0.0, lam)])
    sns.barplot(data=df, x="method", y="margin", ax=ax, errorbar=("ci", 95))
    ax.bar_label(ax.containers[0], fmt="%.2f", padding=3)
    ax.axhline(_mean(df["gamma_star"]), color="k", ls="--", lw=1, label="ground truth gamma*")
    ax.set_ylim(top=1.1)
    ax.set(xlabel="", ylabel="median held-out margin (cosine)", title=f"THY-4c: which pairs to penalise (λ={lam:g}, tau={REG_TAU})")
    ax.legend()
    collapsed = [p for p in ("neg", "both") if abs(margins_by[f"Reg-{p}"]["mean"]) < 0.01]
    note = ((f"With the penalty on {' and '.join(collapsed)} (clipcore's `neg` term is mean ||f_i - g_j||^2, i != j, which "
             "pulls negative pairs together) the embeddings collapse: margin ~0. " if collapsed else "")
            + "Only the positive-pair penalty lifts the margin.")
    rec = save_result(
        "THY-4c", claim="Ablation the paper lacks: the penalty must be on positive pairs only; on negatives "
        "(or on both) it does not give the same margin gain",
        prediction=f"tau={REG_TAU}, lambda={lam:g} (moved from the pre-registered 0.1, where nothing moved): "
        "margin(pos) > margin(neg) and > margin(both)",
        threshold="95% CI of the paired difference pos - neg and pos - both > 0",
        measured=cis["neg"], measured_text=f"pos-neg {fmt_ci(cis['neg'])}; pos-both {fmt_ci(cis['both'])}; margins "
        + ", ".join(f"{m}: {fmt_ci(c)}" for m, c in margins_by.items()),
        verdict=verdict, details={"gains": gains, "rows": rows}, figure=savefig(fig, "THY-4c"), seeds=SEEDS, note=note,
        wall_s=time.time() - t0)
    conclude(rec)
