"""Shared fixtures of the unit tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def one_thread():
    """Small matmuls run faster on one thread than on two contended ones (2-core CI): modules that do many
    opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def folder(tmp_path):
    """A 3-class image folder: 16 small images per class, each class a distinct colour + noise."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["red_fox", "green_frog", "blue_jay"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(16):
            arr = np.clip(rng.normal(60, 30, (20, 20, 3)), 0, 255)
            arr[..., k] += 150
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def loss_hook(monkeypatch):
    """``loss_hook(call, hook)``: the loss plain CLIP training builds (``clipcore.clip_task.make_loss``) returns
    ``hook(loss)`` on its ``call``-th call (1-based), the loss itself otherwise: a fault planted at a chosen step."""
    from clipcore import clip_task
    real = clip_task.make_loss

    def install(call: int, hook) -> None:
        def patched(*a, **k):
            fn, calls = real(*a, **k), []

            def f(*args, **kw):
                calls.append(1)
                out = fn(*args, **kw)
                return hook(out) if len(calls) == call else out
            return f
        monkeypatch.setattr(clip_task, "make_loss", patched)
    return install
