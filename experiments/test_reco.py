"""RECO-1..6 (and RECO-3m): retrieval-enhanced fusion on a frozen, TRAINED CLIP (docs/methods.md, RECO §7), on the
calibrated protocol (experiments/README.md), in the long-tail world of theory.longtail.

    pytest experiments/test_reco.py                   # quick tier: 3 seeds, RECO: 2,000 queries x 6 epochs
    CLIPCORE_FULL=1 pytest experiments/test_reco.py   # paper tier: 5 seeds, RECO: 4,000 queries x 12 epochs

World and base (defaults of theory.longtail.LongTailConfig, chosen on pilot seeds 1000-1001, see History). 8 groups x
16 sibling classes (C = 128): 4 head classes per group, 6 train-rare, 6 eval-rare (48 evaluated classes). The base
CLIP (linear towers, D = 32) is TRAINED by clipcore.train (``train(TrainConfig, task=...)``, clipcore's default
multi-positive InfoNCE, 10 epochs at lr 5e-3, batch 256) on 1000 pairs per head class; rare classes are absent from
its pretraining, and it knows them only as far as their names describe their look (``name_info`` 0.75). Web-like
memory: N = 20,000 pairs, relevance 3 % (share from the 48 evaluated classes: ~12 per class), caption label noise
15 % (a wrong caption names a head sibling), image noise 0.8 (image->image precision@10 on the evaluated classes
~0.55 on pilots, reported per run). The memory is de-duplicated against the evaluation images at image cosine
> 0.99 (the count removed and the near-duplicate check -- each evaluation image's best cosine to the memory, the
number above 0.95 -- are reported in RECO-1's details).

RECO: k = 10, one pre-norm layer (4 heads, width 32, MLP ratio 4, zero-init), pair-level NCE (no labels, as on web
pairs), l1 = l2 = l3 = 1, trained by clipcore.train (AdamW lr 2e-3, batch 128) on training queries drawn from
the memory's head and train-rare pairs (quick tier 2,000, paper tier 4,000), own pair excluded. Evaluation: 20 fresh images per evaluated class
(960), zero-shot over all 128 classes with refined images and refined prompts; a second independent test draw
(test2) gives the null. Accuracies in points (100 x), arms paired by seed.

Pre-registered rules (95 % t-CIs; composite rules of k parts use each CI at family_conf(k), all_of):
- RECO-1  gain(RECO - base) on the evaluated classes > 5 pt (project threshold; the paper: +10.9 Cars, +10.2 CUB;
          the row also prints the base's zero-shot accuracy there). pos: RECO evaluated with an ORACLE memory
          (N pairs, half from the evaluated classes, no image noise, no label noise) vs base must hold. neg: RECO
          evaluated with a memory of ANOTHER WORLD (same sizes, another seed's world, embedded by this base) vs
          base: clean if fails or inconclusive (threshold away from 0).
- RECO-2  the paper's full order, k = 3: RECO - (cross search + cross fusion) > 0; (cross + cross) - base > 0;
          (uni search + uni fusion) - base < 2 pt ("base >~ uni + uni"). Primary at alpha = 1; the same models at
          alpha = 0.5 score mixing are reported (decide nothing).
- RECO-3  the paper's capacity control: RECO - adapter > 0, adapter = an MLP of the layer's size on the query
          alone (fuser="adapter"), same loss, queries and schedule, no retrieval at inference (paper, CUB: base
          52.8, MLP 44.8, RECO 63.0; base - adapter is reported).
- RECO-3m the project's MLP fuser (sees the mean of the hits), where neighbours differ in relevance: k = 30 in the
          same noisy memory (~12 relevant items per class, precision@30 reported): RECO(k=30) - MLP(k=30) > 0.
- RECO-4  sparse training memory: a memory of N = 200,000 pairs (same world parameters); RECO trained with neighbours
          from a 1 % sample (2,000 pairs; the minimum same-class count per training class is reported and must
          be >= k, a check), evaluated with all of it: k = 2: gain over base > 0 and > the same model evaluated
          with the 1 % sample.
- RECO-5  the main RECO, evaluation memory swapped, k = 3: gain(100 % of N) - gain(10 %) > 0; gain(relevance 5 %) -
          gain(relevance 1 %) > 0; irrelevant memory (relevance 0): |gain| < 2 pt (two-sided; the harm reported).
- RECO-6  retrieval on the 960 test pairs: relative error reduction of recall@1, RER = (R_refined - R_base) /
          (1 - R_base), t->i minus i->t > 0 (x 100). Check: base recall symmetric, |base t->i - i->t| < 5 pt.
Controls, decided by each claim's own rule on the same seeds. Positive (RECO-2..6): the rule on arms where the
effect is planted (each error of the lower arm corrected with probability 0.15, for an order part of RECO-2 on
the arm it should beat; a "< 2 pt" part: base against itself). Negative (RECO-2..6): every part replaced by the
null base(test2) - base(test) (RECO-6: RER t->i on test2 - on test); clean = neither holds nor fails (RECO-1:
fails or inconclusive). Headroom (margin 0.05 unless said): the base's accuracy off chance (1/128) and 100 %;
RECO's, the adapter's, the MLP's and the 10 % / 1 % arms' off 100 % (margin 0.02); base recall@1 off 0 and
1 (margin 0.01).
Jobs: one base per seed (stage 1), then one job per (seed, arm) (stage 2), 2 single-threaded spawn workers;
every job is deterministic in its seed.

History. Protocol 1 (b02d885) used a hand-built base whose rare classes had private image directions, a clean
caption identity and a 30 %-relevant memory (search precision ~0.85): RECO-1/2 held by construction (+37-42 pt),
RECO-3 compared a fuser that sees the hits, RECO-4's 1 % was 40 pairs. Pilots for protocol 2 (seeds 1000-1001,
base and search only, nothing chosen on a RECO gain): with rare classes in pretraining (4-12 pairs) the trained
linear base learned them to 80-90 % (Adam on one-hot names); with a one-hot caption a wrong caption pointing at a
rare sibling moved rare names onto head images (head accuracy 40 %): names became distributed codes and wrong
captions name head siblings. With 2 head classes per group the base's rare-class accuracy jumped between 4 and
47 % with the image noise; 4 head classes per group made it graded in ``name_info`` (0.3: 7 %, 0.5: 17 %, 0.75:
39 %, 0.85: 63 %): 0.75 (near CLIP-B/32's 52.8 % on CUB, off floor and ceiling). Image noise 0.8 puts image->image
precision@10 at ~0.55 (0.6: ~0.8). No memory image was a near-duplicate of a test image (best cosine <= 0.98; 5 %
above 0.95, same-class images): the de-dup threshold is 0.99. Base recall@1 on pilots: t->i 4.5 %, i->t 7.9 %
(caption noise in its own input dimensions is filtered by the trained tower, so it does not move them). A dry run
of this whole file on pilot seeds 1000-1001 (results not saved) checked the plumbing and the cost (~140 s wall for
2 seeds on the shared machine); nothing was changed after it. The first quick-tier run (commit dee4068, 4,000
queries) took 211 s wall on the loaded machine (357 CPU-s; the protocol-1 file took ~13-36 s), so the quick tier
now trains on 2,000 queries (half the steps); the paper tier and every rule, threshold and control are unchanged.
That run's verdicts (RECO-1 holds, -2 inconclusive, -3 holds, -3m inconclusive, -4 holds, -5 fails, -6 holds) are
in git history (the commit after dee4068).
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from experiments.common import (all_of, conclude, controls, family_conf, final_verdict, headroom, paired_ci,
                                save_result, savefig, seeds, tier, verdict_from_ci)

SEEDS = seeds(3, 5)
EPOCHS = tier(6, 12)                 # RECO training epochs
QUERIES = tier(2000, 4000)           # RECO training queries (the quick tier's cost: see History)
BASE_EPOCHS, BASE_LR = 10, 5e-3
N_MEMORY, RELEVANCE, K, K_WIDE = 20_000, 0.03, 10, 30
RELEVANCES = (0.0, 0.01, 0.05)       # RECO-5 (0: the irrelevant memory); RELEVANCE is the main memory
SIZE_SMALL = 0.1                     # RECO-5: share of the memory
N_SPARSE, TRAIN_FRACTION = 200_000, 0.01   # RECO-4
ORACLE_RELEVANCE = 0.5
OTHER_WORLD = 500                    # RECO-1 negative control: the world of seed + 500
TEST_PER_CLASS = 20
DEDUP, DUP_REPORT = 0.99, 0.95
ALPHA_OPTION = 0.5                   # RECO-2: reported, decides nothing
PLANT = 0.15                         # positive controls: share of the lower arm's errors corrected
GAIN_MIN, BAND, SYMMETRY_MAX = 5.0, 2.0, 5.0
ARMS = ("reco", "cross", "uni", "adapter", "reco_wide", "mlp_wide", "sparse")
PAPER = "reco"
WORKERS = 2
CHANGED = ("protocol 2: the base CLIP is trained by clipcore.train on the world (was hand-built with private rare-class "
           "directions and a clean caption identity), the memory is web-like (3 % relevant, 15 % caption label noise, "
           "image->image precision ~0.55, was 30 % relevant and ~0.85), and positive/negative controls and headroom "
           "checks decide whether the world can show the effect")


def _options(arm: str) -> dict:
    opts = dict(k=K, heads=4, labels=False)
    opts.update({"cross": dict(search="cross"), "uni": dict(fusion="uni"), "adapter": dict(fuser="adapter"),
                 "reco_wide": dict(k=K_WIDE), "mlp_wide": dict(k=K_WIDE, fuser="mlp")}.get(arm, {}))
    return opts


def _base_job(seed: int) -> dict:
    """Stage 1: the seed's base CLIP, trained by clipcore.train (returned as a state dict)."""
    torch.set_num_threads(1)
    from theory.longtail import LongTail, train_base
    logs = tempfile.mkdtemp(prefix="reco_base_")
    try:
        base = train_base(LongTail(seed=seed), seed, logs, epochs=BASE_EPOCHS, lr=BASE_LR)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return {k: v.clone() for k, v in base.state_dict().items()}


