"""What a run tells its user: logs from step 1, epoch means, the closing summary, TensorBoard tags, the warm-up
default, --help generated from the configs, one-line flag errors, open_clip's flag names, run-folder names,
the device check, and ``python -m clipcore.memory``."""
import json
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore import train as train_mod
from clipcore import training
from clipcore.data import DataError
from clipcore.errors import ConfigError, UserError
from clipcore.train import TrainConfig, build_parser, data_name, parse_args, train
from clipcore.training import resolve_warmup

FAST = dict(batch_size=32, warmup=2, epochs=1)


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


# ----------------------------------------------------------------------------- runs that report
def test_short_run_logs_from_step_one_and_summarises(tmp_path, capsys):
    """3 steps with --log-every 10: rows at step 1 and at the stop, a plot, and a summary saying how it stopped."""
    out = train(TrainConfig(logs=str(tmp_path), name="short", max_steps=3, log_every=10, **FAST))
    assert [r["step"] for r in _rows(out["run_dir"]) if "loss" in r] == [1, 3]
    assert (tmp_path / "short" / "loss.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "warm-up 2 steps (--warmup)" in text
    assert "run short: stopped by --max-steps 3 at step 3 (epoch 1/1)" in text
    assert f"loss: {np.mean(out['losses']):.4f} (mean of the last epoch's 3 steps" in text
    assert "not evaluated, the run did not finish" in text and "checkpoint: " in text
    assert out["stopped"] == "max_steps"
    resumed = train(TrainConfig(logs=str(tmp_path), name="short", max_steps=4, log_every=10, resume="latest", **FAST))
    text = capsys.readouterr().out
    assert "resumed at step 3" in text and resumed["steps"] == 4
    assert [r["step"] for r in _rows(out["run_dir"]) if "loss" in r] == [1, 3, 4]


def test_epoch_mean_val_once_and_summary(folder, tmp_path, capsys):
    """Folder data with --val-data: the console shows each epoch's MEAN loss; the val data are evaluated and logged
    once per epoch as val/ (never again as test/); the held-out result is the last epoch's."""
    out = train(TrainConfig(logs=str(tmp_path), name="f", train_data=str(folder), val_data=str(folder), batch_size=16,
                            epochs=2, warmup=1))
    text = capsys.readouterr().out
    losses = out["losses"]
    assert f"epoch 1/2: mean loss {np.mean(losses[:3]):.3f} over 3 steps" in text
    assert f"epoch 2/2: mean loss {np.mean(losses[3:]):.3f} over 3 steps" in text
    rows = _rows(out["run_dir"])
    assert not any(k.startswith("test/") for r in rows for k in r)
    val = [r for r in rows if "val/acc1" in r]
    assert len(val) == 2 and out["acc1"] == val[-1]["val/acc1"]
    assert re.search(r"run f: completed at step 6 \(epoch 2/2\).*\n  loss: .*\n  held-out \(val data\): zero-shot "
                     rf"top-1 {out['acc1']:.4f}", text)


def test_run_without_validation_says_so(folder, tmp_path, capsys):
    train(TrainConfig(logs=str(tmp_path), name="nv", train_data=str(folder), batch_size=16, epochs=1, warmup=1))
    text = capsys.readouterr().out
    assert "held-out: no validation data" in text and "epoch 1/1: mean loss" in text


def test_tensorboard_tags_and_report_to(tmp_path, monkeypatch):
    """--report-to tensorboard writes train/... and val/... tags (a recording stand-in for SummaryWriter); the
    default writes no events; a missing tensorboard package is one clear error."""
    calls = []

    class Writer:
        def __init__(self, logdir):
            calls.append(("dir", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def close(self):
            calls.append(("close", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(TrainConfig(logs=str(tmp_path), name="none", max_steps=1, **FAST))
    assert calls == []
    train(TrainConfig(logs=str(tmp_path), name="tb", max_steps=2, report_to="tensorboard", **FAST))
    tags = {t for t, _ in calls}
    assert {"train/loss", "train/lr", "train/logit_scale"} <= tags and calls[0] == ("dir", str(tmp_path / "tb" / "tensorboard"))
    assert not [t for t in tags if "/" not in t and t not in ("dir", "close")]
    from clipcore.runlog import Metrics
    (tmp_path / "x").mkdir()
    m = Metrics(tmp_path / "x", tensorboard=True)
    m.write({"step": 5, "val/acc1": 0.5, "epoch": 1})
    assert ("val/acc1", 5) in calls and ("epoch", 5) not in calls
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import fails
    with pytest.raises(UserError, match="--report-to tensorboard: the tensorboard package is not installed"):
        parse_args(["--report-to", "tensorboard"])          # at start, before any data is read
    with pytest.raises(UserError, match="--report-to tensorboard: the tensorboard package is not installed"):
        train(TrainConfig(logs=str(tmp_path), name="tb2", max_steps=1, report_to="tensorboard", **FAST))
    assert not (tmp_path / "tb2").exists()


def test_plot_keeps_the_pyplot_backend_and_figures(tmp_path):
    """plot_losses draws on its own Figure: a notebook's backend and open figures are untouched."""
    import matplotlib
    import matplotlib.pyplot as plt

    from clipcore.runlog import plot_losses
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    before = matplotlib.get_backend()
    fig = plt.figure()
    try:
        plot_losses(tmp_path / "m.jsonl", tmp_path / "loss.png", title="my run")
        assert matplotlib.get_backend() == before and plt.get_fignums() == [fig.number]
        assert (tmp_path / "loss.png").stat().st_size > 1000
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- defaults for small data
def test_warmup_default_is_a_fraction_of_short_runs():
    assert resolve_warmup(TrainConfig(), 40) == (4, "default: min(100, 10 % of 40)")
    assert resolve_warmup(TrainConfig(), 5000)[0] == 100
    assert resolve_warmup(TrainConfig(warmup=100), 40) == (100, "--warmup")      # an explicit value is kept
    assert resolve_warmup(TrainConfig(warmup=0), 40)[0] == 0
    assert parse_args([]).warmup is None and parse_args(["--warmup", "7"]).warmup == 7


DIGITS = "zero one two three four five six seven eight nine".split()


def digits_csv(root) -> tuple:
    """scikit-learn's 1,797 8x8 digits as PNGs + train.csv (1,438 pairs, 80 %) and val.csv (359), captions
    "a photo of the digit three.", labels the digit's name."""
    import csv

    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    cut = round(0.8 * len(order))
    (root / "img").mkdir(parents=True)
    for split, idx in (("train", order[:cut]), ("val", order[cut:])):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "caption", "label"])
            for i in idx:
                Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(root / f"img/{i}.png")
                w.writerow([f"img/{i}.png", f"a photo of the digit {DIGITS[d.target[i]]}.", DIGITS[d.target[i]]])
    return root / "train.csv", root / "val.csv"


def test_default_flags_learn_a_small_csv(tmp_path, capsys):
    """Acceptance: 1,438 digit pairs trained with DEFAULT flags reach >= 90 % held-out zero-shot. 8 epochs at batch
    256 are 40 steps here: with a 100-step warm-up the lr never peaked (63 %), with the 10 % warm-up alone 79 %; the
    default now takes at least 100 steps (20 epochs, warm-up 10): 96.7 % measured. ~70 s on 2 busy cores."""
    train_csv, val_csv = digits_csv(tmp_path / "digits")
    out = train(parse_args(["--train-data", str(train_csv), "--val-data", str(val_csv), "--logs", str(tmp_path)]))
    text = capsys.readouterr().out
    assert "5 steps/epoch x 20 epochs (default: 8, raised to make 100 steps)" in text
    assert "warm-up 10 steps (default: min(100, 10 % of 100))" in text
    assert out["steps"] == 100 and out["acc1"] >= 0.90, out["acc1"]


def test_default_epochs_keep_8_unless_the_run_would_be_tiny():
    assert training.resolve_epochs(TrainConfig(), 31) == (8, "default: 8")            # the default run: 248 steps
    assert training.resolve_epochs(TrainConfig(), 5)[0] == 20
    assert training.resolve_epochs(TrainConfig(), 1)[0] == 100
    assert training.resolve_epochs(TrainConfig(epochs=2), 5) == (2, "--epochs")       # an explicit value is kept


# ----------------------------------------------------------------------------- --help and flag errors
def test_help_is_generated_from_the_configs():
    """Every TrainConfig field and every method option has a flag with help text; defaults, choices and clean
    metavars show; nothing cites a file outside the repository."""
    import dataclasses

    from clipcore.methods import available
    text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name != "options":
            assert re.search(rf"--{f.name.replace('_', '-')}\b", text), f.name
    for name, module in available().items():
        for f in dataclasses.fields(module.Config):
            assert f"--{name}-{f.name.replace('_', '-')}" in text
    p = build_parser()
    undocumented = [a.option_strings[0] for a in p._actions if a.option_strings != ["-h", "--help"] and not a.help]
    assert undocumented == []
    assert "(default: 256)" in text and "open_clip's is per GPU" in text and "--batch-size is the global batch" in text
    assert "--reco-search {uni,cross}" in text and "--arf-mode {ft,lpft,flyp,arf}" in text
    assert "--precision {fp32,bf16,fp16,amp}" in text and "--report-to {none,tensorboard}" in text
    assert "__" not in text and "RECO__" not in text
    assert not re.search(r"paper[s]/|DESIGN[.]md|\b\w+\.md\b(?<!README\.md)", text.replace("README", "")), \
        re.findall(r"\S*\.md\S*|paper[s]/\S*", text)
    assert "[RECON" not in text and "[PAPER]" not in text


def test_flag_errors_are_one_line(capsys):
    for argv, msg in ((["--loss", "triplet"], "argument --loss: invalid choice: 'triplet'"),
                      (["--epochs", "-1"], "--epochs -1: must be at least 1"),
                      (["--reco-k", "3"], "--reco-k: a flag of --method reco, not of --method clip"),
                      (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'")):
        with pytest.raises(SystemExit) as e:
            train_mod.main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err and err.startswith("clipcore.train: error: ") and msg in err, err


def test_open_clip_flag_names(folder, tmp_path):
    cfg = parse_args(["--grad-clip-norm", "0.5", "--logs-dir", "x", "--precision", "amp", "--csv-img-key", "path",
                      "--csv-caption-key", "text"])
    assert (cfg.grad_clip, cfg.logs, cfg.precision, cfg.csv_img_key, cfg.csv_caption_key) == (0.5, "x", "amp", "path", "text")
    assert training.resolve_precision("amp", torch.device("cpu")) == "fp32"
    assert training.resolve_precision("amp", torch.device("cuda")) == "bf16"
    # a CSV with open_clip-style columns of other names, read through --csv-img-key / --csv-caption-key
    rows = ["path\ttext"] + [f"{p.relative_to(folder)}\ta photo of a {p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (folder / "pairs.tsv").write_text("\n".join(rows) + "\n")
    out = train(parse_args(["--train-data", str(folder / "pairs.tsv"), "--csv-img-key", "path", "--csv-caption-key",
                            "text", "--csv-separator", "\\t", "--logs", str(tmp_path), "--max-steps", "1",
                            "--batch-size", "16", "--warmup", "1"]))
    assert out["steps"] == 1
    # any one-character separator, as open_clip's --csv-separator: a semicolon-separated .csv
    (folder / "pairs.csv").write_text("\n".join(r.replace("\t", ";") for r in rows) + "\n")
    out = train(parse_args(["--train-data", str(folder / "pairs.csv"), "--csv-img-key", "path", "--csv-caption-key",
                            "text", "--csv-separator", ";", "--logs", str(tmp_path), "--max-steps", "1",
                            "--batch-size", "16", "--warmup", "1"]))
    assert out["steps"] == 1
    with pytest.raises(DataError, match=r"pairs.csv: missing column"):     # read with the default comma
        train(parse_args(["--train-data", str(folder / "pairs.csv"), "--csv-img-key", "path", "--logs", str(tmp_path)]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_checked_at_start(tmp_path):
    with pytest.raises(ConfigError, match="--device cuda: this machine has no usable CUDA device"):
        parse_args(["--device", "cuda"])
    with pytest.raises(ConfigError, match="--device cuda:1: this machine has no usable CUDA device"):
        train(TrainConfig(logs=str(tmp_path), device="cuda:1"))
    assert not any(tmp_path.iterdir())


def test_run_folder_names_drop_shard_patterns(tmp_path):
    assert data_name("shards/tiny_{00000..00003}.tar") == "tiny"
    assert data_name("data/shards/{00000..00099}.tar") == "shards"
    assert data_name("pairs.csv") == "pairs" and data_name("photos/") == "photos"
    cfg = TrainConfig(logs=str(tmp_path), train_data="s/tiny_{00000..00003}.tar")
    assert train_mod.run_dir(cfg).name == "tiny_tiny_multipos_s0"


# ----------------------------------------------------------------------------- python -m clipcore.memory
def test_memory_cli_builds_what_reco_reads(folder, tmp_path, capsys):
    from clipcore.methods import load_model
    from clipcore.data import load_dataset
    from clipcore.memory import MemoryBank, build_memory
    from clipcore.memory import main as memory_main
    train(TrainConfig(logs=str(tmp_path), name="base", train_data=str(folder), batch_size=16, epochs=1, warmup=1))
    ckpt = str(tmp_path / "base" / "checkpoints" / "latest.pt")
    memory_main(["build", "--checkpoint", ckpt, "--data", str(folder), "--out", str(tmp_path / "mem.safetensors"),
                 "--device", "cpu"])
    assert "48 pairs x 128 dims" in capsys.readouterr().out
    bank = MemoryBank.load(tmp_path / "mem.safetensors")
    model, tok, _ = load_model(ckpt)
    ref = build_memory(model, load_dataset(str(folder), image_size=32), tok)
    assert torch.allclose(bank.image, ref.image, atol=1e-6) and torch.equal(bank.labels, ref.labels)
    memory_main(["info", str(tmp_path / "mem.safetensors")])
    text = capsys.readouterr().out
    assert "48 pairs x 128 dims" in text and "48 labelled (3 classes)" in text and f'encoder: "{ckpt}"' in text
    with pytest.raises(SystemExit):
        memory_main(["build", "--checkpoint", ckpt, "--out", str(tmp_path / "m.pt")])
    assert capsys.readouterr().err.strip() == f"clipcore.memory: error: --out {tmp_path / 'm.pt'}: name it .safetensors (or .npz)"


def test_summary_names_every_grain_zero_shot_mode(tmp_path, capsys):
    """GRAIN's acc1 is its primary mode (name+desc): the closing summary lists the other modes beside it."""
    from clipcore import runlog
    held = {"acc1": 0.277, "all/name/acc": 0.444, "all/name+desc/acc": 0.277, "all/fusion0.5/acc": 0.5,
            "all/name/sibling": 0.9, "novel/name/acc": 0.1}
    runlog.summary(tmp_path / "g", tmp_path / "latest.pt", 10, 1, 1, 0, [1.0], [1.0], None, "completed", held,
                   "test split", 3.0)
    out = capsys.readouterr().out
    assert "zero-shot top-1 0.2770" in out and "by mode: name 0.4440, name+desc 0.2770, fusion0.5 0.5000" in out
