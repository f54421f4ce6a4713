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
# # ARF: anchor-based robust finetuning on the multi-domain world
#
# Reads `experiments/results/full/ARF-*.json` (the paper tier, `CLIPCORE_FULL=1 pytest experiments/test_arf.py`)
# where they exist, else `experiments/results/ARF-*.json` (the quick tier); nothing here retypes a number. The
# world (`theory/arfworld.py`): PartWorld classes drawn as photos, sketches and paintings; theta0 is a CLIP
# pretrained on rich captions of every class in every domain, captions that name their class only some of the time
# (`name_rate`), with noisy photos (`photo_noise`), so that theta0 is far from the in-distribution ceiling and
# finetuning matters. Methods finetune it on the ID classes' photos with class prompts only. The method and its
# claims: the README's ARF section and docs/methods.md.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import clipcore

# the repository of the clipcore package: a kernel's working directory can be anywhere
RES = Path(clipcore.__file__).resolve().parents[1] / "experiments" / "results"
TIER = RES / "full" if sorted((RES / "full").glob("ARF-*.json")) else RES
recs = {p.stem: json.loads(p.read_text()) for p in sorted(TIER.glob("ARF-*.json"))}
print(f"{TIER.relative_to(RES.parent)}: {len(recs)} claims")
pd.DataFrame([{"id": r["id"], "verdict": r["verdict"], "controls": (r.get("controls") or {}).get("text", ""),
               "measured": r["measured_text"]} for r in recs.values()])

# %% [markdown]
# ## Every arm, every seed
# `details.per_seed` of ARF-1 holds each seed's accuracies (%): ID (photo), shift (sketch/painting mean), ZS
# (never-finetuned classes, all domains), OOD (mean of shift and ZS), and each test set separately. Arms run at the
# specification's learning rate 1e-4, except those named "lr 1e-3" (the 10x variant, reported only). "FLYP, other
# run" is FLYP on other data-order seeds: the null the controls use.

# %%
runs = recs["ARF-1"]["details"]["per_seed"]
df = pd.DataFrame([{"method": m, "seed": r["seed"], **v} for r in runs for m, v in r["rows"].items()])
df.groupby("method", sort=False)[["ID", "shift", "ZS", "OOD"]].mean().round(1)

# %% [markdown]
# ## Effective robustness: ID against OOD
# theta0 is the starting point; finetuning moves right (ID). Points above FLYP at the same ID accuracy are more
# robust than FLYP.

# %%
sns.set_theme(style="whitegrid")
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
keep = df[~df.method.str.startswith("ctrl: L2-SP")]
for ax, y in zip(axes, ("shift", "ZS")):
    sns.scatterplot(data=keep, x="ID", y=y, hue="method", style="method", s=70, ax=ax, legend=ax is axes[1])
axes[1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
plt.show()

# %% [markdown]
# ## WiSE-FT: interpolating theta0 and the finetuned weights
# alpha = 0 is theta0, alpha = 1 the finetuned model (ARF-6).

# %%
wise = pd.DataFrame([{"method": m, "alpha": float(a), "seed": r["seed"], **v}
                     for r in runs for m, curve in r["wise"].items() for a, v in curve.items()])
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for ax, y in zip(axes, ("ID", "shift", "ZS")):
    sns.lineplot(data=wise, x="alpha", y=y, hue="method", marker="o", ax=ax)
plt.show()

# %% [markdown]
# ## What the retrieval picked
# Every arm with anchors, per seed: how many pool pairs, their domains, whether they show an ID class, a zero-shot
# class or another class, and whether their caption names the class. ARF queries each class with the three domain
# prompts ("a photo|sketch|painting of a {c}"); "ARF, prompt query" with "a photo of a {c}" alone (ARF-7); the random
# pool control draws from a pool without zero-shot classes.

# %%
anchors = pd.DataFrame([{"seed": r["seed"], "arm": m, **a} for r in runs for m, a in r["anchors"].items()])
anchors.groupby("arm", sort=False)[["n", "frac_photo", "frac_sketch", "frac_painting", "frac_id_class",
                                    "frac_zs_class", "frac_other_class", "frac_named"]].mean().round(2)

# %% [markdown]
# ## The claims, their controls and headroom checks

# %%
for r in recs.values():
    print(f"{r['id']} [{r['verdict']}] {r['claim']}\n    measured: {r['measured_text']}\n"
          f"    controls: {(r.get('controls') or {}).get('text', '')}\n"
          f"    checks: {'; '.join(c['text'] for c in r.get('checks') or [])}\n    {r['note']}\n")

# %% [markdown]
# The quick tier (`pytest experiments/test_arf.py`, 3 seeds, 40 classes), beside the paper tier:

# %%
for p in sorted(RES.glob("ARF-*.json")):
    r = json.loads(p.read_text())
    print(f"{r['id']} [{r['verdict']}, quick tier] {r['measured_text']}")