def _memory(world, base, n: int, relevance: float, seed: int, salt: int, eval_images, *, clean: bool = False):
    """A memory of the world's pairs, embedded by the base, de-duplicated against the evaluation images."""
    from theory.longtail import embed
    g = torch.Generator().manual_seed(seed * 1_000 + salt)
    bank = embed(base, world.sample_pairs(world.memory_classes(n, relevance, g), g, clean=clean))
    return bank.dedup_against(eval_images, DEDUP)


def _setup(seed: int, base_state: dict):
    from theory.longtail import LongTail, base_model
    world = LongTail(seed=seed)
    base = base_model(world, seed)
    base.load_state_dict(base_state)
    base.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(seed * 1_000 + 1)
    ev = world.classes("eval_rare").repeat_interleave(TEST_PER_CLASS)
    test, test2 = world.sample_pairs(ev, g), world.sample_pairs(ev, g)
    with torch.no_grad():
        eval_images = base.encode_image(torch.cat([test.x, test2.x]))
    return world, base, test, test2, eval_images


def _job(seed: int, arm: str, base_state: dict) -> dict:
    """One (seed, arm): train a RECO variant with clipcore.train and evaluate it; the "reco" arm also evaluates
    the base, the memory variants (oracle, other world, sizes, relevances), score mixing and retrieval."""
    torch.set_num_threads(1)
    from clipcore.methods.reco import Config
    from theory.longtail import LongTail, near_duplicates, precision_at_k, retrieval, train_reco, zero_shot
    t0 = time.time()
    world, base, test, test2, eval_images = _setup(seed, base_state)
    logs = tempfile.mkdtemp(prefix=f"reco_{arm}_")
    cfg = Config(**_options(arm))
    rare_v = eval_images[: len(test.x)]                     # the base's embeddings of the test images
    out: dict = {}
    try:
        if arm == "sparse":
            memory, removed = _memory(world, base, N_SPARSE, RELEVANCE, seed, 7, eval_images)
            model, losses = train_reco(world, base, memory, cfg, seed=seed, logs=logs, epochs=EPOCHS,
                                       queries=QUERIES, train_fraction=TRAIN_FRACTION)
            small = memory.sample(TRAIN_FRACTION, seed)              # the memory it was trained with
            counts = torch.bincount(small.labels, minlength=world.C)[world.classes("train")]
            out.update(zs=zero_shot(model, world, test), removed=removed, train_memory=len(small),
                       min_per_class=int(counts.min()), mean_per_class=float(counts.float().mean()))
            model.memory = small
            out["zs_small"] = zero_shot(model, world, test)
        else:
            memory, removed = _memory(world, base, N_MEMORY, RELEVANCE, seed, 2, eval_images)
            model, losses = train_reco(world, base, memory, cfg, seed=seed, logs=logs, epochs=EPOCHS, queries=QUERIES)
            out["zs"] = zero_shot(model, world, test)
            if arm in ("reco", "cross", "uni"):
                model.cfg = dataclasses.replace(cfg, alpha=ALPHA_OPTION)
                out["zs_alpha"] = zero_shot(model, world, test)
                model.cfg = cfg
            if arm == "reco_wide":
                out["precision_wide"] = precision_at_k(memory, rare_v, test.labels, K_WIDE, "image")
        if arm == "reco":
            out.update(base=zero_shot(base, world, test), base2=zero_shot(base, world, test2), removed=removed,
                       dup=near_duplicates(memory, rare_v, DUP_REPORT),
                       precision={by: precision_at_k(memory, rare_v, test.labels, K, by) for by in ("image", "text")})
            variants = {"oracle": _memory(world, base, N_MEMORY, ORACLE_RELEVANCE, seed, 3, eval_images, clean=True)[0],
                        "other_world": _memory(LongTail(seed=seed + OTHER_WORLD), base, N_MEMORY, RELEVANCE, seed, 4,
                                               eval_images)[0],
                        "size_small": memory.sample(SIZE_SMALL, seed)}
            variants.update({f"rel_{r:g}": _memory(world, base, N_MEMORY, r, seed, 5 + i, eval_images)[0]
                             for i, r in enumerate(RELEVANCES)})
            out["variants"] = {}
            for name, mem in variants.items():
                model.memory = mem
                out["variants"][name] = zero_shot(model, world, test)
            model.memory = memory
            out["ret"] = {"base": retrieval(base, test), "reco": retrieval(model, test),
                          "base2": retrieval(base, test2), "reco2": retrieval(model, test2)}
        out["loss"] = losses[-1] if losses else float("nan")
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    out["wall_s"] = time.time() - t0
    return out


