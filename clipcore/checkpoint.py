"""Checkpoints: written atomically (temporary file in the same folder, fsync, rename), so a crash while
saving never destroys the previous checkpoint; loaded back into a model and its tokenizer."""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipcore.models import CLIP, config_from_dict
from clipcore.tokenizer import WordTokenizer, build_tokenizer


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a process killed while saving; never loaded
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            pause_for_test(f"save:{obj.get('step')}")
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pause_for_test(point: str) -> None:
    """Fault injection for tests/test_kill.py: when ``CLIPCORE_TEST_PAUSE`` equals ``point`` ("save:<step>" inside
    the checkpoint write, "step:<step>" between a step's forward and its optimiser update), write the file named
    by ``CLIPCORE_TEST_MARKER`` and sleep, so the test can SIGKILL the process at exactly that point."""
    if os.environ.get("CLIPCORE_TEST_PAUSE") == point:
        Path(os.environ["CLIPCORE_TEST_MARKER"]).write_text(point)
        time.sleep(300)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; pass the path of a .pt file written by clipcore.train")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tokenizer_for(model_cfg, tokenizer_state: dict | None = None):
    """The tokenizer a model config asks for (a word tokenizer is restored from its saved vocabulary)."""
    if model_cfg.tokenizer == "word":
        if tokenizer_state is None:
            raise ValueError("a word-tokenizer model needs its vocabulary (tokenizer state) from the checkpoint")
        return WordTokenizer.from_state_dict(tokenizer_state)
    if model_cfg.tokenizer == "none":
        return None
    return build_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[CLIP, object, dict]:
    """Checkpoint -> (model in eval mode, tokenizer, the checkpoint dict). Every model it returns has
    ``encode_image`` / ``encode_text``; GRAIN and RECO checkpoints come back as their method's model (global
    image-query embedding; refined embeddings with the training memory), ARF's as the finetuned CLIP."""
    ckpt = load(path)
    if ckpt.get("method") == "grain":
        from clipcore.methods.grain import load_grain
        return load_grain(path, device, ckpt=ckpt)
    if ckpt.get("method") == "reco":
        from clipcore.methods.reco import load_reco
        return (*load_reco(path, device=device, ckpt=ckpt), ckpt)
    state = ckpt["model"]
    prefix = ckpt.get("model_prefix")   # methods that wrap the CLIP (e.g. ARF's "clip.") say where it sits
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "open_clip_model" in ckpt:       # trained with --model open_clip:NAME (clipcore.adapters)
        from clipcore.adapters import OpenCLIP
        model = OpenCLIP(ckpt["open_clip_model"])
        model.load_state_dict(state)
        return model.to(device).eval(), model.tokenizer, ckpt
    cfg = config_from_dict(ckpt["model_config"])
    model = CLIP(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer_for(cfg, ckpt.get("tokenizer")), ckpt
