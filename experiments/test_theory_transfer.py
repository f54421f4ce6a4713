"""Claims of Chen, Deng, Li, Gu (ICLR 2024) on the linear synthetic world: THY-5 ... THY-7, zero-shot transfer
(the square loss, top-r error under shift, sparse features and false negatives), on the calibrated protocol
(experiments/README.md: one pre-registered rule, positive and negative controls, headroom checks, paired CIs,
Bonferroni for composite rules, bounds as bounds).

    pytest experiments/test_theory_transfer.py                  # quick tier (3 seeds)
    CLIPCORE_FULL=1 pytest experiments/test_theory_transfer.py  # paper tier (5-10 seeds, same regime)

Protocol (theory.world defaults: K=10 topics, 10 unique dimensions per modality, ||xi|| ~ 3 ||z||, dx=dy=32):
linear L2-normalised towers into d=16, fixed temperature, fresh i.i.d. batches, SGD (momentum 0.9) with
lr = tau (``theory.fit.train_protocol``). The regimes below were chosen on pilot seeds >= 1000 (never on the
verdict seeds) so that the zero-shot error the claims are read on is off its floor: tau = 0.01 (at tau = 0.1
every arm had error 0 and protocol 1 read that floor as a verdict). The tiers differ only by the number of
seeds (quick 3; paper 10 for THY-5 and THY-6, which cost seconds per seed, 5 for THY-7), not by the regime.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from clipcore.losses import make_loss
from experiments.common import (all_of, bound_verdict, conclude, controls, family_conf, final_verdict, fmt_ci,
                                headroom, mean_ci, paired_ci, save_result, savefig, seeds, verdict_from_ci)
from theory.derivations import square_zero_shot_error
from theory.fit import embed, fit, fresh_batches, linear_clip, train_protocol
from theory.measures import completeness, ground_truth_embed, topr_error, tv_gaussian_scale
from theory.world import World, WorldConfig
from experiments.theory_protocol import _one_thread  # noqa: F401 (the autouse fixture: one torch thread)

SEEDS = seeds(3, 5)
SEEDS_CHEAP = seeds(3, 10)  # THY-5, THY-6: a few seconds per seed, so the paper tier affords 10
NULL = 500                 # negative controls: the same arm on world/data seeds seed + NULL (never >= 1000)
EMBED, ETA0 = 16, 1.0
TAU = 0.01                 # THY-6, THY-7: the small-tau regime the theory speaks about (error off its floor)
STEPS = 1000               # SGD steps at B=32 (THY-6); THY-7 keeps B * steps = 64_000 samples seen


@functools.lru_cache(maxsize=None)
def trained(cfg: WorldConfig, tau: float, seed: int, batch: int = 32, steps: int = STEPS):
    """(world, model) of one run of the common protocol (memoised within the session)."""
    world, model, _ = train_protocol(cfg, tau, seed, steps=steps, batch_size=batch, embed_dim=EMBED, eta0=ETA0)
    return world, model


def zs_error(model, sample, prompts) -> float:
    with torch.no_grad():
        return topr_error(model.encode_image(sample.x), sample.labels, model.encode_text(prompts))


def flip_labels(labels: torch.Tensor, K: int, p: float, seed: int) -> torch.Tensor:
    """Positive controls: each label replaced by a uniformly drawn *other* class with probability p, so any
    classifier's error on the flipped labels rises by p (1 - error) - p * P(predict the drawn class | wrong),
    i.e. by about p times its accuracy: an error rise planted by construction."""
    g = torch.Generator().manual_seed(77_000 + seed)
    flip = torch.rand(len(labels), generator=g) < p
    other = (labels + torch.randint(1, K, labels.shape, generator=g)) % K
    return torch.where(flip, other, labels)


# ------------------------------------------------------------------------------------------- THY-5
def test_thy5_square_loss_fails_zero_shot():
    """T5 / Cor. 5: with E[zeta|z] != 0 and prompts with their own zeta_k, the least-squares predictor keeps the
    text-unique mean and its zero-shot error is >= 1/(3K); with E[zeta|z] = 0 it does not err (at large n).
    The paper's L2-only training (3.47 %, near chance on CC3M) is part of the verdict."""
    M, SIGMA_P = 0.5, 1.0            # E[zeta|z] = M u; prompt styles zeta_k ~ N(0, SIGMA_P^2): Bayes error ~0.33
    N_LS, N_TEST, PROMPT_DRAWS = 20_000, 5_000, 20
    NEAR_CHANCE = 0.10               # "near chance": zero-shot accuracy within 10 points of 1/K
    K3 = 3                           # composite rule: 3 parts, each CI at family_conf(3)
    t0 = time.time()
    cfg = WorldConfig(zeta_mean=M, zeta_mean_kind="shared", prompt_zeta=SIGMA_P)
    K, bound, chance_err = cfg.K, 1 / (3 * cfg.K), 1 - 1 / cfg.K
    conf = family_conf(K3)
    rows = []

    def styles(seed: int) -> list[torch.Tensor]:
        """PROMPT_DRAWS fresh prompt-style draws zeta_k ~ N(0, SIGMA_P^2 I) (K, k_zeta) for this seed: each error
        below is averaged over them, i.e. over the prompt law (what square_zero_shot_error computes)."""
        g = torch.Generator().manual_seed(90_000 + seed)
        return [SIGMA_P * torch.randn(K, cfg.k_zeta, generator=g) for _ in range(PROMPT_DRAWS)]

    def err(w: World, pred: torch.Tensor, labels: torch.Tensor, st, encode=lambda p: p) -> float:
        """Mean zero-shot error of predictions/embeddings ``pred`` over the prompt draws (``encode``: text tower)."""
        with torch.no_grad():
            return float(np.mean([topr_error(pred, labels, encode(w.prompts(z))) for z in st]))

    def ls_error(c: WorldConfig, seed: int) -> float:
        w = World(c, seed)
        tr = w.sample(N_LS, torch.Generator().manual_seed(300 + seed))
        te = w.sample(N_TEST, torch.Generator().manual_seed(10_000 + seed))
        sol = torch.linalg.lstsq(tr.x, tr.y).solution                   # (dx, dy): argmin sum ||x sol - y||^2
        return err(w, te.x @ sol, te.labels, styles(seed))

    for seed in SEEDS_CHEAP:
        w, w0 = World(cfg, seed), World(cfg.replace(zeta_mean=0.0), seed)   # same G, H; only E[zeta|z] differs
        te, te0 = (v.sample(N_TEST, torch.Generator().manual_seed(10_000 + seed)) for v in (w, w0))
        st = styles(seed)
        sq = linear_clip(cfg, EMBED, 0.1, seed=seed)                         # L2-only: both towers, square loss
        fit(sq, make_loss("square"), fresh_batches(w, 32, seed=1000 + seed), steps=STEPS, lr=0.1)
        _, clip = trained(cfg, 0.1, seed)
        with torch.no_grad():
            noise = torch.randn(N_TEST, EMBED, generator=torch.Generator().manual_seed(88_000 + seed))
            rows.append({"seed": seed, "LS": ls_error(cfg, seed), "LS, E[zeta|z]=0": ls_error(cfg.replace(zeta_mean=0.0), seed),
                         "LS, other seeds": ls_error(cfg, seed + NULL),
                         "Bayes H[z;E(zeta|z)]": err(w, w.bayes_square_predictor(te.x), te.labels, st),
                         "Bayes, E[zeta|z]=0": err(w0, w0.bayes_square_predictor(te0.x), te0.labels, st),
                         "L2-only (both towers)": err(w, sq.encode_image(te.x), te.labels, st, sq.encode_text),
                         "CLIP (tau=0.1)": err(w, clip.encode_image(te.x), te.labels, st, clip.encode_text),
                         "random embeddings": err(w, noise, te.labels, st, sq.encode_text)})   # pos control, near chance
    col = lambda k: [r[k] for r in rows]  # noqa: E731

    def rule(hi_arm, lo_arm, l2_arm):
        d = paired_ci(col(hi_arm), col(lo_arm), conf)
        v_b, (b,) = bound_verdict([[bound] * len(rows)], [col(hi_arm)], conf)     # error >= 1/(3K) as a bound
        l2 = mean_ci(col(l2_arm), conf)
        v_l2 = verdict_from_ci(l2, lower=chance_err - NEAR_CHANCE)
        return all_of(verdict_from_ci(d, lower=0.0), v_b, v_l2), d, b, l2, v_l2

    verdict, d, slack, l2, v_l2 = rule("LS", "LS, E[zeta|z]=0", "L2-only (both towers)")
    pos, d_pos, *_ = rule("Bayes H[z;E(zeta|z)]", "Bayes, E[zeta|z]=0", "random embeddings")
    d_neg = paired_ci(col("LS, other seeds"), col("LS"), conf)
    ctrl = controls(pos, verdict_from_ci(d_neg, lower=0.0),
                    pos_detail=f"the closed-form Bayes square predictor (error known, theory {square_zero_shot_error(K, M * SIGMA_P):.3f}) "
                    f"E[zeta|z]!=0 minus =0 {fmt_ci(d_pos)}, and random image embeddings for 'near chance'",
                    neg_detail=f"LS on other world seeds minus LS (paired part of the rule) {fmt_ci(d_neg)}")
    checks = [headroom("LS error with E[zeta|z]=0 (room to rise)", col("LS, E[zeta|z]=0"), ceiling=chance_err, margin=0.1),
              headroom("LS error with E[zeta|z]!=0", col("LS"), floor=0.0, ceiling=chance_err, margin=0.05)]
    predicted = square_zero_shot_error(K, M * SIGMA_P)
    long = pd.DataFrame([{"seed": r["seed"], "method": k, "error": r[k]} for r in rows for k in r if k != "seed"])
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(data=long, x="method", y="error", ax=ax, errorbar=("ci", 95))
    ax.bar_label(ax.containers[0], fmt="%.2f", padding=3)
    ax.axhline(bound, color="r", ls="--", lw=1, label="1/(3K)")
    ax.axhline(chance_err, color="gray", ls=":", lw=1, label="chance")
    ax.set(xlabel="", ylabel="zero-shot top-1 error", title=f"THY-5: square loss, E[zeta|z] = {M:g}u, prompt zeta_k ~ N(0, {SIGMA_P:g}^2)")
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.legend(loc="upper center", fontsize=8)
    rec = save_result(
        "THY-5", claim="T5 / Cor. 5: the square-loss optimum H[z; E(zeta|z)] keeps text-unique features, so its "
        "zero-shot error is >= 1/(3K); CLIP avoids this; L2-only training is near chance (CC3M: 3.47 %)",
        prediction=f"E[zeta|z] = {M:g}u (u a unit 'style' vector), prompts H[e_k; zeta_k] with zeta_k ~ N(0, {SIGMA_P:g}^2 I) "
        f"(every error averaged over {PROMPT_DRAWS} prompt draws per world), least squares on n={N_LS} pairs: error(E[zeta|z]!=0) - error(E[zeta|z]=0) > 0 (paired by world), "
        f"error(E[zeta|z]!=0) >= 1/(3K) = {bound:.3f} (a bound), and L2-only training (both towers, clipcore's "
        f"square loss, {STEPS} SGD steps, lr 0.1) near chance",
        threshold=f"all of 3 parts (k=3, CIs at {conf:.4f}): paired difference > 0; slack error - 1/(3K) > 0; "
        f"L2-only error > {chance_err - NEAR_CHANCE:.2f} (accuracy within {100 * NEAR_CHANCE:.0f} pt of chance). "
        "Controls: the rule on the closed-form Bayes predictor (and random embeddings for the L2 part) must hold; "
        "its paired part on LS vs LS with other world seeds must be inconclusive",
        measured=d, measured_text=f"LS error E[zeta|z]!=0 minus =0: {fmt_ci(d)}; LS {fmt_ci(mean_ci(col('LS')))} vs "
        f"1/(3K)={bound:.3f}; LS with E[zeta|z]=0 {fmt_ci(mean_ci(col('LS, E[zeta|z]=0')))}; Bayes "
        f"{fmt_ci(mean_ci(col('Bayes H[z;E(zeta|z)]')))} (theory {predicted:.3f}); L2-only error {fmt_ci(l2)} "
        f"(part: {v_l2}); CLIP (tau=0.1) error {fmt_ci(mean_ci(col('CLIP (tau=0.1)')))}",
        verdict=final_verdict(verdict, ctrl, checks), controls=ctrl, checks=checks,
        details={"rows": rows, "bound": bound, "bayes_error_theory": predicted, "slack": slack, "l2": l2},
        note="The square-loss failure is measured on the least-squares fit, whose error tracks the closed-form Bayes "
             "predictor (theory.derivations.square_zero_shot_error gives its expectation over prompt draws; each seed "
             "averages over prompt draws). L2-only training of both normalised linear towers reaches zero-shot error "
             f"{l2['mean']:.3f} against chance {chance_err:.2f}: "
             + ("near chance, as the paper's 3.47 % on CC3M." if v_l2 == "holds" else
                ("not near chance in this linear world (the square loss aligned the shared blocks rather than "
                 "collapsing them)" if l2["mean"] < 0.1 else "not shown near chance") + "; the paper's 3.47 % is on "
                "CC3M with deep towers."),
        changed="protocol 2: E[zeta|z] = 0.5u (was 2u: the error sat at chance, 1 - 1/K), least squares at n=20000 "
                "(E[zeta|z]=0 control now errs ~0 instead of 0.15 from estimation error), the paired difference and "
                "the L2-only part decide with the 1/(3K) bound, controls added. The L2-only error is 0 +- 0 on every "
                "seed: under the protocol's first wording a degenerate interval never failed (inconclusive); the rule "
                "now fails a degenerate interval strictly outside its range (only one ON a bound is inconclusive)",
        figure=savefig(fig, "THY-5"), seeds=SEEDS_CHEAP, wall_s=time.time() - t0)
    conclude(rec)


