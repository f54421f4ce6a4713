"""benchmarks/gpu_check.sh dry run without CUDA: every step runs its real command line (so a wrong flag shows up
here, not on a rented GPU), exits at once with its one-line "no CUDA device" message, and the script exits 0 with
one line per step and one JSON line per step in $OUT/results.jsonl. (~15-60 s: five Python start-ups.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "exact", "loss_64k", "loss_64k_tile32", "loss_1m"]


def test_gpu_check_dry_run_without_cuda(tmp_path):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [ln.split(":", 1)[0] for ln in lines[:-1]] == STEPS, proc.stdout
    assert lines[0].startswith("env: ok")
    for ln in lines[1:-1]:
        assert "no CUDA device is visible to torch" in ln and "exit 1" in ln, ln
    for step in STEPS:
        assert "Traceback" not in (tmp_path / f"{step}.log").read_text(), step
    records = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == STEPS and [r["exit"] for r in records] == [0, 1, 1, 1, 1]
