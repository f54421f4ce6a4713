# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The theory of CLIP's transferable representations, checked numerically
#
# Chen, Deng, Li, Gu, *Understanding Transferable Representation Learning and Zero-shot Transfer in CLIP*
# (ICLR 2024).
#
# Every number on this page is read from `experiments/results/THY-*.json`, written by
# `pytest experiments/` (quick tier) or `CLIPCORE_FULL=1 pytest experiments/` (paper tier). Each claim has one
# test in `experiments/test_theory.py`, `experiments/test_theory_transfer.py` or `experiments/test_thy8.py`
# whose prediction and threshold were written before it was run; the verdict is **holds** when the whole 95% confidence interval over seeds lies on
# the predicted side of the threshold, **fails** when it lies wholly on the other side, and **inconclusive**
# otherwise. A claim that does not hold is reported as such (the test is marked xfail with the number).
#
#     python notebooks/theory.py                       # as a script: prints the tables, renders the figures
#     jupytext --to ipynb notebooks/theory.py          # as a notebook

# %%
import json
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:          # run as a script: no display, draw off-screen
    matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import clipcore  # noqa: E402

INTERACTIVE = "ipykernel" in sys.modules


def find_results() -> Path:
    """experiments/results of the repository holding the clipcore package (or this notebook, or the working directory)."""
    # the clipcore package's repository first (a kernel's working directory can be anywhere), then this file's
    starts = [Path(clipcore.__file__).resolve().parent] + ([Path(__file__).resolve().parent] if "__file__" in globals() else [])
    for start in starts + [Path.cwd()]:
        for d in [start, *start.parents]:
            if (d / "experiments" / "results").is_dir():
                return d / "experiments" / "results"
    raise FileNotFoundError("experiments/results not found: run `pytest experiments/` from the repository root first")


RESULTS = find_results()
RECS = {}
for folder in (RESULTS, RESULTS / "full"):        # the paper tier, where it has run, replaces the quick tier
    for f in sorted(folder.glob("THY-*.json")):
        RECS[f.stem] = json.loads(f.read_text()) | {"_dir": folder}
print(f"{len(RECS)} theory claims in {RESULTS} ({sum(r['tier'] == 'full' for r in RECS.values())} at the paper tier)")


def show(obj) -> None:
    """Rich display in Jupyter, plain text in a script."""
    if INTERACTIVE:
        from IPython.display import display
        display(obj)
    elif isinstance(obj, pd.DataFrame):
        with pd.option_context("display.max_colwidth", 80, "display.width", 160):
            print(obj.to_string(index=False, max_colwidth=80))
    else:
        print(obj)


def show_figure(rec: dict) -> None:
    """The claim's seaborn figure (results/<id>.png), as a picture."""
    path = rec["_dir"] / (rec.get("figure") or f"{rec['id']}.png")
    if not path.is_file():
        print(f"(no figure at {path})")
        return
    if not INTERACTIVE:
        print(f"  figure:     {path}")
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    fig, ax = plt.subplots(figsize=(min(14.0, w / 100), min(14.0, w / 100) * h / w))
    ax.imshow(img)
    ax.axis("off")
    if INTERACTIVE:
        plt.show()
    plt.close(fig)


def show_claim(claim_id: str) -> None:
    """What the test predicted, what it measured and its verdict, then its figure."""
    rec = RECS.get(claim_id)
    if rec is None:
        print(f"{claim_id}: no result yet; run `pytest experiments/`")
        return
    ci = rec["measured"]
    lines = [f"{rec['id']}  [{rec['verdict'].upper()}]  ({rec['tier']} tier, seeds {rec['seeds']}, {rec.get('date', '')})",
             f"  claim:      {rec['claim']}",
             f"  prediction: {rec['prediction']}",
             f"  threshold:  {rec['threshold']}",
             f"  measured:   {rec['measured_text']}",
             f"  controls:   {(rec.get('controls') or {}).get('text', 'not yet on the calibrated protocol')}"]
    lines += [f"  headroom:   {c['text']}" for c in rec.get("checks") or []]
    lines += [
             f"  headline:   {ci['mean']:.4g}, {100 * ci.get('conf', 0.95):.1f}% CI [{ci['lo']:.4g}, {ci['hi']:.4g}] over n={ci['n']} seeds"]
    if rec.get("note"):
        lines.append(f"  note:       {rec['note']}")
    print("\n".join(lines))
    show_figure(rec)


# %% [markdown]
# ## The table
# The rows of the generated `experiments/RESULTS.md`, built here from the JSON files (the measured values
# in full are under each claim below).

# %%
table = pd.DataFrame([{"id": r["id"], "verdict": r["verdict"], "tier": r["tier"], "seeds": len(r["seeds"]),
                       "controls": (r.get("controls") or {}).get("text", "-")[:32], "claim": r["claim"]}
                      for r in RECS.values()])
show(table)
print("\nverdicts:", table["verdict"].value_counts().to_dict())

# %% [markdown]
# ## THY-1 — generalisation at a fixed batch size (T1)
# The CLIP loss is a mean over disjoint batches of a fixed size B, so the usual i.i.d. uniform-convergence
# argument does not apply term by term; T1 says the empirical loss still converges to the population loss as
# the number of pairs grows, with no need for B to grow. T1 is an upper bound, so it is tested as one: at every
# (B, n) the train-test gap must stay under c sqrt(B/n), with c fitted at the smallest n on pilot seeds, and the
# gap must fall with n at each B. A gap that falls faster than the envelope is consistent with the bound.
# Controls: a planted gap at the envelope's shape must pass the rule; the gap between two independent test
# estimates (flat in n) must not.