@pytest.fixture(scope="module")
def runs():
    """{(seed, arm): result} for every seed and arm, computed once for the claims."""
    t0 = time.time()
    ctx = get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        bases = dict(zip(SEEDS, ex.map(_base_job, SEEDS)))
        jobs = [(s, a) for s in SEEDS for a in ARMS]
        res = list(ex.map(_job, *zip(*jobs), [bases[s] for s, _ in jobs]))
    out = dict(zip(jobs, res))
    out["wall_s"] = time.time() - t0
    out["cpu_s"] = sum(r["wall_s"] for r in res)
    return out


# ----------------------------------------------------------------------------------------------- helpers
def _pts(zs: dict) -> float:
    return 100.0 * zs["acc"]


def _acc(runs, arm: str, key: str = "zs") -> list[float]:
    return [_pts(runs[(s, arm)][key]) for s in SEEDS]


def _var(runs, name: str) -> list[float]:
    return [_pts(runs[(s, "reco")]["variants"][name]) for s in SEEDS]


def _base(runs, key: str = "base") -> list[float]:
    return _acc(runs, "reco", key)


def _planted(runs, arm: str, key: str = "zs", variant: str | None = None) -> list[float]:
    """The arm's accuracy with each of its errors corrected with probability PLANT (a gain planted by construction)."""
    out = []
    for s in SEEDS:
        r = runs[(s, arm)]
        correct = (r["variants"][variant] if variant else r[key])["correct"]
        fix = torch.rand(len(correct), generator=torch.Generator().manual_seed(4242 + s)) < PLANT
        out.append(100.0 * (correct | fix).float().mean().item())
    return out


