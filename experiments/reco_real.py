"""RECO on real data (docs/methods.md, RECO §7, "Real data"): a base CLIP trained on the embedded animal-mnist, frozen;
the memory is its training split (8000 pairs); RECO trained on the training split, evaluated on the test split (1000
images). Reported as it comes out: animal-mnist has 10 coarse classes and no long tail, so a gain is not expected.

    python experiments/reco_real.py                          # base: 2 epochs; RECO: 5 epochs (CPU, a few minutes)
    python experiments/reco_real.py --base logs/base/checkpoints/latest.pt --reco-epochs 10

The same runs from the shell (what this script calls):
    python -m clipcore.train --epochs 2 --logs logs --name reco_real_base
    python -m clipcore.train --method reco --init logs/reco_real_base/checkpoints/latest.pt --epochs 5 \
        --logs logs --name reco_real --reco-dedup 0.99
Writes experiments/results/reco_real.json (read by notebooks/reco.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clipcore.checkpoint import preprocess_of
from clipcore.methods import load_model
from clipcore.data import load_dataset
from clipcore.evaluate import evaluate_model
from clipcore.train import parse_args, train

OUT = Path(__file__).resolve().parent / "results" / "reco_real.json"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=None, help="a base checkpoint (default: train one for --base-epochs)")
    p.add_argument("--base-epochs", type=int, default=2)
    p.add_argument("--reco-epochs", type=int, default=5)
    p.add_argument("--logs", default="logs")
    p.add_argument("--dedup", type=float, default=0.99)
    a = p.parse_args(argv)
    t0 = time.time()
    base_ckpt = a.base
    if base_ckpt is None:
        res = train(parse_args(["--epochs", str(a.base_epochs), "--logs", a.logs, "--name", "reco_real_base"]))
        base_ckpt = str(Path(res["run_dir"]) / "checkpoints" / "latest.pt")
    base, tok, ckpt = load_model(base_ckpt)
    test = load_dataset(None, "test", preprocess=preprocess_of(ckpt, base))   # read as the base was trained
    metrics = {"base": evaluate_model(base, tok, test)}
    res = train(parse_args(["--method", "reco", "--init", base_ckpt, "--epochs", str(a.reco_epochs), "--logs", a.logs,
                            "--name", "reco_real", "--reco-dedup", str(a.dedup)]))
    metrics["reco"] = {k: v for k, v in res.items() if isinstance(v, float) and k != "seconds"}
    keys = ("acc1", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@1")
    delta = {k: 100 * (metrics["reco"][k] - metrics["base"][k]) for k in keys if k in metrics["reco"]}
    rec = {"base_checkpoint": base_ckpt, "base_epochs": a.base_epochs if a.base is None else None,
           "reco_epochs": a.reco_epochs, "dedup_threshold": a.dedup, "metrics": metrics, "delta_points": delta,
           "wall_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"),
           "note": "one seed; animal-mnist test split (1000 images, 10 classes); memory = the base's embeddings of "
                   "the 8000-pair training split, de-duplicated against the test images at the given image cosine "
                   "(count in metrics.reco.memory_removed)"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({"delta_points": delta, "base_acc1": metrics["base"]["acc1"], "reco_acc1": metrics["reco"]["acc1"]}, indent=1))
    return rec


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
