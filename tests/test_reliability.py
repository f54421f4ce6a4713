"""Fault cases of checkpoints, resume and the run folder: unsafe pickles through every entry point, bit flips,
truncation, the predecessor fallback, resume into its own folder, changed settings, the lock, torn and
duplicated metrics, signals, data errors, flag validation, file modes and a full disk."""
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from clipcore import checkpoint as ckpt_io
from clipcore import clip_task as clip_task_mod
from clipcore import train as train_mod
from clipcore.data import DataError
from clipcore.errors import ConfigError, UserError
from clipcore.runlog import Metrics, claim, plot_losses, read_rows
from clipcore.train import TrainConfig, train

FAST = dict(batch_size=32, warmup=2, log_every=1, epochs=1)


class Marker:
    """Unpickling this creates the file ``path`` (as a malicious checkpoint would run anything)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def evil(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    torch.save({"model": {"w": torch.zeros(2)}, "state_dict": {"w": torch.zeros(2)}, "x": Marker(marker)}, path)
    return path, marker


def test_unsafe_pickle_is_loaded_by_plain_torch_load(evil):
    """Positive control: the fixture does run code under weights_only=False."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def _one_line_exit(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("entry", ["eval", "resume", "init-reco", "init-arf", "pretrained"])
def test_unsafe_pickle_refused_at_every_entry_point(evil, tmp_path, capsys, entry):
    from clipcore.eval import main as eval_main
    path, marker = evil
    logs = ["--logs", str(tmp_path / "logs"), "--batch-size", "32"]
    argv = {"eval": ["--checkpoint", str(path)], "resume": [*logs, "--resume", str(path)],
            "init-reco": [*logs, "--method", "reco", "--init", str(path)],
            "init-arf": [*logs, "--method", "arf", "--init", str(path)], "pretrained": [*logs, "--pretrained", str(path)]}
    err = _one_line_exit(capsys, eval_main if entry == "eval" else train_mod.main, argv[entry])
    assert "refusing to load" in err and str(path) in err and "(io.open)" in err
    assert not marker.exists()


# ----------------------------------------------------------------------------- integrity and fallback
@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A 3-step run checkpointing every step: latest.pt (step 3) and latest.prev.pt (step 2)."""
    logs = tmp_path_factory.mktemp("logs")
    out = train(TrainConfig(logs=str(logs), name="r", max_steps=3, save_every=1, **FAST))
    return logs, out["losses"]


@pytest.fixture
def run(run3, tmp_path):
    """A private copy of run3's folder."""
    shutil.copytree(run3[0] / "r", tmp_path / "r")
    return tmp_path, tmp_path / "r" / "checkpoints" / "latest.pt"