def _null(runs) -> list[float]:
    """base(test2) - base(test): the null difference of two draws of the test set, paired by seed."""
    return [b2 - b for b2, b in zip(_base(runs, "base2"), _base(runs))]


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def _fmt(ci: dict) -> str:
    return f"{ci['mean']:+.1f} ± {ci['half']:.1f} pt (n={ci['n']})"


def _ci0(values: list[float], conf: float) -> dict:
    return paired_ci(values, [0.0] * len(values), conf)


def _parts(diffs: list[list[float]], rules: list[dict]) -> tuple[str, list[dict]]:
    """A composite rule: each part's CI at family_conf(k), all_of the parts' verdicts."""
    conf = family_conf(len(diffs))
    cis = [_ci0(d, conf) for d in diffs]
    return all_of(*(verdict_from_ci(ci, **r) for ci, r in zip(cis, rules))), cis


def _check_base(runs) -> dict:
    return headroom("base zero-shot on the evaluated classes", [b / 100 for b in _base(runs)], floor=1 / 128,
                    ceiling=1.0, margin=0.05)


def _check_ceiling(name: str, values: list[float]) -> dict:
    return headroom(name, [v / 100 for v in values], ceiling=1.0, margin=0.02)


def _bars(claim_id: str, series: dict[str, list[float]], ylabel: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(1.3 * len(series) + 1.5, 3.2))
    names = list(series)
    ax.bar(range(len(names)), [np.mean(series[n]) for n in names], color=[f"C{i}" for i in range(len(names))], alpha=0.7)
    for i, n in enumerate(names):
        ax.plot([i] * len(series[n]), series[n], "k.", ms=5)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel); ax.set_title(title, fontsize=9)
    return savefig(fig, claim_id)


def _setup_note(runs) -> str:
    r = [runs[(s, "reco")] for s in SEEDS]
    return (f"Base (trained by clipcore.train) zero-shot on the 48 evaluated classes {np.mean(_base(runs)):.1f}%; "
            f"precision@{K} of their image queries' hits: image->image {np.mean([x['precision']['image'] for x in r]):.2f}, "
            f"image->text {np.mean([x['precision']['text'] for x in r]):.2f}; near-duplicate check: best image cosine "
            f"of an evaluation image to the memory median {np.mean([x['dup']['median_cos'] for x in r]):.3f}, max "
            f"{max(x['dup']['max_cos'] for x in r):.3f}, {np.mean([x['dup']['n_eval_with_dup'] for x in r]):.0f} of "
            f"{len(r[0]['zs']['correct'])} above {DUP_REPORT}; memory pairs removed at cosine > {DEDUP}: "
            f"{np.mean([x['removed'] for x in r]):.0f}. Compute: {runs['cpu_s']:.0f} CPU-s over "
            f"{len(SEEDS) * len(ARMS)} RECO jobs, {runs['wall_s']:.0f} s wall with the bases.")