# ------------------------------------------------------------------------------------------- THY-6
def test_thy6_topr_error_under_shift():
    """Section 5: zero-shot top-r error under a pretraining->downstream shift of TV delta stays under
    (pretraining error) + O(delta): tested as a bound with the constant fitted on pilot seeds.

    Shift: downstream images have xi scaled by s (more image-unique content); TV(P, Q_s) <= TV(N(0, I), N(0, s^2 I))
    on the k_xi dimensions (exact chi-square formula; data processing: x is a function of (z, xi, eps))."""
    SCALES = (1.1, 1.2, 1.35)        # TV 0.17, 0.31, 0.49: well below 1, the bound is not vacuous
    C = 0.18                         # envelope constant: max (err(s) - err(1)) / TV over pilot seeds 1000-1005, r=1
    RS, N_TEST = (1, 3, 5), 20_000
    t0 = time.time()
    cfg = WorldConfig()
    tvs = [tv_gaussian_scale(cfg.k_xi, s) for s in SCALES]
    rows = []
    for seed in SEEDS_CHEAP:
        world, model = trained(cfg, TAU, seed)
        with torch.no_grad():
            cls = model.encode_text(world.prompts())
            for j, s in enumerate((1.0, *SCALES, "null")):
                gen = torch.Generator().manual_seed((40_000 if j == 0 else 41_000 + 100 * j) + seed)
                smp = world.sample(N_TEST, gen, xi_scale=1.0 if s == "null" else s)
                errs = topr_error(model.encode_image(smp.x), smp.labels, cls, RS)
                rows += [{"seed": seed, "scale": s, "tv": 0.0 if j == 0 or s == "null" else tvs[j - 1], "r": r,
                          "error": e} for r, e in errs.items()]
    err = lambda s, r=1: [x["error"] for x in rows if x["scale"] == s and x["r"] == r]  # noqa: E731
    base = np.array(err(1.0))
    measured = [err(s) for s in SCALES]
    verdict, slack = bound_verdict(measured, [list(base + C * tv) for tv in tvs])
    pos, slack_pos = bound_verdict(measured, [list(base + 1.0 * tv) for tv in tvs])   # the TV inequality itself
    neg, slack_neg = bound_verdict([err("null")] * len(SCALES), [list(base)] * len(SCALES))  # TV = 0: a new draw of P
    ctrl = controls(pos, neg, pos_detail="envelope error(0) + 1 x TV, which holds for any fixed classifier (|E_P - E_Q| "
                    "<= TV for a 0/1 loss)", neg_detail="a null shift (a fresh draw of P, TV = 0) against error(0)")
    drop = paired_ci(err(SCALES[-1], 1), err(SCALES[-1], 3))
    checks = [headroom("top-1 error at no shift", base, floor=0.0, ceiling=1 - 1 / cfg.K, margin=0.02)]
    df = pd.DataFrame([x for x in rows if x["scale"] != "null"])
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df, x="tv", y="error", hue="r", marker="o", palette="viridis", ax=ax, errorbar=("ci", 95))
    tv_grid = np.array([0.0, *tvs])
    ax.plot(tv_grid, base.mean() + C * tv_grid, "r--", lw=1, label=f"error(0) + {C:g} TV (pilot fit)")
    ax.plot(tv_grid, base.mean() + tv_grid, "k:", lw=1, label="error(0) + TV")
    ax.set(xlabel="TV of the shift (xi scaled by s)", ylabel="zero-shot top-r error", ylim=(0, None),
           title=f"THY-6: top-r error under shift, tau={TAU:g}")
    ax.legend(fontsize=8)
    rec = save_result(
        "THY-6", claim="Section 5: CLIP's zero-shot top-r error is bounded by the pretraining error plus O(delta) "
        "under a pretraining-to-downstream shift of TV delta; the bound falls as r grows",
        prediction=f"tau={TAU:g}, {STEPS} steps; shifts xi x s, s in {list(SCALES)} (TV {', '.join(f'{t:.2f}' for t in tvs)}): "
        f"top-1 error(s) <= error(no shift) + {C:g} TV at every shift",
        threshold=f"bound_verdict over the {len(SCALES)} shifts (paired slack CIs at family_conf({len(SCALES)})) > 0; "
        f"C={C:g} fitted on pilot seeds 1000-1005 (max ratio). Controls: the same rule with C=1 (the TV inequality) "
        "must hold; with a null shift (TV=0) it must be inconclusive",
        measured=slack[-1], measured_text="slack envelope - error per shift: " + "; ".join(
            f"TV {tv:.2f}: {fmt_ci(c)}" for tv, c in zip(tvs, slack)) + f"; top-1 error at no shift "
        f"{fmt_ci(mean_ci(list(base)))}, at TV {tvs[-1]:.2f} {fmt_ci(mean_ci(err(SCALES[-1])))}; top-1 minus top-3 at "
        f"TV {tvs[-1]:.2f} {fmt_ci(drop)}",
        verdict=final_verdict(verdict, ctrl, checks), controls=ctrl, checks=checks,
        details={"rows": rows, "tvs": tvs, "C": C, "slack": slack, "slack_pos": slack_pos, "slack_neg": slack_neg,
                 "top1_minus_top3": drop},
        note="'Falls as r grows' is reported (top-1 minus top-3), not part of the rule: top-r error is non-increasing "
             "in r by definition, so a test of it could only fail at a floor. The TV is an upper bound on the shift "
             "of the (image, label) law, so the envelope is if anything loose.",
        changed="protocol 2: tau=0.01 (tau=0.1 had error ~0 in every arm), small xi-scale shifts with TV <= 0.49 (was "
                "a mixture with TV up to 0.996), read as a bound with a pilot-fitted constant instead of 'slope > 0'",
        figure=savefig(fig, "THY-6"), seeds=SEEDS_CHEAP, wall_s=time.time() - t0)
    conclude(rec)