def _flip_bit(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0x10
    path.write_bytes(bytes(data))


def test_save_writes_sidecar_and_predecessor(run):
    _, latest = run
    prev = ckpt_io.previous_path(latest)
    assert prev.name == "latest.prev.pt"
    assert ckpt_io.load(latest)["step"] == 3 and ckpt_io.load(prev)["step"] == 2
    for p in (latest, prev):
        digest, name = ckpt_io.sidecar(p).read_text().split()
        assert name == p.name and digest == ckpt_io._sha256(p)   # `sha256sum -c` format


def test_bit_flip_is_detected_and_resume_falls_back_with_deduplicated_metrics(run, run3):
    logs, latest = run
    _flip_bit(latest)
    with pytest.raises(ckpt_io.CheckpointError, match=f"checkpoint {latest} is corrupt: its SHA-256"):
        ckpt_io.load(latest)
    with pytest.warns(UserWarning, match="using its predecessor .*latest.prev.pt \\(step 2\\)"):
        rest = train(TrainConfig(logs=str(logs), name="r", resume="latest", max_steps=4, save_every=1, **FAST))
    assert rest["losses"][0] == run3[1][2]            # step 3 again, exactly as the first time
    steps = [r["step"] for r in read_rows(logs / "r" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]                      # the rows of step 3 logged before are not duplicated
    assert ckpt_io.load(latest)["step"] == 4


@pytest.mark.parametrize("crash_before", range(5))
def test_a_crash_anywhere_in_a_rotating_save_leaves_a_good_checkpoint(tmp_path, monkeypatch, crash_before):
    """Die before the k-th rename of a save (k = 0..3; 4: no crash): the next load, with fallback, gets the old or
    the new checkpoint, intact -- never nothing, never a mix."""
    path = tmp_path / "ck.pt"
    for step in (1, 2):
        ckpt_io.save_atomic({"step": step, "w": torch.full((3,), float(step))}, path, keep_previous=True)
    real, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == crash_before:
            raise SystemExit("killed")
        calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit) if crash_before < 4 else contextlib.nullcontext():
        ckpt_io.save_atomic({"step": 3, "w": torch.full((3,), 3.0)}, path, keep_previous=True)
    monkeypatch.undo()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ck = ckpt_io.load(path, fallback=True)
    assert ck["step"] in (2, 3) and torch.equal(ck["w"], torch.full((3,), float(ck["step"])))
    assert ck["step"] == 3 or crash_before < 3       # once the new file is in place it is the one loaded


def test_truncated_checkpoint_names_the_file(run):
    _, latest = run
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(ckpt_io.CheckpointError, match="is corrupt: its SHA-256"):
        ckpt_io.load(latest)
    ckpt_io.sidecar(latest).unlink()                  # a copy without its sidecar: the reader's error, with the name
    with pytest.raises(ckpt_io.CheckpointError, match=f"checkpoint {latest} is unreadable \\(truncated or corrupt\\?\\)"):
        ckpt_io.load(latest)
    with pytest.warns(UserWarning, match="failed finding central directory; using its predecessor"):
        assert ckpt_io.load(latest, fallback=True)["loaded_from"].endswith("latest.prev.pt")


def test_nonfinite_tensors_are_neither_saved_nor_loaded(tmp_path):
    path = tmp_path / "ck.pt"
    ckpt_io.save_atomic({"step": 1, "model": {"w": torch.ones(4)}}, path)
    bad = {"step": 2, "model": {"w": torch.tensor([1.0, float("nan"), float("inf"), 0.0])}}
    with pytest.raises(ckpt_io.CheckpointError, match="not writing .*model.w: 2 of 4 values are NaN/inf at step 2"):
        ckpt_io.save_atomic(bad, path)
    assert ckpt_io.load(path)["step"] == 1
    torch.save(bad, tmp_path / "plain.pt")            # written by something else, no sidecar
    with pytest.raises(ckpt_io.CheckpointError, match="plain.pt is corrupt: model.w: 2 of 4"):
        ckpt_io.load(tmp_path / "plain.pt")


def test_legacy_numpy_rng_state_still_loads(tmp_path):
    state = ckpt_io.rng_state()
    old = dict(state, numpy=np.random.get_state())    # clipcore < 0.2 stored numpy's array
    torch.save({"rng": old}, tmp_path / "old.pt")
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "old.pt")["rng"])
    a = np.random.rand(3)
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "old.pt")["rng"])
    assert np.array_equal(a, np.random.rand(3))


def test_checkpoint_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt_io.save_atomic({"step": 1}, tmp_path / "ck.pt", keep_previous=True)
        ckpt_io.save_atomic({"step": 2}, tmp_path / "ck.pt", keep_previous=True)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        n: 0o644 for n in ("ck.pt", "ck.pt.sha256", "ck.prev.pt", "ck.prev.pt.sha256")}


def test_full_disk_names_file_and_disk_and_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    ckpt_io.save_atomic({"step": 1, "w": torch.ones(10)}, path, keep_previous=True)

    class FullDisk(io.RawIOBase):
        def __init__(self, fd):
            self.n = 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 300:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(b)

    monkeypatch.setattr(ckpt_io, "_open_sink", FullDisk)
    with pytest.raises(ckpt_io.CheckpointError, match=f"no space left on the disk of {tmp_path} .* while writing "
                                                      f"{path}; {path} is unchanged"):
        ckpt_io.save_atomic({"step": 2, "w": torch.ones(1000)}, path, keep_previous=True)
    monkeypatch.undo()
    assert ckpt_io.load(path)["step"] == 1 and not list(tmp_path.glob("*.tmp"))


def test_sweep_removes_only_dead_processes_temp_files(tmp_path):
    import socket
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        names = [f"ck.pt.{dead.pid}@{host}.tmp", f"ck.pt.{live.pid}@{host}.tmp", f"ck.pt.{dead.pid}@otherhost.tmp"]
        for n in names:
            (tmp_path / n).write_bytes(b"partial")
        ckpt_io.save_atomic({"step": 1}, tmp_path / "ck.pt")
        assert sorted(p.name for p in tmp_path.glob("*.tmp")) == sorted(names[1:])
    finally:
        live.kill(); live.wait()