# ----------------------------------------------------------------------------------------------- claims
def test_reco1_rare_class_gain(runs):
    base, reco = _base(runs), _acc(runs, "reco")
    oracle, other = _var(runs, "oracle"), _var(runs, "other_world")
    ci = paired_ci(reco, base)
    rule = dict(lower=GAIN_MIN)
    ctrl = controls(verdict_from_ci(paired_ci(oracle, base), **rule), verdict_from_ci(paired_ci(other, base), **rule),
                    pos_detail=f"oracle memory {_fmt(paired_ci(oracle, base))}",
                    neg_detail=f"memory of another world {_fmt(paired_ci(other, base))}", neg_clean=("inconclusive", "fails"))
    checks = [_check_base(runs), _check_ceiling("RECO zero-shot on the evaluated classes", reco)]
    fig = _bars("RECO-1", {"base": base, "RECO": reco, "RECO, oracle memory": oracle, "RECO, other world's memory": other},
                "zero-shot top-1 on the evaluated classes (%)", "48 rare classes never seen as training queries")
    rec = save_result(
        "RECO-1", paper=PAPER, claim="RECO raises zero-shot accuracy on rare fine-grained classes (CLIP-B/32: +10.9 "
        "Cars, +10.2 CUB)", prediction=f"base CLIP trained by clipcore.train on a long tail; web-like memory of "
        f"{N_MEMORY} pairs (3% relevant, 15% label noise), k={K}: gain on the evaluated rare classes > {GAIN_MIN:g} pt",
        threshold=f"95% CI of the paired gain > {GAIN_MIN:g} pt; pos: oracle memory must hold; neg: another world's "
                  "memory must not hold (fails or inconclusive)",
        measured=ci, verdict=final_verdict(verdict_from_ci(ci, **rule), ctrl, checks), controls=ctrl, checks=checks,
        seeds=SEEDS, figure=fig,
        measured_text=f"gain {_fmt(ci)}; base zero-shot on the evaluated classes {np.mean(base):.1f}% -> RECO "
                      f"{np.mean(reco):.1f}% (paper: +10.9 / +10.2)",
        details={"base": base, "reco": reco, "oracle": oracle, "other_world": other, "epochs": EPOCHS,
                 "dedup_removed": [runs[(s, "reco")]["removed"] for s in SEEDS],
                 "near_duplicates": [runs[(s, "reco")]["dup"] for s in SEEDS],
                 "precision": [runs[(s, "reco")]["precision"] for s in SEEDS]},
        note=_setup_note(runs), wall_s=runs["wall_s"], changed=CHANGED)
    conclude(rec)


def test_reco2_search_fusion_order(runs):
    base, reco, cross, uni = _base(runs), _acc(runs, "reco"), _acc(runs, "cross"), _acc(runs, "uni")
    rules = [dict(lower=0.0), dict(lower=0.0), dict(upper=BAND)]
    rule, cis = _parts([_diff(reco, cross), _diff(cross, base), _diff(uni, base)], rules)
    pos, _ = _parts([_diff(_planted(runs, "cross"), cross), _diff(_planted(runs, "reco", "base"), base),
                     _diff(base, base)], rules)
    neg, _ = _parts([_null(runs)] * 3, rules)
    ctrl = controls(pos, neg, pos_detail="planted gains over cross+cross and base, base against itself",
                    neg_detail="each part replaced by base(test2) - base(test)")
    checks = [_check_base(runs), _check_ceiling("RECO zero-shot", reco)]
    alpha = {a: _acc(runs, a, "zs_alpha") for a in ("reco", "cross", "uni")}
    fig = _bars("RECO-2", {"base": base, "uni search + cross fusion (RECO)": reco, "cross search + cross fusion": cross,
                           "uni search + uni fusion": uni}, "zero-shot top-1 on the evaluated classes (%)",
                "search x fusion, same layer, training and memory")
    rec = save_result(
        "RECO-2", paper=PAPER, claim="Uni-modal search + cross-modal fusion; order RECO > cross search + cross fusion > "
        "base >~ uni search + uni fusion (Table 5: +9.0%, +1.7%, -0.4% relative)",
        prediction="same layer, training and memory, alpha = 1: RECO - cross+cross > 0; cross+cross - base > 0; "
                   f"uni+uni - base < {BAND:g} pt",
        threshold=f"all three CIs at {family_conf(3):.1%} (k=3) on the predicted side", measured=cis[0],
        verdict=final_verdict(rule, ctrl, checks), controls=ctrl, checks=checks, seeds=SEEDS, figure=fig,
        measured_text=f"RECO - cross+cross {_fmt(cis[0])}; cross+cross - base {_fmt(cis[1])}; uni+uni - base "
                      f"{_fmt(cis[2])} (base {np.mean(base):.1f}%, RECO {np.mean(reco):.1f}%, cross+cross "
                      f"{np.mean(cross):.1f}%, uni+uni {np.mean(uni):.1f}%)",
        details={"base": base, "reco": reco, "cross": cross, "uni": uni, "parts": cis,
                 "alpha_option": {"alpha": ALPHA_OPTION, **alpha}},
        note=f"With alpha = {ALPHA_OPTION} score mixing (same models; decides nothing): RECO {np.mean(alpha['reco']):.1f}%, "
             f"cross+cross {np.mean(alpha['cross']):.1f}%, uni+uni {np.mean(alpha['uni']):.1f}% (base {np.mean(base):.1f}%).",
        wall_s=runs["wall_s"], changed=CHANGED + "; the paper's full order is tested (protocol 1 checked only RECO "
        "against each ablation, both of which fell ~30 pt below the base)")
    conclude(rec)


