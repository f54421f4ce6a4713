"""The front door: checkpoints that carry their preprocessing, the open_clip-named Python API (and the README
example, run as written), and an eval CLI that cannot mis-score quietly."""
import csv
import inspect
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipcore
from clipcore import checkpoint as ckpt_io
from clipcore.data import CLASSNAMES, _animal_mnist, default_preprocess, load_dataset
from clipcore.eval import evaluate_checkpoint, main as eval_main, to_json
from clipcore.evaluate import zero_shot_classifier
from clipcore.images import PreprocessCfg
from clipcore.methods import load_model
from clipcore.train import TrainConfig, train

README = Path(__file__).resolve().parent.parent / "README.md"
RUN = "tiny_animal-mnist_multipos_s0"     # the default run's folder name, as the README's example names it


def _strict(text: str) -> dict:
    """json.loads that refuses NaN / Infinity (what other JSON parsers do)."""
    def refuse(c):
        raise ValueError(f"not JSON: {c}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the default run at batch 128 (62 steps, about 15 s; 86 % held-out) and its test split as PNG
    files + CSV."""
    root = tmp_path_factory.mktemp("front")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(logs=str(root / "logs"), epochs=1, batch_size=128, warmup=5, log_every=10))
    finally:
        torch.set_num_threads(n)
    images, labels, splits = _animal_mnist()
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption", "label"])
        for j, i in enumerate(splits[2].tolist()):
            Image.fromarray(images[i].numpy()).save(root / f"{j}.png")      # the 28x28 grey original
            w.writerow([f"{j}.png", f"a {CLASSNAMES[labels[i]]}.", CLASSNAMES[labels[i]]])
    return root, root / "logs" / RUN / "checkpoints" / "latest.pt", result


# ----------------------------------------------------------------------------- preprocessing in the checkpoint
def test_default_model_scores_the_same_on_its_test_images_as_png_csv(trained):
    """Acceptance: the embedded default's held-out accuracy is reproduced within 1 point from PNG files + CSV
    (before, the CSV was normalised with CLIP's mean/std instead of 0.5/0.5 and scored far lower, silently)."""
    root, ckpt, result = trained
    assert ckpt_io.load(ckpt)["preprocess"] == default_preprocess(32, 3).to_dict()
    m = evaluate_checkpoint(str(ckpt), str(root / "test.csv"))
    assert result["acc1"] > 0.5 and abs(m["acc1"] - result["acc1"]) <= 0.01, (m["acc1"], result["acc1"])
    # the same files read with the CSV's own default (CLIP's statistics): the mismatch the record prevents
    model, tok, _ = load_model(ckpt)
    wrong = load_dataset(root / "test.csv", preprocess=PreprocessCfg.for_files(32, 3))
    from clipcore.evaluate import evaluate_model
    assert evaluate_model(model, tok, wrong, retrieval=False)["acc1"] < result["acc1"] - 0.05


def test_pil_and_in_memory_resize_agree(trained):
    root, _, _ = trained
    mem = load_dataset(None, "test")
    files = load_dataset(root / "test.csv", preprocess=mem.preprocess_cfg)
    a, b = mem.batch_images(list(range(50))), torch.stack([files[i][0] for i in range(50)])
    assert (a - b).abs().max().item() * 0.5 <= 1.01 / 255          # PIL's 8-bit rounding, no more


def test_old_checkpoint_without_the_record_warns_once_and_assumes_todays_rule(trained, tmp_path):
    _, ckpt, _ = trained
    old = {k: v for k, v in ckpt_io.load(ckpt).items() if k not in ("preprocess", "loaded_from")}
    ckpt_io.save_atomic(old, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=r"old.pt records no image preprocessing .*mean=\(0.5, 0.5, 0.5\)"):
        pp = ckpt_io.preprocess_of(ckpt_io.load(tmp_path / "old.pt"))
    assert pp == default_preprocess(32, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt_io.preprocess_of(ckpt_io.load(tmp_path / "old.pt"))     # once per file
    csv_trained = {**old, "train_config": {**old["train_config"], "train_data": "pairs.csv"}}
    ckpt_io.save_atomic(csv_trained, tmp_path / "csv.pt")
    with pytest.warns(UserWarning):
        assert ckpt_io.preprocess_of(ckpt_io.load(tmp_path / "csv.pt")) == PreprocessCfg.for_files(32, 3)


def test_preprocess_cfg_round_trips_and_rejects_nonsense():
    cfg = PreprocessCfg(64, 1, (0.5,), (0.25,), "bilinear", "whole")
    assert PreprocessCfg.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(in_channels=2), dict(mean=(0.5,)), dict(interpolation="lanczos9"), dict(resize_mode="pad")):
        with pytest.raises(ValueError):
            PreprocessCfg(**bad)


# ----------------------------------------------------------------------------- the Python API
def _readme_example() -> str:
    section = README.read_text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_example_runs_as_written(trained, monkeypatch, capsys):
    root, _, _ = trained
    images, labels, splits = _animal_mnist()
    test = splits[2]
    for name in ("cat", "dog"):
        i = test[labels[test].numpy() == CLASSNAMES.index(name)][0]
        Image.fromarray(images[i].numpy()).save(root / f"{name}.png")
    monkeypatch.chdir(root)              # the example's relative paths: logs/<run>/..., cat.png, dog.png
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    probs = scope["probs"]
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(-1), torch.ones(2))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[-2:]] == ["cat.png", "dog.png"]
    assert all(line.split()[1] in CLASSNAMES for line in lines[-2:])