# ----------------------------------------------------------------------------- resume
def test_resume_path_continues_in_its_own_folder(run, monkeypatch):
    logs, latest = run
    other = train(TrainConfig(logs=str(logs), max_steps=1, **FAST))       # the default-named run "A"
    a_ckpt = os.path.join(other["run_dir"], "checkpoints", "latest.pt")
    before = open(a_ckpt, "rb").read(), open(os.path.join(other["run_dir"], "metrics.jsonl")).read()
    out = train(TrainConfig(logs=str(logs), resume=str(latest), max_steps=4, **FAST))
    assert out["run_dir"] == str(latest.parent.parent) and out["steps"] == 4
    assert (open(a_ckpt, "rb").read(), open(os.path.join(other["run_dir"], "metrics.jsonl")).read()) == before


def test_resume_with_other_settings_is_refused_unless_overridden(run):
    logs, latest = run
    cfg = dict(FAST, batch_size=16, lr=1e-3)
    with pytest.raises(ConfigError, match=r"that run used other settings: --batch-size 32 \(now 16\); --lr 0.002 "
                                          r"\(now 0.001\)\. .*--resume-override"):
        train(TrainConfig(logs=str(logs), resume=str(latest), max_steps=4, **cfg))
    with pytest.warns(UserWarning, match="--resume-override: continuing"):
        out = train(TrainConfig(logs=str(logs), resume=str(latest), max_steps=4, resume_override=True, **cfg))
    assert out["steps"] == 4
    assert ckpt_io.load(latest)["optimizer"]["param_groups"][0]["initial_lr"] == 1e-3
    with pytest.raises(ConfigError, match=r"--model 'tiny' \(now 'tiny-vit'\)"):
        train(TrainConfig(logs=str(logs), resume=str(latest), max_steps=5, model="tiny-vit", **FAST))
    with pytest.raises(ConfigError, match=r"its weights do not fit this run's model \(missing keys \d+ \(.*--model"):
        train(TrainConfig(logs=str(logs), resume=str(latest), max_steps=5, model="tiny-vit", resume_override=True, **FAST))


def test_locked_run_folder_is_refused(run):
    logs, latest = run
    folder = latest.parent.parent
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from clipcore.runlog import claim\nwith claim(Path(sys.argv[1])):\n print('held', flush=True);"
                               " time.sleep(60)", str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"run folder {folder} is in use by pid {holder.pid} on "):
            train(TrainConfig(logs=str(logs), name="r", resume="latest", max_steps=4, **FAST))
    finally:
        holder.kill(); holder.wait()
    with claim(folder):          # released when its holder died
        pass


def test_torn_metrics_line_is_tolerated_and_dropped(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")      # a finished run's close: no exception
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 4
    Metrics(tmp_path, resume_step=2).close()                            # resumed at step 2: 3, 4 and the torn line go
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows[:2])


# ----------------------------------------------------------------------------- stopping
def test_sigusr1_checkpoints_and_stops_at_the_step_boundary(tmp_path, loss_hook):
    def signal_then(loss):
        os.kill(os.getpid(), signal.SIGUSR1)
        return loss
    loss_hook(2, signal_then)
    before = signal.getsignal(signal.SIGUSR1)
    out = train(TrainConfig(logs=str(tmp_path), name="u", max_steps=6, **FAST))
    assert out["stopped_by"] == signal.SIGUSR1 and out["steps"] == 2
    assert ckpt_io.load(tmp_path / "u" / "checkpoints" / "latest.pt")["step"] == 2
    assert signal.getsignal(signal.SIGUSR1) == before     # the handler is gone after train()