def test_reco3_capacity_control(runs):
    base, reco, ad = _base(runs), _acc(runs, "reco"), _acc(runs, "adapter")
    ci = paired_ci(reco, ad)
    rule = dict(lower=0.0)
    null = _ci0(_null(runs), 0.95)
    ctrl = controls(verdict_from_ci(paired_ci(_planted(runs, "adapter"), ad), **rule), verdict_from_ci(null, **rule),
                    pos_detail="adapter with a planted gain", neg_detail=f"base(test2) - base(test) {_fmt(null)}")
    checks = [_check_base(runs), headroom("adapter zero-shot", [a / 100 for a in ad], floor=1 / 128, ceiling=1.0,
                                          margin=0.02)]
    fig = _bars("RECO-3", {"base": base, "adapter MLP (no retrieval)": ad, "RECO": reco},
                "zero-shot top-1 on the evaluated classes (%)", "capacity control: same loss, data and schedule")
    rec = save_result(
        "RECO-3", paper=PAPER, claim="The gain is not explained by extra training or parameters: an MLP trained on the "
        "same retrieved data does worse (CUB: base 52.8, MLP 44.8, RECO 63.0)",
        prediction="adapter = MLP of the fusion layer's size on the query alone, same loss, queries and schedule, no "
                   "retrieval at inference: RECO - adapter > 0", threshold="95% CI of the paired difference > 0",
        measured=ci, verdict=final_verdict(verdict_from_ci(ci, **rule), ctrl, checks), controls=ctrl, checks=checks,
        seeds=SEEDS, figure=fig,
        measured_text=f"RECO - adapter {_fmt(ci)}; base {np.mean(base):.1f}%, adapter {np.mean(ad):.1f}% (adapter - "
                      f"base {_fmt(paired_ci(ad, base))}), RECO {np.mean(reco):.1f}%",
        details={"base": base, "reco": reco, "adapter": ad, "adapter_minus_base": paired_ci(ad, base)},
        wall_s=runs["wall_s"],
        changed="protocol 2: RECO-3 is the paper's capacity control (an MLP without retrieval); protocol 1's RECO-3, "
                "an MLP fuser that sees the hits, is now RECO-3m. " + CHANGED)
    conclude(rec)


def test_reco3m_mlp_fuser(runs):
    reco, mlp = _acc(runs, "reco_wide"), _acc(runs, "mlp_wide")
    ci = paired_ci(reco, mlp)
    rule = dict(lower=0.0)
    null = _ci0(_null(runs), 0.95)
    ctrl = controls(verdict_from_ci(paired_ci(_planted(runs, "mlp_wide"), mlp), **rule), verdict_from_ci(null, **rule),
                    pos_detail="MLP fuser with a planted gain", neg_detail=f"base(test2) - base(test) {_fmt(null)}")
    checks = [_check_base(runs), _check_ceiling("MLP fuser zero-shot", mlp), _check_ceiling("RECO k=30 zero-shot", reco)]
    prec = np.mean([runs[(s, "reco_wide")]["precision_wide"] for s in SEEDS])
    fig = _bars("RECO-3m", {"base": _base(runs), "MLP fuser, k=30": mlp, "transformer (RECO), k=30": reco},
                "zero-shot top-1 on the evaluated classes (%)", f"k={K_WIDE}: image->image precision@{K_WIDE} {prec:.2f}")
    rec = save_result(
        "RECO-3m", paper=PAPER, claim="Transformer fusion beats an MLP fuser of the same size that sees the same hits "
        "(project extension of the paper's capacity control)",
        prediction=f"k={K_WIDE} in the noisy memory (neighbours differ in relevance), MLP on [query; mean of the hits], "
                   "same size, loss and schedule: RECO - MLP > 0", threshold="95% CI of the paired difference > 0",
        measured=ci, verdict=final_verdict(verdict_from_ci(ci, **rule), ctrl, checks), controls=ctrl, checks=checks,
        seeds=SEEDS, figure=fig,
        measured_text=f"RECO - MLP fuser {_fmt(ci)}; MLP {np.mean(mlp):.1f}%, RECO {np.mean(reco):.1f}% at k={K_WIDE} "
                      f"(precision@{K_WIDE} {prec:.2f})",
        details={"reco_wide": reco, "mlp_wide": mlp, "precision_wide": prec,
                 "final_loss": {a: [runs[(s, a)]["loss"] for s in SEEDS] for a in ("reco_wide", "mlp_wide")}},
        wall_s=runs["wall_s"],
        changed="protocol 1's RECO-3 (MLP fuser, k=10, every neighbour about equally informative: fails, MLP ahead) "
                f"moved here, at k={K_WIDE} in a noisy memory. " + CHANGED)
    conclude(rec)