def test_api_names_signatures_and_shapes(trained):
    _, ckpt, _ = trained
    for name in ("create_model_and_transforms", "create_model", "get_tokenizer", "build_zero_shot_classifier", "list_models"):
        assert getattr(clipcore, name).__doc__, name
    assert list(inspect.signature(clipcore.create_model_and_transforms).parameters) == ["name_or_checkpoint", "pretrained", "device"]
    assert list(inspect.signature(clipcore.build_zero_shot_classifier).parameters)[:4] == ["model", "tokenizer", "classnames", "templates"]
    assert {"tiny", "tiny-vit", "small", "base"} <= set(clipcore.list_models())
    model, train_tf, val_tf = clipcore.create_model_and_transforms(str(ckpt))
    x = val_tf(Image.fromarray(np.zeros((40, 30), np.uint8)))
    assert x.shape == (3, 32, 32) and torch.allclose(x, torch.full_like(x, -1.0))     # 0.5/0.5: black -> -1
    assert "mean=(0.5, 0.5, 0.5)" in repr(val_tf) and repr(train_tf) == repr(val_tf)
    tok = clipcore.get_tokenizer(str(ckpt))
    names = ["cat", "dog", "elephant"]
    templates = ["a photo of a {c}.", lambda c: f"a drawing of a {c}."]      # open_clip's callable form too
    clf = clipcore.build_zero_shot_classifier(model, tok, names, templates, num_classes_per_batch=2)
    assert clf.shape == (128, 3)                                                         # (D, C), open_clip's
    torch.testing.assert_close(clf, zero_shot_classifier(model, tok, names, templates).T)
    assert torch.equal(clipcore.get_tokenizer("tiny")(["a cat."]), tok(["a cat."]))          # bpe, context 16
    untrained, _, tf = clipcore.create_model_and_transforms("tiny")
    assert "bicubic" in repr(tf) and tf(Image.new("RGB", (64, 48))).shape == (3, 32, 32)
    loaded = clipcore.create_model("tiny", pretrained=str(ckpt))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="holds its weights"):
        clipcore.create_model(str(ckpt), pretrained=str(ckpt))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        clipcore.create_model("nope")


def test_import_clipcore_is_cheap():
    code = "import sys, clipcore; assert 'torch' not in sys.modules; print(clipcore.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "create_model_and_transforms" in out


# ----------------------------------------------------------------------------- the eval CLI
def _subset_csv(root: Path, name: str, keep: list[str], label_as=str) -> Path:
    rows = [r for r in csv.DictReader(open(root / "test.csv")) if r["label"] in keep]
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption", "label"])
        for r in rows:
            w.writerow([r["filepath"], r["caption"], label_as(r["label"])])
    return root / name


def test_eval_few_classes_gives_strict_json_without_acc5_and_writes_output(trained, capsys):
    root, ckpt, _ = trained
    data = _subset_csv(root, "three.csv", ["cat", "dog", "cow"])
    eval_main(["--checkpoint", str(ckpt), "--data", str(data), "--batch-size", "64", "--output", str(root / "m.json")])
    printed = _strict(capsys.readouterr().out)
    assert printed == _strict((root / "m.json").read_text())
    assert "acc5" not in printed and 0 <= printed["acc1"] <= 1 and printed["primary"] == "acc1"
    assert to_json({"a": float("nan"), "b": float("inf"), "c": 1.0}) == '{\n  "a": null,\n  "b": null,\n  "c": 1.0\n}'