def test_sigterm_to_the_process_group_saves_and_exits_cleanly(tmp_path):
    """As a cluster pre-empts a job: SIGTERM to the whole process group, DataLoader workers included (which would
    die of it and take the run down mid-step)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipcore.train", "--logs", str(tmp_path), "--name", "t",
                             "--batch-size", "32", "--warmup", "2", "--log-every", "1", "--epochs", "1",
                             "--max-steps", "200", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics, deadline = tmp_path / "t" / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    step = ckpt_io.load(tmp_path / "t" / "checkpoints" / "latest.pt")["step"]
    assert 2 <= step < 200 and f"stopped by SIGTERM at step {step}" in out
    assert [r["step"] for r in read_rows(metrics)] == list(range(1, step + 1))   # no step lost


def test_data_error_mid_epoch_saves_progress(tmp_path, monkeypatch):
    real = clip_task_mod.make_loader

    def failing(*a, **k):
        for i, batch in enumerate(real(*a, **k)):
            if i == 3:
                raise DataError("bad.png (row 97): cannot identify image file; fix it or pass --skip-bad")
            yield batch

    monkeypatch.setattr(clip_task_mod, "make_loader", failing)
    with pytest.raises(DataError, match=r"bad.png .* \[stopped at step 3; progress is saved in .*latest.pt"):
        train(TrainConfig(logs=str(tmp_path), name="d", max_steps=6, **FAST))
    ckpt = ckpt_io.load(tmp_path / "d" / "checkpoints" / "latest.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (3, 0, 3)


def _png_with_broken_pixels() -> bytes:
    """A PNG whose chunks all have valid CRCs (so `images.check_image` passes it when the data set is built) but
    whose IDAT is not a zlib stream: it fails only when decoded, mid-epoch."""
    import io
    import struct
    import zlib
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(buf, format="PNG")
    b, out, i = buf.getvalue(), buf.getvalue()[:8], 8
    while i < len(b):
        n, kind = struct.unpack(">I", b[i:i + 4])[0], b[i + 4:i + 8]
        data = b"\x00" * n if kind == b"IDAT" else b[i + 8:i + 8 + n]
        out += struct.pack(">I", n) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        i += 12 + n
    return out


def test_data_error_in_a_loader_worker_is_one_line_saves_progress_and_exits(tmp_path):
    """The CLI with --workers 2 on a folder holding an unreadable image: one line on stderr (not the worker's
    traceback), exit 2, the steps done checkpointed, and no hang or torch error while the workers shut down."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, name in enumerate(["fox", "frog", "jay"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "data" / "jay" / "5.png").write_bytes(_png_with_broken_pixels())   # passes the build-time header check
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipcore.train", "--logs", str(tmp_path), "--name", "w",
                           "--train-data", str(tmp_path / "data"), "--workers", "2", "--batch-size", "4",
                           "--epochs", "1", "--warmup", "1", "--log-every", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and "jay/5.png" in err and "Traceback" not in err, err
    step = int(err.split("[stopped at step ")[1].split("]")[0].split(";")[0])
    if step:
        assert ckpt_io.load(tmp_path / "w" / "checkpoints" / "latest.pt")["step"] == step


# ----------------------------------------------------------------------------- flags and the CLIs
@pytest.mark.parametrize("flag, value, least", [("--batch-size", "0", 1), ("--log-every", "0", 1), ("--epochs", "0", 1),
                                                ("--workers", "-1", 0), ("--lr", "-1", 0.0)])
def test_flags_are_validated(capsys, flag, value, least):
    err = _one_line_exit(capsys, train_mod.main, [flag, value])
    assert err == f"clipcore.train: error: {flag} {value if flag != '--lr' else -1.0}: must be at least {least}"


def test_train_validates_configs_built_in_code(tmp_path):
    with pytest.raises(ConfigError, match="--log-every 0: must be at least 1"):
        train(TrainConfig(logs=str(tmp_path), log_every=0))
    assert not any(tmp_path.iterdir())     # nothing created


def test_cli_errors_are_one_line(tmp_path, capsys):
    from clipcore.eval import main as eval_main
    err = _one_line_exit(capsys, eval_main, ["--checkpoint", str(tmp_path / "nope.pt")])
    assert err.startswith("clipcore.eval: error: checkpoint") and "nope.pt" in err
    err = _one_line_exit(capsys, train_mod.main, ["--logs", str(tmp_path), "--resume", "latest"])
    assert "--resume latest: there is no run folder" in err


def test_processes_and_workers_count_only_for_shards():
    import dataclasses
    ck = {"train_config": dataclasses.asdict(TrainConfig(workers=2, epochs=8)), "world_size": 2}
    cfg = TrainConfig(workers=4, epochs=9)
    assert ckpt_io.config_differences(ck, cfg, 1) == ["--epochs 8 (now 9)"]       # file data: global batches
    assert ckpt_io.config_differences(ck, cfg, 1, streamed=True) == [
        "--epochs 8 (now 9)", "--workers 2 (now 4)", "2 processes (now 1)"]
