"""Evaluate a checkpoint: zero-shot classification, image<->text retrieval and a linear probe.

    python -m clipcore.eval --checkpoint logs/tiny_animal-mnist_multipos_s0/checkpoints/latest.pt
    python -m clipcore.eval --checkpoint ckpt.pt --data test.csv --linear-probe --probe-train-data train.csv

Prints one JSON object of metrics (definitions as in LAION's CLIP_benchmark; see clipcore.evaluate).
The metric functions live in :mod:`clipcore.evaluate`; this is only the command line.
"""
from __future__ import annotations

import argparse
import json

import torch

from clipcore.checkpoint import load_model
from clipcore.data import load_dataset
from clipcore.errors import ConfigError, cli
from clipcore.evaluate import encode_images, evaluate_model, linear_probe


def _labelled_features(model, dataset, device) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, collate_fn=lambda b: (torch.stack([x[0] for x in b]), torch.tensor([x[2] for x in b])))
    feats, labels = [], []
    for images, y in loader:
        feats.append(encode_images(model, images, device=device)); labels.append(y)
    y = torch.cat(labels)
    if (y < 0).any():
        raise ConfigError("--linear-probe needs labelled data (a label column or an image folder)")
    return torch.cat(feats), y


def evaluate_checkpoint(checkpoint: str, data: str | None = None, split: str = "test", *, linear: bool = False,
                        probe_train_data: str | None = None, device: str = "cpu", skip_bad: bool = False) -> dict:
    model, tokenizer, ckpt = load_model(checkpoint, device)
    vis = getattr(model, "base", model).cfg.vision      # RECO wraps its frozen base CLIP
    kw = dict(image_size=vis.image_size, in_channels=vis.in_channels, seed=0, skip_bad=skip_bad)
    dataset = load_dataset(data, split, **kw)
    metrics = evaluate_model(model, tokenizer, dataset, device=device)
    if linear:
        if data is not None and probe_train_data is None:
            raise ConfigError("--linear-probe on user data needs --probe-train-data (the labelled data to fit the probe on)")
        train_ds = load_dataset(probe_train_data, "train", **kw)
        val_ds = load_dataset(None, "val", **kw) if probe_train_data is None else None
        tx, ty = _labelled_features(model, train_ds, device)
        ex, ey = _labelled_features(model, dataset, device)
        vx, vy = _labelled_features(model, val_ds, device) if val_ds is not None else (None, None)
        probe = linear_probe(tx, ty, ex, ey, val_x=vx, val_y=vy)
        metrics.update({f"linear_probe/{k}": v for k, v in probe.items()})
    return metrics


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clipcore.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a .pt written by clipcore.train")
    p.add_argument("--data", default=None, help="CSV/TSV or image folder; default: embedded animal-mnist")
    p.add_argument("--split", default="test", help="split of the embedded default (train/val/test)")
    p.add_argument("--linear-probe", action="store_true", help="also fit a logistic-regression probe on frozen image features")
    p.add_argument("--probe-train-data", default=None, help="labelled data for the probe (default: the embedded train split)")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    m = evaluate_checkpoint(a.checkpoint, a.data, a.split, linear=a.linear_probe, probe_train_data=a.probe_train_data,
                            device=a.device, skip_bad=a.skip_bad)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