def test_eval_classnames_and_templates_files(trained, tmp_path, capsys):
    root, ckpt, _ = trained
    keep = ["cat", "dog", "cow", "horse", "sheep", "zebra"]
    data = _subset_csv(root, "ints.csv", keep, label_as=lambda c: str(keep.index(c)))
    (tmp_path / "names.txt").write_text("\n".join(keep) + "\n")
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\n\na silhouette of a {c}.\n")
    with pytest.warns(UserWarning, match="--classnames"):                # integer labels: no zero-shot, said so
        assert "acc1" not in evaluate_checkpoint(str(ckpt), str(data))
    eval_main(["--checkpoint", str(ckpt), "--data", str(data), "--classnames", str(tmp_path / "names.txt"),
               "--templates", str(tmp_path / "templates.txt")])
    m = _strict(capsys.readouterr().out)
    assert 0 <= m["acc1"] <= 1 and 0 <= m["acc5"] <= 1                   # 6 classes: top-5 is informative
    three = _subset_csv(root, "three.csv", ["cat", "dog", "cow"])        # named labels: one name per class
    assert "has 3 classes" in _one_line_error(["--checkpoint", str(ckpt), "--data", str(three), "--classnames",
                                               str(tmp_path / "names.txt")], capsys)
    (tmp_path / "bad.txt").write_text("a photo of a cat.\n")
    with pytest.raises(SystemExit) as e:
        eval_main(["--checkpoint", str(ckpt), "--data", str(data), "--templates", str(tmp_path / "bad.txt")])
    assert e.value.code == 2 and "has no {c}" in capsys.readouterr().err


def _one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        eval_main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err, err
    return err


def test_eval_refuses_what_it_would_mis_score(trained, tmp_path, capsys):
    root, ckpt, _ = trained
    c = ["--checkpoint", str(ckpt)]
    (tmp_path / "one" / "cat").mkdir(parents=True)                          # one class: acc1 = 1 by construction
    Image.open(root / "0.png").save(tmp_path / "one" / "cat" / "0.png")
    assert "one class ('cat')" in _one_line_error(c + ["--data", str(tmp_path / "one")], capsys)
    (tmp_path / "ann" / "images").mkdir(parents=True)                       # a GRAIN annotation folder
    Image.open(root / "0.png").save(tmp_path / "ann" / "images" / "0.png")
    (tmp_path / "ann" / "train.jsonl").write_text("{}\n")
    assert "JSON-lines annotations (train.jsonl)" in _one_line_error(c + ["--data", str(tmp_path / "ann")], capsys)
    err = _one_line_error(c + ["--data", str(root / "test.csv"), "--linear-probe"], capsys)
    assert "--probe-train-data" in err and "--probe-train-data" in _help()
    other = {**ckpt_io.load(ckpt), "train_config": {**ckpt_io.load(ckpt)["train_config"], "train_data": "pairs.csv"}}
    other.pop("loaded_from")
    ckpt_io.save_atomic(other, tmp_path / "csv.pt")
    err = _one_line_error(["--checkpoint", str(tmp_path / "csv.pt")], capsys)
    assert "--data is required" in err and "trained on pairs.csv" in err


def _help() -> str:
    from clipcore.eval import build_parser
    return build_parser().format_help()


def test_val_data_files_are_read_with_the_training_preprocessing(trained):
    """--val-data files while training on the default: read with its 0.5/0.5, not the CSV's own default."""
    from clipcore.evaluate import evaluate_model
    from clipcore.clip_task import clip_task
    root, _, _ = trained
    task = clip_task(TrainConfig(val_data=str(root / "test.csv"), seed=1), torch.device("cpu"))
    assert task.meta["preprocess"] == default_preprocess().to_dict()
    tok = ckpt_io.tokenizer_for(task.model.cfg)
    got = task.evaluate("val")["acc1"]
    same = load_dataset(root / "test.csv", preprocess=default_preprocess())
    assert got == evaluate_model(task.model, tok, same, retrieval=False)["acc1"]
