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
# Reads `experiments/results/ARF-*.json` (written by `pytest experiments/test_arf.py`); nothing here
# retypes a number. The world (`theory/arfworld.py`): PartWorld classes drawn as photos, sketches and
# paintings; theta0 is a CLIP pretrained on rich captions of every class in every domain; methods finetune
# it on the ID classes' photos with class prompts only. The method and its claims: the README's ARF section.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import clipcore

# the repository of the clipcore package: a kernel's working directory can be anywhere
RES = Path(clipcore.__file__).resolve().parents[1] / "experiments" / "results"
recs = {p.stem: json.loads(p.read_text()) for p in sorted(RES.glob("ARF-*.json"))}
pd.DataFrame([{"id": r["id"], "verdict": r["verdict"], "measured": r["measured_text"]} for r in recs.values()])

# %% [markdown]
# ## Every method, every seed
# `details.per_seed` of ARF-1 holds each seed's accuracies (%): ID (photo), shift (sketch/painting mean), ZS
# (never-finetuned classes, all domains), and each test set separately.

# %%
runs = recs["ARF-1"]["details"]["per_seed"]
df = pd.DataFrame([{"method": m, "seed": r["seed"], **v} for r in runs for m, v in r["rows"].items()])
df.groupby("method", sort=False)[["ID", "shift", "ZS", "OOD"]].mean().round(1)

# %% [markdown]
# ## Effective robustness: ID against OOD
# Points above FLYP at the same ID accuracy are more robust than FLYP; theta0 is the starting point.

# %%
sns.set_theme(style="whitegrid")
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
keep = df[~df.method.str.startswith("ctrl: L2-SP") | (df.method == df.method[df.method.str.startswith("ctrl: L2-SP")].iloc[0])]
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
# The anchor set of ARF per seed and class query: how many pool pairs, the share naming an ID class, the share
# from a domain other than photo. Text retrieval with the prompt "a photo of a {c}" ranks photo captions first;
# the name-only query "{c}" (ARF-7) does not carry the domain word.

# %%
pd.DataFrame([{"seed": r["seed"], "query": m, **a} for r in runs for m, a in r["anchors"].items()])

# %% [markdown]
# ## The claims
# %%
for r in recs.values():
    print(f"{r['id']} [{r['verdict']}] {r['claim']}\n    measured: {r['measured_text']}\n    {r['note']}\n")

# %% [markdown]
# The paper tier (`CLIPCORE_FULL=1 pytest experiments/test_arf.py`, 5 seeds), when it has been run:

# %%
for p in sorted((RES / "full").glob("ARF-*.json")):
    r = json.loads(p.read_text())
    print(f"{r['id']} [{r['verdict']}, full tier] {r['measured_text']}")
