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
# # GRAIN: grounding descriptions in image regions, on PartWorld
#
# Halbe et al., *Grounding Descriptions in Images informs Zero-Shot Visual Recognition* (arXiv 2412.04429). GRAIN adds to CLIP's global image-caption
# loss a DETR-style decoder whose region queries predict boxes (matched to detector boxes by the Hungarian
# algorithm) and are aligned with the descriptions of those boxes. Zero-shot classification then uses class
# descriptions ("has a red striped circle"), which helps most when the class name was never seen in training.
#
# Every number below is read from `experiments/results/GRAIN-*.json`, written by `pytest experiments/test_grain.py`
# (quick tier) or `CLIPCORE_FULL=1 pytest experiments/test_grain.py` (paper tier); nothing is retyped.
#
#     python notebooks/grain.py                       # as a script
#     jupytext --to ipynb notebooks/grain.py          # as a notebook

# %%
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def repo_root() -> Path:
    """The repository holding the clipcore package (a kernel's working directory can be anywhere), else this
    notebook's (as a script) or the working directory's."""
    import clipcore
    starts = [Path(clipcore.__file__).resolve().parent] + ([Path(__file__).resolve().parent] if "__file__" in globals() else [])
    for d in [p for s in starts + [Path.cwd()] for p in (s, *s.parents)]:
        if (d / "experiments" / "results").is_dir() and (d / "theory").is_dir():
            return d
    raise FileNotFoundError("run from inside the clipcore repository")


ROOT = repo_root()
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results"
OUT = Path(os.environ.get("GRAIN_NOTEBOOK_OUT", Path(tempfile.gettempdir()) / "clipcore_grain_notebook"))
OUT.mkdir(parents=True, exist_ok=True)

from clipcore.methods.grain.partworld import PartWorld, PartWorldConfig  # noqa: E402

# %% [markdown]
# ## 1. PartWorld and its annotations
# Objects of 3 parts; sibling classes (one row below = one group of 4) differ in one part. Green: the clean part
# boxes (ground truth, used only for diagnostics); orange: the noisy "detector" boxes with their descriptions
# (jitter, drops, label swaps; the dashed one scored below the 0.3 threshold and is dropped by the loader).

# %%
world = PartWorld(PartWorldConfig(n_test_per_class=1), seed=0)
test = world.sample("test")


def draw(ax, image, parts=None, regions=None, pred=None, size=32):
    ax.imshow(image, interpolation="nearest")
    for b in [] if parts is None else parts * size:
        ax.add_patch(patches.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1.5))
    for r in regions or []:
        x1, y1, x2, y2 = r["bbox"]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="orange", lw=1,
                                       ls="--" if r["score"] < 0.3 else "-"))
        ax.text(x1, y1, r["description"], fontsize=5, color="orange", va="bottom")
    for b in [] if pred is None else pred * size:
        ax.add_patch(patches.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="magenta", lw=1))
    ax.axis("off")


fig, axes = plt.subplots(2, 4, figsize=(10, 5.5))
for row, group in enumerate((0, 1)):
    for col, c in enumerate([i for i, k in enumerate(world.classes) if k.group == group]):
        draw(axes[row, col], test.images[c], test.parts[c], test.records[c]["regions"])
        cd = world.classes[c]
        axes[row, col].set_title(f"{cd.name} ({'seen' if cd.seen else 'novel'})\n" + "\n".join(cd.descriptors), fontsize=6)
fig.tight_layout()
fig.savefig(OUT / "partworld_boxes.png", dpi=120)
print("alt-text:", test.records[0]["caption"], "| MLLM caption:", test.records[0]["aug_caption"])

# %% [markdown]
# The same classes in the three rendering domains (reused by ARF's robustness experiments).

# %%
fig, axes = plt.subplots(3, 8, figsize=(10, 4))
for row, domain in enumerate(("photo", "sketch", "painting")):
    imgs = world.sample("test", domain=domain).images
    for col in range(8):
        axes[row, col].imshow(imgs[col]); axes[row, col].axis("off")
    axes[row, 0].set_title(domain, fontsize=8, loc="left")
fig.tight_layout()
fig.savefig(OUT / "partworld_domains.png", dpi=120)

# %% [markdown]
# ## 2. A short GRAIN run and its predicted boxes
# The quick-tier configuration (grain-xs, 60 steps on a 2,000-image world, ~20 CPU-s), with the validation loss
# on 512 held-out images checked every epoch (`val_size`, `val_every`, `patience`: the paper tier trains the same
# way until that loss stops improving): the experiments' G model of seed 0. Magenta: the 5 region queries' boxes;
# green: the clean part boxes.

# %%
from clipcore.methods import grain, load_model  # noqa: E402
from clipcore.train import TrainConfig, train  # noqa: E402

cfg = TrainConfig(method="grain", model="grain-xs", batch_size=128, epochs=4, lr=3e-3, warmup=10, seed=0,
                  logs=str(OUT / "runs"), name="grain_notebook", log_every=10_000,
                  options=dict(world_train=2000, decoder_width=48, decoder_layers=1, decoder_ffn=96, dropout=0.0,
                               val_size=512, val_every=15, patience=4))
metrics = train(cfg)                  # the same run as experiments/test_grain.py's G, seed 0 (deterministic on CPU)
print({k: round(v, 3) for k, v in metrics.items() if k.startswith(("novel/", "grounding/", "plateau/")) and "fusion" not in k})
model, tokenizer, _ = load_model(str(Path(metrics["run_dir"]) / "checkpoints" / "latest.pt"))
out = grain.image_outputs(model, grain.from_records(test.records, test.images, image_size=32).all_images(), "cpu")
fig, axes = plt.subplots(2, 6, figsize=(10, 3.8))
for ax, c in zip(axes.flat, range(0, 200, 17)):
    draw(ax, test.images[c], test.parts[c], pred=grain.cxcywh_to_xyxy(out["boxes"][c]).numpy())
fig.tight_layout()
fig.savefig(OUT / "grain_predicted_boxes.png", dpi=120)

# %% [markdown]
# ## 3. The claims (read from experiments/results)

# %%
files = sorted(RESULTS.glob("GRAIN-*.json")) + sorted((RESULTS / "full").glob("GRAIN-*.json"))   # quick, then paper tier
recs = [r for r in (json.loads(p.read_text()) for p in files) if "id" in r]
for r in recs:
    print(f"{r['id']:9s} {r['verdict']:13s} [{r['tier']}, seeds {r['seeds']}]  {r['measured_text']}")
    if r.get("note"):
        print(" " * 10 + "note:", r["note"])

# %%
from PIL import Image  # noqa: E402

for r in recs:
    if r.get("figure") and (RESULTS / r["figure"]).is_file():
        plt.figure(figsize=(10, 3.5))
        plt.imshow(Image.open(RESULTS / r["figure"])); plt.axis("off"); plt.title(r["id"])