def test_reco4_sparse_training_memory(runs):
    base, full, small = _base(runs), _acc(runs, "sparse"), _acc(runs, "sparse", "zs_small")
    rules = [dict(lower=0.0)] * 2
    rule, cis = _parts([_diff(full, base), _diff(full, small)], rules)
    pos, _ = _parts([_diff(_planted(runs, "reco", "base"), base), _diff(_planted(runs, "sparse", "zs_small"), small)], rules)
    neg, _ = _parts([_null(runs)] * 2, rules)
    ctrl = controls(pos, neg, pos_detail="planted gains over base and over the 1 % evaluation",
                    neg_detail="each part replaced by base(test2) - base(test)")
    mins = [runs[(s, "sparse")]["min_per_class"] for s in SEEDS]
    sizes = [runs[(s, "sparse")]["train_memory"] for s in SEEDS]
    checks = [_check_base(runs), _check_ceiling("1 %-memory evaluation zero-shot", small),
              {"name": "training memory", "mean": float(min(mins)), "ok": min(mins) >= K,
               "text": f"training memory {TRAIN_FRACTION:.0%} of {N_SPARSE} = {sizes[0]} pairs: fewest same-class items "
                       f"of a training class {min(mins)} (must be >= k={K})"}]
    fig = _bars("RECO-4", {"base": base, "trained 1%, eval 1%": small, "trained 1%, eval 100%": full},
                "zero-shot top-1 on the evaluated classes (%)", f"memory of {N_SPARSE} pairs; training searches 1%")
    rec = save_result(
        "RECO-4", paper=PAPER, claim="Trained with 1% of the memory, RECO still gains a lot when evaluated with all of it (Fig. 3)",
        prediction=f"memory of {N_SPARSE} pairs; training neighbours from a {TRAIN_FRACTION:.0%} sample ({sizes[0]} pairs, "
                   f">= k items of every training class); evaluated with all of it: gain over base > 0 and > the same "
                   "model evaluated with the 1% sample",
        threshold=f"both CIs at {family_conf(2):.1%} (k=2) > 0", measured=cis[0],
        verdict=final_verdict(rule, ctrl, checks), controls=ctrl, checks=checks, seeds=SEEDS, figure=fig,
        measured_text=f"gain over base {_fmt(cis[0])}; full - 1% memory at evaluation {_fmt(cis[1])} (training memory "
                      f"{sizes[0]} pairs = {TRAIN_FRACTION:.0%}, >= {min(mins)} per training class)",
        details={"base": base, "eval_full": full, "eval_small": small, "parts": cis, "train_memory": sizes,
                 "min_per_class": mins, "mean_per_class": [runs[(s, "sparse")]["mean_per_class"] for s in SEEDS]},
        wall_s=runs["wall_s"],
        changed=f"protocol 1's 1 % was 40 pairs (under one per class: an empty memory); now 1 % of {N_SPARSE} pairs keeps "
                f">= k items of every training class. " + CHANGED)
    conclude(rec)


def test_reco5_memory_size_and_relevance(runs):
    base = _base(runs)
    gain = {name: _diff(_var(runs, name), base) for name in ["size_small"] + [f"rel_{r:g}" for r in RELEVANCES]}
    gain["full"] = _diff(_acc(runs, "reco"), base)
    rules = [dict(lower=0.0), dict(lower=0.0), dict(lower=-BAND, upper=BAND)]
    rule, cis = _parts([_diff(gain["full"], gain["size_small"]), _diff(gain["rel_0.05"], gain["rel_0.01"]),
                        gain["rel_0"]], rules)
    pos, _ = _parts([_diff(_planted(runs, "reco", variant="size_small"), _var(runs, "size_small")),
                     _diff(_planted(runs, "reco", variant="rel_0.01"), _var(runs, "rel_0.01")), _diff(base, base)], rules)
    neg, _ = _parts([_null(runs)] * 3, rules)
    ctrl = controls(pos, neg, pos_detail="planted gains over the 10 % and the 1 %-relevant memories; base against itself",
                    neg_detail="each part replaced by base(test2) - base(test)")
    checks = [_check_base(runs), _check_ceiling("10 %-memory zero-shot", _var(runs, "size_small")),
              _check_ceiling("1 %-relevant memory zero-shot", _var(runs, "rel_0.01"))]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, keys, xs, xl in ((axes[0], ("size_small", "full"), (SIZE_SMALL, 1.0), f"memory size (share of N={N_MEMORY})"),
                             (axes[1], ("rel_0", "rel_0.01", "full", "rel_0.05"), (0.0, 0.01, RELEVANCE, 0.05),
                              "relevance (share from the evaluated classes)")):
        ax.errorbar(xs, [np.mean(gain[k]) for k in keys], yerr=[np.std(gain[k]) for k in keys], marker="o", capsize=3)
        ax.axhline(0, color="k", lw=0.8); ax.set_xlabel(xl); ax.set_ylabel("gain over base (pt)")
    fig.suptitle("one trained RECO, memory swapped at evaluation", fontsize=9)
    fig.tight_layout()
    rec = save_result(
        "RECO-5", paper=PAPER, claim="The gain grows with memory size and relevance (Fig. 3; WebLI > LAION) and vanishes "
        "with an irrelevant memory (project control)",
        prediction="same trained RECO, evaluation memory swapped: gain(100% of N) - gain(10%) > 0; gain(relevance 5%) - "
                   f"gain(1%) > 0; irrelevant memory (0% relevant): |gain| < {BAND:g} pt",
        threshold=f"all three CIs at {family_conf(3):.1%} (k=3): differences > 0, irrelevant gain inside (-{BAND:g}, {BAND:g})",
        measured=cis[0], verdict=final_verdict(rule, ctrl, checks), controls=ctrl, checks=checks, seeds=SEEDS,
        figure=savefig(fig, "RECO-5"),
        measured_text=f"size 100% - 10%: {_fmt(cis[0])}; relevance 5% - 1%: {_fmt(cis[1])}; irrelevant memory gain "
                      f"{_fmt(cis[2])} (harm if < 0)",
        details={"gain": gain, "parts": cis},
        note="gains over base (points): " + ", ".join(f"{k} {np.mean(v):+.1f}" for k, v in gain.items()) + ".",
        wall_s=runs["wall_s"],
        changed="protocol 1 accepted any loss with an irrelevant memory (one-sided < 2 pt; it measured -38 pt); now "
                "two-sided. " + CHANGED)
    conclude(rec)