# %%
show_claim("THY-1")

# %% [markdown]
# ## THY-2 — unique features are suppressed and the modalities align (T2, Lemma 1)
# Image and text each carry content the other lacks (xi, zeta). Near the optimum of the CLIP loss the encoders
# should ignore that content and map the shared topic of both modalities to the same direction. The figure
# tracks the response to the unique blocks relative to the shared block, and the cross-modal cosine of each
# class, over training and for several temperatures.

# %%
show_claim("THY-2")

# %% [markdown]
# ## THY-3 — the CLIP margin only grows like the temperature (Cor. 3, T6)
# The softmax loss stops pushing once the score gap is a few temperatures wide, so the margin that plain CLIP
# reaches should scale with tau and stay below the ground truth's margin gamma*. The margin that matters is the
# zero-shot *prompt* margin (class prompt against the other classes' prompts): the margin against every held-out
# caption measures the captions' own unsuppressed noise at small tau. The test asks that the prompt margin rise
# with tau, stay well below gamma* at tau = 0.01, and stop rising there between 3,000 and 9,000 steps (the stall).

# %%
show_claim("THY-3")

# %% [markdown]
# ## THY-4, THY-4b, THY-4c — the positive-pair regulariser raises the margin (T7)
# CLIP+Reg adds lambda times the mean squared distance of positive pairs. At a small temperature it should
# lift the margin to the order of gamma*. THY-4 is the pre-registered lambda = 0.1 (twice CLIP's prompt margin
# and a lower zero-shot error); THY-4b confirms, on fresh seeds, the lambda that THY-4's sweep selected, for the
# order-gamma part (a two-stage protocol, labelled as such); THY-4c is the ablation the paper lacks: a penalty
# that pushes negative pairs apart with the same total weight (`neg`), or both terms, instead of positives only.

# %%
for cid in ("THY-4", "THY-4b", "THY-4c"):
    show_claim(cid)

# %% [markdown]
# ## THY-5 — the square loss fails at zero-shot transfer (T5, Cor. 5)
# Regressing text features on image features keeps the text-unique part E[zeta|z] in the prediction; when that
# part is not zero, the predicted text can sit closer to the wrong class prompt, and the zero-shot error is at
# least 1/(3K). CLIP, trained on the same data, should not suffer from it. The bars compare least squares, the
# Bayes square-loss predictor, a control without E[zeta|z], CLIP and square-loss training of both towers.

# %%
show_claim("THY-5")

# %% [markdown]
# ## THY-6 — zero-shot top-r error under a distribution shift (section 5)
# The zero-shot bound worsens additively with the shift between pretraining and downstream data. It is a bound:
# the test scales the image-unique clutter (total-variation shifts 0.17-0.49) at tau = 0.01, where the error is
# off zero, and asks that the error stay under error(0) + C TV with C fitted on pilot seeds.

# %%
show_claim("THY-6")

# %% [markdown]
# ## THY-7 — sparse features and false negatives
# With several active topics per pair, in-batch negatives often share a topic with the positive (false
# negatives); completeness (the separable margin) should degrade and the zero-shot error grow with the number
# of active topics and with the batch size, compared at equal samples seen, at tau = 0.01 (off the floor).

# %%
show_claim("THY-7")

# %% [markdown]
# ## THY-8, THY-8r — CLIP+Reg against CLIP on a nonlinear task and on real data (sections 6-7)
# The paper's experimental claim: with the positive-pair regulariser, zero-shot and linear-probe accuracy both
# improve over CLIP (CC3M, single runs). Here both arms of a seed share everything but the penalty, and the
# gain is measured per seed. THY-8 is the theory world seen through a frozen random nonlinearity, with MLP
# towers, at a fixed small tau = 0.01 in both arms (the regime the theory speaks about) with the penalty
# lambda R / tau; THY-8r is the library's training run on animal-mnist (`clipcore.train`) shortened to 2 epochs
# so that CLIP sits off its ceiling (85 %), with the linear probe of `clipcore.eval`. lambda = 0.1 was fixed
# before the runs; the full tier adds an exploratory lambda sweep to THY-8. The middle panel compares the
# measured gains with the paper's.

# %%
for cid in ("THY-8", "THY-8r"):
    show_claim(cid)

# %% [markdown]
# ## Gains of CLIP+Reg, per seed
# The paired gains (points) behind THY-8 and THY-8r, read from their JSON.

# %%
rows = [{"id": cid, "metric": m, "seed": s, "gain (points)": round(g, 2)}
        for cid in ("THY-8", "THY-8r") if cid in RECS
        for m, gs in RECS[cid]["details"]["gains"].items() for s, g in zip(RECS[cid]["seeds"], gs)]
if rows:
    gains = pd.DataFrame(rows).pivot_table(index=["id", "metric"], columns="seed", values="gain (points)")
    gains.columns = [f"seed {c}" for c in gains.columns]
    show(gains.reset_index())

# %% [markdown]
# ## Any other theory result
# Claims added after this notebook was written are shown here as they are.

# %%
DISCUSSED = {"THY-1", "THY-2", "THY-3", "THY-4", "THY-4b", "THY-4c", "THY-5", "THY-6", "THY-7", "THY-8", "THY-8r"}
for cid in sorted(set(RECS) - DISCUSSED):
    show_claim(cid)