# ------------------------------------------------------------------------------------------- THY-7
def test_thy7_sparse_features_false_negatives():
    """Sparse features: with multi-hot z (s active topics) in-batch negatives share topics (false negatives);
    zero-shot error on single-topic images should rise with s and with B, at equal samples seen."""
    SPARSITIES, BATCHES, SAMPLES = (1, 3), (16, 64), 64_000
    PLANT = 0.05                     # positive control: 5 % of the test labels flipped (error rise ~5 pt)
    N_TEST, N_COMPLETE = 5_000, 2_000
    t0 = time.time()
    conf = family_conf(2)
    rows = []
    for seed in SEEDS:
        for s in SPARSITIES:
            cfg = WorldConfig(sparsity=s)
            for B in BATCHES:
                for run_seed, arm in ((seed, "verdict"), (seed + NULL, "null copy")):
                    if arm == "null copy" and B != BATCHES[-1]:
                        continue
                    world, model = trained(cfg, TAU, run_seed, batch=B, steps=SAMPLES // B)
                    te = world.sample(N_TEST, torch.Generator().manual_seed(10_000 + run_seed), sparsity=1)
                    flipped = dataclasses.replace(te, labels=flip_labels(te.labels, cfg.K, PLANT, run_seed))
                    row = {"seed": seed, "arm": arm, "s": s, "B": B, "error": zs_error(model, te, world.prompts()),
                           "planted": zs_error(model, flipped, world.prompts())}
                    if arm == "verdict":                                   # completeness: reported, not decided
                        tm = world.sample(N_COMPLETE, torch.Generator().manual_seed(20_000 + run_seed))  # multi-hot
                        row["gamma"] = completeness(*embed(model, tm), tm.z)["gamma"]
                        if B == BATCHES[0]:
                            row["gamma_star"] = completeness(*ground_truth_embed(world, tm), tm.z)["gamma"]
                    rows.append(row)

    def e(s, B, arm="verdict", key="error"):
        return [r[key] for r in rows if r["s"] == s and r["B"] == B and r["arm"] == arm and key in r]
    d_s = paired_ci(e(3, 64), e(1, 64), conf)
    d_b = paired_ci(e(3, 64), e(3, 16), conf)
    verdict = all_of(verdict_from_ci(d_s, lower=0.0), verdict_from_ci(d_b, lower=0.0))
    p_s, p_b = paired_ci(e(1, 64, key="planted"), e(1, 64), conf), paired_ci(e(3, 16, key="planted"), e(3, 16), conf)
    n_s, n_b = paired_ci(e(1, 64, "null copy"), e(1, 64), conf), paired_ci(e(3, 64, "null copy"), e(3, 64), conf)
    ctrl = controls(all_of(verdict_from_ci(p_s, lower=0.0), verdict_from_ci(p_b, lower=0.0)),
                    all_of(verdict_from_ci(n_s, lower=0.0), verdict_from_ci(n_b, lower=0.0)),
                    pos_detail=f"{100 * PLANT:g}% of the test labels flipped (planted rise) in the two baseline arms: "
                    f"{fmt_ci(p_s)}, {fmt_ci(p_b)}",
                    neg_detail=f"the s=1 and s=3 arms at B=64 against copies on world seeds +{NULL}: {fmt_ci(n_s)}, {fmt_ci(n_b)}")
    arms = [(s, B) for s in SPARSITIES for B in BATCHES]
    checks = [headroom("mean zero-shot error over the four arms", [np.mean([np.mean(e(s, B)) for s, B in arms])],
                       floor=0.0, margin=0.02),
              headroom("zero-shot error at s=1, B=64 (room to rise)", e(1, 64), ceiling=0.9, margin=0.1),
              headroom("zero-shot error at s=3, B=16 (room to rise)", e(3, 16), ceiling=0.9, margin=0.1)]
    gm = {(s, B): mean_ci(e(s, B, key="gamma")) for s, B in arms}
    gs = {s: mean_ci(e(s, BATCHES[0], key="gamma_star")) for s in SPARSITIES}
    df = pd.DataFrame([r for r in rows if r["arm"] == "verdict"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sns.barplot(data=df, x="s", y="error", hue="B", ax=axes[0], errorbar=("ci", 95), palette="viridis")
    for cont in axes[0].containers:
        axes[0].bar_label(cont, fmt="%.3f", padding=2)
    axes[0].set(xlabel="active topics s (training)", ylabel="zero-shot top-1 error (one-topic images)",
                title=f"THY-7: tau={TAU:g}, {SAMPLES} samples seen")
    gam = [{"s": r["s"], "encoder": f"CLIP, B={r['B']}", "gamma": r["gamma"]} for r in rows if r["arm"] == "verdict"]
    gam += [{"s": r["s"], "encoder": "ground truth", "gamma": r["gamma_star"]} for r in rows
            if r["arm"] == "verdict" and r["B"] == BATCHES[0]]
    sns.barplot(data=pd.DataFrame(gam), x="s", y="gamma", hue="encoder", ax=axes[1], errorbar=("ci", 95))
    axes[1].set(xlabel="active topics s", ylabel="gamma (5% quantile of the margin)",
                title="completeness on held-out multi-hot pairs")
    rec = save_result(
        "THY-7", claim="Sparse features: in-batch negatives that share a topic with the positive (false negatives) "
        "degrade completeness and zero-shot transfer, more so with more active topics s and larger B",
        prediction=f"tau={TAU:g}, s in {list(SPARSITIES)}, B in {list(BATCHES)} at equal samples seen ({SAMPLES}: "
        f"{SAMPLES // 16} steps at B=16, {SAMPLES // 64} at B=64): single-topic zero-shot error err(s=3,B=64) > "
        "err(s=1,B=64) and > err(s=3,B=16)",
        threshold=f"all of 2 paired differences > 0 (k=2, CIs at {conf:.3f}). Controls: a planted {100 * PLANT:g}% "
        "label flip in the baseline arms must hold; copies of the arms on other world seeds must be inconclusive",
        measured=d_s, measured_text=f"err(s=3)-err(s=1) at B=64: {fmt_ci(d_s)}; err(B=64)-err(B=16) at s=3: {fmt_ci(d_b)}; "
        + "; ".join(f"err(s={s},B={B}) {fmt_ci(mean_ci(e(s, B)))}" for s, B in arms) + "; gamma ground truth "
        + ", ".join(f"s={s}: {fmt_ci(c)}" for s, c in gs.items()) + "; CLIP "
        + ", ".join(f"s={s},B={B}: {fmt_ci(c)}" for (s, B), c in gm.items()),
        verdict=final_verdict(verdict, ctrl, checks), controls=ctrl, checks=checks,
        details={"rows": rows, "d_s": d_s, "d_b": d_b}, figure=savefig(fig, "THY-7"), seeds=SEEDS,
        wall_s=time.time() - t0,
        note="Completeness (gamma) is reported, not decided: the ground truth's own gamma falls with s (unit-norm "
             "multi-hot z shares topics), so a falling gamma is partly the world's geometry. Equal samples seen means "
             "4x more SGD steps at B=16 (same lr = tau); that difference is part of the comparison the claim asks for.",
        changed="protocol 2: tau=0.01 (tau=0.1 had error 0 in every arm: protocol 1 read the floor as 'fails'), "
                "batch sizes compared at equal samples seen, paired CIs with Bonferroni, planted and null controls")
    conclude(rec)