def _rer(runs, direction: str, ref: str = "reco", base: str = "base") -> list[float]:
    """100 x (R_refined - R_base) / (1 - R_base) of recall@1, per seed."""
    out = []
    for s in SEEDS:
        r = runs[(s, "reco")]["ret"]
        rb, rr = r[base][direction], r[ref][direction]
        out.append(100.0 * (rr - rb) / (1 - rb))
    return out


def _rer_planted(runs, direction: str) -> list[float]:
    out = []
    for s in SEEDS:
        r = runs[(s, "reco")]["ret"]
        hit = r["reco"][f"{direction}_hit"]
        fix = torch.rand(len(hit), generator=torch.Generator().manual_seed(4343 + s)) < PLANT
        rr, rb = (hit | fix).float().mean().item(), r["base"][direction]
        out.append(100.0 * (rr - rb) / (1 - rb))
    return out


def test_reco6_text_to_image_gains_more(runs):
    t2i, i2t = _rer(runs, "t2i"), _rer(runs, "i2t")
    ci = paired_ci(t2i, i2t)
    rule = dict(lower=0.0)
    null = paired_ci(_rer(runs, "t2i", "reco2", "base2"), t2i)
    ctrl = controls(verdict_from_ci(paired_ci(_rer_planted(runs, "i2t"), i2t), **rule), verdict_from_ci(null, **rule),
                    pos_detail="i->t with a planted gain against i->t",
                    neg_detail=f"t->i RER on test2 - on test {_fmt(null)}")
    bt = [100 * runs[(s, "reco")]["ret"]["base"]["t2i"] for s in SEEDS]
    bi = [100 * runs[(s, "reco")]["ret"]["base"]["i2t"] for s in SEEDS]
    asym = abs(np.mean(bt) - np.mean(bi))
    checks = [headroom("base t->i recall@1", [b / 100 for b in bt], floor=0.0, ceiling=1.0, margin=0.01),
              headroom("base i->t recall@1", [b / 100 for b in bi], floor=0.0, ceiling=1.0, margin=0.01),
              {"name": "base recall symmetry", "mean": asym, "ok": asym < SYMMETRY_MAX,
               "text": f"base recall@1 t->i {np.mean(bt):.1f}% vs i->t {np.mean(bi):.1f}%: |difference| {asym:.1f} pt "
                       f"(must be < {SYMMETRY_MAX:g})"}]
    rt = [100 * runs[(s, "reco")]["ret"]["reco"]["t2i"] for s in SEEDS]
    ri = [100 * runs[(s, "reco")]["ret"]["reco"]["i2t"] for s in SEEDS]
    fig = _bars("RECO-6", {"t->i RER": t2i, "i->t RER": i2t}, "relative error reduction of R@1 (%)",
                f"retrieval, {TEST_PER_CLASS * 48} test pairs")
    rec = save_result(
        "RECO-6", paper=PAPER, claim="Retrieval improves in both directions, text->image more than image->text (Flickr30k, COCO)",
        prediction="refined embeddings on the 960 test pairs: relative error reduction of recall@1, t->i minus i->t > 0, "
                   "with base recall symmetric",
        threshold="95% CI of the paired RER difference > 0 (x 100)", measured=ci,
        verdict=final_verdict(verdict_from_ci(ci, **rule), ctrl, checks), controls=ctrl, checks=checks, seeds=SEEDS,
        figure=fig,
        measured_text=f"RER difference {_fmt(ci)}; t->i R@1 {np.mean(bt):.1f}% -> {np.mean(rt):.1f}% (RER "
                      f"{np.mean(t2i):+.1f}%), i->t {np.mean(bi):.1f}% -> {np.mean(ri):.1f}% (RER {np.mean(i2t):+.1f}%)",
        details={"rer_t2i": t2i, "rer_i2t": i2t, "base_t2i": bt, "base_i2t": bi, "reco_t2i": rt, "reco_i2t": ri},
        wall_s=runs["wall_s"],
        changed="protocol 1 compared raw recall gains with base recalls 27 % vs 37 % (the gain difference was the base "
                "difference); now relative error reduction with a base-symmetry check. " + CHANGED)
    conclude(rec)
