"""End-to-end tests of the training loop: exact resume, NaN guard, atomic checkpoints, CLI, evaluation."""
import json
import math

import pytest
import torch

from clipcore import checkpoint as ckpt_io
from clipcore import train as train_mod
from clipcore import training
from clipcore.data import DataError
from clipcore.errors import ConfigError
from clipcore.eval import evaluate_checkpoint
from clipcore.loop import NonFiniteLoss
from clipcore.train import TrainConfig, parse_args, train
from clipcore.training import warmup_cosine

FAST = dict(batch_size=32, warmup=2, log_every=1, epochs=1)


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    """Default data: 6 steps straight vs 3 steps, checkpoint, resume to 6 -> identical losses, then evaluate."""
    full = train(TrainConfig(logs=str(tmp_path), name="full", max_steps=6, **FAST))
    first = train(TrainConfig(logs=str(tmp_path), name="cut", max_steps=3, **FAST))
    rest = train(TrainConfig(logs=str(tmp_path), name="cut", max_steps=6, resume="latest", **FAST))
    assert len(full["losses"]) == 6 and len(first["losses"]) == 3 and len(rest["losses"]) == 3
    assert first["losses"] == full["losses"][:3]
    assert rest["losses"] == full["losses"][3:]  # exact equality on CPU
    ckpt = ckpt_io.load(tmp_path / "cut" / "checkpoints" / "latest.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (6, 0, 6)
    m = evaluate_checkpoint(str(tmp_path / "cut" / "checkpoints" / "latest.pt"), split="val")
    assert 0.0 <= m["acc1"] <= 1.0 and "image_retrieval_recall@1" in m


def _last_json(capsys) -> str:
    out = capsys.readouterr().out
    return out[out.rindex("\n{") + 1:]


def test_resume_across_epochs_on_folder_data(folder, tmp_path, capsys):
    cfg = dict(train_data=str(folder), val_data=str(folder), batch_size=16, epochs=3, warmup=2, log_every=1, model="tiny")
    full = train(TrainConfig(logs=str(tmp_path), name="a", **cfg))          # 3 steps/epoch, 9 steps
    train(TrainConfig(logs=str(tmp_path), name="b", max_steps=4, **cfg))   # stops in epoch 1, batch 1
    rest = train(TrainConfig(logs=str(tmp_path), name="b", resume="latest", **cfg))
    assert full["steps"] == 9 and rest["steps"] == 9
    assert rest["losses"] == full["losses"][4:]
    assert rest["acc1"] == full["acc1"]
    rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    # the eval CLI on the same checkpoint, with a linear probe fitted on the folder
    from clipcore.eval import main as eval_main
    eval_main(["--checkpoint", str(tmp_path / "a" / "checkpoints" / "latest.pt"), "--data", str(folder),
               "--linear-probe", "--probe-train-data", str(folder)])
    printed = json.loads(_last_json(capsys))
    assert printed["acc1"] == pytest.approx(full["acc1"]) and 0 <= printed["linear_probe/acc1"] <= 1
    assert sum("val/acc1" in r for r in rows) == 3 and (tmp_path / "a" / "loss.png").stat().st_size > 1000


def test_nan_stops_with_step_and_keeps_last_checkpoint(tmp_path, loss_hook):
    loss_hook(3, lambda loss: loss * float("nan"))
    with pytest.raises(NonFiniteLoss, match="at step 3 .*latest.pt"):
        train(TrainConfig(logs=str(tmp_path), name="nan", save_every=2, max_steps=5, **FAST))
    ckpt = ckpt_io.load(tmp_path / "nan" / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # resumed and failing before its first save: the checkpoint it resumed from is the last good one
    loss_hook(1, lambda loss: loss * float("nan"))
    with pytest.raises(NonFiniteLoss, match="at step 3 .*the last good checkpoint is .*nan/checkpoints/latest.pt"):
        train(TrainConfig(logs=str(tmp_path), name="nan", save_every=2, max_steps=5, resume="latest", **FAST))
    with pytest.raises(NonFiniteLoss, match=r"at step 1 .*none \(none saved yet\)"):   # a fresh run: none
        train(TrainConfig(logs=str(tmp_path), name="fresh", save_every=2, max_steps=5, **FAST))


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    ckpt_io.save_atomic({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(ckpt_io.CheckpointError, match=f"cannot write {path}: disk full; {path} is unchanged"):
        ckpt_io.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt_io.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "ck.pt.sha256"]  # no temporary file left behind


def test_existing_run_is_never_overwritten(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.pt").write_bytes(b"precious")
    out = train(TrainConfig(logs=str(tmp_path), name="run", max_steps=1, **FAST))
    assert out["run_dir"].endswith("run-1")
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").read_bytes() == b"precious"


def test_cli_defaults_and_flags():
    cfg = parse_args([])
    assert cfg == TrainConfig()
    cfg = parse_args(["--loss", "reg", "--reg-lambda", "0.5", "--batch-size", "64", "--compile", "--resume", "latest"])
    assert (cfg.loss, cfg.reg_lambda, cfg.batch_size, cfg.compile, cfg.resume) == ("reg", 0.5, 64, True, "latest")
    with pytest.raises(ConfigError, match="argument --loss: invalid choice: 'triplet'"):
        parse_args(["--loss", "triplet"])


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        train(TrainConfig(logs=str(tmp_path), train_data=str(tmp_path / "missing.csv")))
    with pytest.raises(ValueError, match="--batch-size 100000 exceeds"):
        train(TrainConfig(logs=str(tmp_path), batch_size=100000))
    with pytest.raises(ckpt_io.CheckpointError, match="nope.pt.* does not exist"):
        train(TrainConfig(logs=str(tmp_path), resume=str(tmp_path / "nope.pt"), **FAST))


def test_warmup_cosine_schedule():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


def test_warmup_longer_than_the_run_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"--warmup 1000 >= the run's \d+ steps"):
        train(TrainConfig(logs=str(tmp_path), max_steps=1, **(FAST | {"warmup": 1000})))


def test_param_groups_exclude_gains_biases_and_scale():
    from clipcore.models import build_model
    groups = training.param_groups(build_model("tiny-vit"), 0.1)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0
    assert any(p.ndim == 0 for p in groups[1]["params"])  # the logit scale


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_runs(tmp_path, precision):
    out = train(TrainConfig(logs=str(tmp_path), precision=precision, max_steps=2, **FAST))
    assert all(math.isfinite(v) for v in out["losses"])


# ----------------------------------------------------------------------------- method plug-ins
def test_method_plugin_flags_and_options(monkeypatch):
    """A method module's Config fields become --<method>-<field> flags; only given flags reach options."""
    import dataclasses
    import sys
    import types

    from clipcore import methods

    mod = types.ModuleType("fake_method", "A fake method.")

    @dataclasses.dataclass
    class Config:
        k: int = 3
        scale: float = 1.0
        mode: str = "uni"
        frozen: bool = True

    mod.Config, mod.build = Config, lambda cfg, mcfg, device: None
    monkeypatch.setitem(sys.modules, "fake_method", mod)
    monkeypatch.setitem(methods.METHODS, "fake", "fake_method")
    cfg = parse_args(["--method", "fake", "--fake-k", "7", "--no-fake-frozen", "--fake-mode", "cross"])
    assert cfg.method == "fake" and cfg.options == {"k": 7, "frozen": False, "mode": "cross"}
    assert methods.method_config(mod, cfg.options) == Config(k=7, scale=1.0, mode="cross", frozen=False)
    with pytest.raises(ConfigError, match="--fake-k: a flag of --method fake, not of --method clip"):
        parse_args(["--fake-k", "7"])
    with pytest.raises(ValueError, match="unknown option"):
        methods.method_config(mod, {"kk": 1})
    with pytest.raises(ValueError, match="unknown --method"):
        methods.get_method("nope")


@pytest.mark.parametrize("method,options,match", [
    ("arf", {"mode": "bogus"}, "--arf-mode 'bogus'"), ("arf", {"k": 0}, "k >= 1"),
    ("arf", {"shared_negatives": True, "flyp_pos": "plain"}, "needs --arf-flyp-pos multi"),
    ("grain", {"match": "iou"}, "--grain-match 'iou'"), ("grain", {"decoder_width": 30}, "dividing decoder_width"),
    ("reco", {"k": 0}, "k >= 1")])
def test_method_options_fail_before_the_checkpoint_is_read(tmp_path, method, options, match):
    """Every method's Config checks its options in __post_init__: a bad one is named although --init is missing."""
    with pytest.raises(ConfigError, match=match):
        train(TrainConfig(method=method, init=str(tmp_path / "missing.pt"), options=options, logs=str(tmp_path)))


def test_run_folder_names_the_method_default_data(tmp_path):
    """Without --train-data the run folder names the data the method trains on (its DEFAULT_DATA)."""
    name = lambda method: train_mod.run_dir(TrainConfig(method=method, logs=str(tmp_path))).name  # noqa: E731
    assert (name("grain"), name("reco"), name("clip")) == ("grain_partworld_s0", "reco_animal-mnist_s0",
                                                           "tiny_animal-mnist_multipos_s0")


def test_load_model_dispatches_through_the_registry(tmp_path, monkeypatch):
    """clipcore.methods.load_model builds a checkpoint's model with the ``load`` of the method named by
    ckpt["method"]: a new method is its module and its METHODS entry, clipcore.checkpoint is not edited."""
    import sys
    import types

    from clipcore import methods

    seen = {}

    def load(ckpt, device):
        seen["ckpt"] = ckpt
        return torch.nn.Linear(2, 2), "tok"

    mod = types.ModuleType("fake_method", "A fake method.")
    mod.load = load
    monkeypatch.setitem(sys.modules, "fake_method", mod)
    monkeypatch.setitem(methods.METHODS, "fake", "fake_method")
    ckpt_io.save_atomic({"model": {}, "method": "fake", "step": 1}, tmp_path / "fake.pt")
    model, tok, ckpt = methods.load_model(tmp_path / "fake.pt")
    assert isinstance(model, torch.nn.Linear) and not model.training and tok == "tok"
    assert ckpt is seen["ckpt"] and ckpt["method"] == "fake"
    ckpt_io.save_atomic({"model": {}, "method": "gone", "step": 1}, tmp_path / "gone.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="gone.pt was written by --method 'gone'.*known: clip, "):
        methods.load_model(tmp_path / "gone.pt")


def test_init_continues_from_a_checkpoint(tmp_path):
    """--init starts the CLIP method from a checkpoint's weights (its model config wins over --model)."""
    first = train(TrainConfig(logs=str(tmp_path), name="a", max_steps=2, **FAST))
    ckpt = tmp_path / "a" / "checkpoints" / "latest.pt"
    state = ckpt_io.load(ckpt)
    assert state["method"] == "clip"
    second = train(TrainConfig(logs=str(tmp_path), name="b", max_steps=1, init=str(ckpt), model="small", **FAST))
    again = train(TrainConfig(logs=str(tmp_path), name="c", max_steps=1, init=str(ckpt), model="small", **FAST))
    assert second["losses"] == again["losses"] and first["steps"] == 2
    assert second["losses"][0] != first["losses"][0]  # trained weights, not a fresh model with the same seed
    assert ckpt_io.load(tmp_path / "b" / "checkpoints" / "latest.pt")["model_config"] == state["model_config"]
