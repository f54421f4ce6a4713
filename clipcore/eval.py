"""Evaluate a checkpoint: zero-shot classification, image<->text retrieval and a linear probe.

    python -m clipcore.eval --checkpoint logs/tiny_animal-mnist_multipos_s0/checkpoints/latest.pt
    python -m clipcore.eval --checkpoint ckpt.pt --data test.csv --output metrics.json
    python -m clipcore.eval --checkpoint ckpt.pt --data test.csv --classnames names.txt --templates prompts.txt
    python -m clipcore.eval --checkpoint ckpt.pt --data test.csv --linear-probe --probe-train-data train.csv

Prints one JSON object (strict JSON: no NaN) of metrics, definitions as in LAION's CLIP_benchmark (see
clipcore.evaluate), with "checkpoint", "data" and "primary" (the key of the headline number). Images
are read with the checkpoint's own preprocessing record (clipcore.images.PreprocessCfg), so a model is never
scored on images normalised differently from its training. ``--data`` is required unless the checkpoint was
trained on the embedded default data. GRAIN checkpoints report every zero-shot mode (name, name+desc, desc,
fusion) on a PartWorld test set, RECO checkpoints the refined and the frozen base's numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import torch

from clipcore.checkpoint import preprocess_of
from clipcore.data import DataError, load_dataset
from clipcore.errors import ConfigError, MissingFileError, cli
from clipcore.evaluate import encode, evaluate_model, linear_probe
from clipcore.methods import load_model, method_module

LAYOUTS = ("a .csv/.tsv (filepath, caption[, label]) or a folder with one subfolder of images per class")


def _labelled_features(model, dataset, device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                         collate_fn=lambda b: (torch.stack([x[0] for x in b]), torch.tensor([x[2] for x in b])))
    labels = []

    def images():                 # the loader's images, its labels kept in order
        for x, y in loader:
            labels.append(y)
            yield x
    feats = encode(model, "image", images(), device=device)
    y = torch.cat(labels)
    if (y < 0).any():
        raise ConfigError("--linear-probe needs labelled data (a label column or an image folder)")
    return feats, y


def read_lines(path: str | None, flag: str) -> list[str] | None:
    """Non-blank, stripped lines of a text file (--classnames, --templates); None for no file."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{flag} {path!r}: file not found (a text file, one entry per line)")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{flag} {path}: the file has no non-blank lines")
    return lines


def check_templates(templates: list[str] | None, where: str) -> list[str] | None:
    """Every template must hold the class-name slot ``{c}`` (or open_clip's ``{}``)."""
    for n, t in enumerate(templates or [], 1):
        if "{c}" not in t and "{}" not in t:
            raise ConfigError(f"{where} line {n}: template {t!r} has no {{c}} where the class name goes "
                              "(e.g. 'a photo of a {c}.')")
    return templates


def check_layout(data: str) -> None:
    """Refuse data a classification eval would silently mis-read: GRAIN annotation files and folders."""
    p = Path(data)
    notes = sorted(x.name for x in p.glob("*.jsonl")) if p.is_dir() else [p.name] if p.suffix == ".jsonl" else []
    if notes:
        raise DataError(f"--data {data}: holds JSON-lines annotations ({', '.join(notes[:3])}), not classification "
                        f"data; an image folder would be read as one class per subfolder. Pass {LAYOUTS}; "
                        "a GRAIN checkpoint takes a PartWorld folder (classes.json + test.jsonl)")


def _check_classes(ds, data: str, classnames: list[str] | None) -> None:
    labelled = bool((ds.labels >= 0).any())
    if classnames is not None:
        if ds.classnames is not None and len(classnames) != len(ds.classnames):
            raise ConfigError(f"--classnames has {len(classnames)} names but {data} has {len(ds.classnames)} classes "
                              f"({', '.join(ds.classnames[:3])}, ...): give one name per class, in sorted order")
        if labelled and int(ds.labels.max()) >= len(classnames):
            raise ConfigError(f"--classnames has {len(classnames)} names but {data} has label "
                              f"{int(ds.labels.max())}; give one name per label, line i naming label i")
        ds.classnames = classnames
    if labelled and ds.classnames is not None and len(ds.classnames) < 2:
        raise DataError(f"--data {data}: one class ({ds.classnames[0]!r}), so zero-shot accuracy is 1 by "
                        f"construction. Pass {LAYOUTS} with at least two classes")
    if labelled and ds.classnames is None:
        warnings.warn(f"{data}: integer labels without class names, so no zero-shot classification (retrieval "
                      "only); pass --classnames FILE (line i names label i)", stacklevel=3)


