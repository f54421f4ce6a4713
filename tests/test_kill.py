"""Kill-anywhere resume: SIGKILL during a step and during a checkpoint write, then --resume latest.

The run is a real `python -m clipcore.train` process paused at an exact point by the fault-injection hook
(clipcore.checkpoint.pause_for_test) and killed with SIGKILL there. No corrupted checkpoint is ever loaded, and
the losses after resume equal those of an uninterrupted run (CPU, same seed, same thread count).
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from clipcore import checkpoint as ckpt_io
from clipcore.train import TrainConfig, train

FLAGS = dict(batch_size=32, warmup=2, log_every=1, epochs=1, max_steps=6, save_every=2)


def _cli(cfg: dict) -> list[str]:
    return [a for k, v in cfg.items() for a in ("--" + k.replace("_", "-"), str(v))]


def _run_and_kill(tmp_path, name: str, point: str) -> None:
    """Start the training CLI, wait until it reaches ``point``, SIGKILL it there."""
    marker = tmp_path / f"{name}.paused"
    env = {**os.environ, "CLIPCORE_TEST_PAUSE": point, "CLIPCORE_TEST_MARKER": str(marker),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipcore.train", "--logs", str(tmp_path), "--name", name,
                             *_cli(FLAGS)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {point}: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"training never reached {point}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(TrainConfig(logs=str(tmp_path_factory.mktemp("full")), name="full", **FLAGS))["losses"]


@pytest.mark.parametrize("point, last_good", [("step:4", 2), ("save:4", 2)])
def test_sigkill_then_resume_latest_matches_uninterrupted(tmp_path, uninterrupted, point, last_good):
    _run_and_kill(tmp_path, "run", point)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    partial = list(ckpt_dir.glob("latest.pt.*.tmp"))
    assert (len(partial) == 1) == point.startswith("save")   # the killed write left only a temporary file
    assert ckpt_io.load(ckpt_dir / "latest.pt")["step"] == last_good  # latest.pt is the last complete one
    rest = train(TrainConfig(logs=str(tmp_path), name="run", resume="latest", **FLAGS))
    assert len(uninterrupted) == 6 and rest["losses"] == uninterrupted[last_good:]   # exact on CPU
    assert not list(ckpt_dir.glob("*.tmp"))                  # the next save cleared the dead write's leftovers
    assert ckpt_io.load(ckpt_dir / "latest.pt")["step"] == 6