def evaluate_checkpoint(checkpoint: str, data: str | None = None, split: str = "test", *, linear: bool = False,
                        probe_train_data: str | None = None, device: str = "cpu", skip_bad: bool = False,
                        batch_size: int = 512, classnames: list[str] | None = None,
                        templates: list[str] | None = None) -> dict:
    """Metrics of a checkpoint on ``data`` (None: the embedded default's ``split``, only for checkpoints trained
    on it) -> {"acc1", ..., "primary": the headline key}. Images are read with the checkpoint's preprocessing."""
    model, tokenizer, ckpt = load_model(checkpoint, device)
    pp = preprocess_of(ckpt, model)
    module = method_module(ckpt.get("method") or "clip")
    trained_on = (ckpt.get("train_config") or {}).get("train_data", "unknown")
    if hasattr(module, "eval_held_out"):
        out = module.eval_held_out(model, tokenizer, ckpt, data, pp, device)
        if out is not None:
            return out
    default_data = getattr(module, "DEFAULT_DATA", None)
    if data is None and (trained_on is not None or default_data is not None):
        raise ConfigError(f"--data is required: {checkpoint} was trained on {trained_on or default_data}, not on the "
                          f"embedded animal-mnist, which would score it at chance. Pass its held-out data: {LAYOUTS}")
    if data is not None:
        check_layout(data)
    kw = dict(preprocess=pp, seed=0, skip_bad=skip_bad)
    dataset = load_dataset(data, split, **kw)
    _check_classes(dataset, data or "animal-mnist", classnames)
    run = lambda m: evaluate_model(m, tokenizer, dataset, templates=templates, device=device,  # noqa: E731
                                   batch_size=batch_size)
    metrics = {"primary": "acc1", **run(model)}
    for prefix, reference in (module.eval_references(model) if hasattr(module, "eval_references") else {}).items():
        metrics.update({f"{prefix}/{k}": v for k, v in run(reference).items()})   # e.g. RECO's frozen base
    if linear:
        if data is not None and probe_train_data is None:
            raise ConfigError("--linear-probe with --data needs --probe-train-data (labelled data to fit the probe on, "
                              "in the same layout); without --data the embedded train split is used")
        train_ds = load_dataset(probe_train_data, "train", **kw)
        val_ds = load_dataset(None, "val", **kw) if probe_train_data is None else None
        tx, ty = _labelled_features(model, train_ds, device, batch_size)
        ex, ey = _labelled_features(model, dataset, device, batch_size)
        vx, vy = _labelled_features(model, val_ds, device, batch_size) if val_ds is not None else (None, None)
        probe = linear_probe(tx, ty, ex, ey, val_x=vx, val_y=vy)
        metrics.update({f"linear_probe/{k}": v for k, v in probe.items()})
    return metrics


def to_json(obj: dict) -> str:
    """Strict JSON (``json.loads`` of any parser accepts it): NaN and inf become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()}
    return json.dumps(clean, indent=2, allow_nan=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipcore.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt written by clipcore.train")
    p.add_argument("--data", default=None, metavar="PATH", help=f"held-out data: {LAYOUTS}; required unless the checkpoint was trained "
                   "on the embedded animal-mnist (then its --split is used)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of the embedded default (default: test)")
    p.add_argument("--batch-size", type=int, default=512, metavar="N",
                   help="images / texts encoded per forward pass (default: 512)")
    p.add_argument("--classnames", default=None, metavar="FILE", help="text file, one class name per line: line i names label i (integer labels; "
                   "a folder's i-th subfolder or a CSV's i-th class name in sorted order), replacing the data's names")
    p.add_argument("--templates", default=None, metavar="FILE", help="text file, one prompt template per line with {c} for the class "
                   "name (default: clipcore.data.ZS_TEMPLATES)")
    p.add_argument("--linear-probe", action="store_true", help="also fit a logistic-regression probe on frozen image "
                   "features; with --data it needs --probe-train-data")
    p.add_argument("--probe-train-data", default=None, metavar="PATH", help="labelled data to fit the probe on (same layouts as "
                   "--data); required with --data, default without it: the embedded train split")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the JSON to this file")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable rows instead of stopping")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda when available, else cpu")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size {a.batch_size}: must be at least 1")
    m = evaluate_checkpoint(a.checkpoint, a.data, a.split, linear=a.linear_probe, probe_train_data=a.probe_train_data,
                            device=a.device, skip_bad=a.skip_bad, batch_size=a.batch_size,
                            classnames=read_lines(a.classnames, "--classnames"),
                            templates=check_templates(read_lines(a.templates, "--templates"), a.templates))
    ckpt_meta = {"checkpoint": a.checkpoint, "data": a.data or f"animal-mnist {a.split} split"}
    text = to_json({**ckpt_meta, **m})
    if a.output:
        try:
            Path(a.output).write_text(text + "\n")
        except OSError as e:
            raise ConfigError(f"--output {a.output}: cannot write ({e.strerror})") from e
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
