"""Checkpoints: safe to load, verified, written atomically, with one predecessor kept.

- **Safe.** A checkpoint is ``torch.save`` of a dict of tensors and plain Python values (the RNG states too) and
  is read with ``torch.load(weights_only=True)``: a file whose pickle would call anything else (run code) is
  refused with a :class:`CheckpointError` naming it. (Earlier checkpoints held the numpy RNG state as an array;
  numpy's array reconstructor, which only builds data, is allowed for them.)
- **Atomic.** :func:`save_atomic` writes ``<file>.<pid>@<host>.tmp`` in the same folder (with the umask's mode),
  fsyncs it, and renames it over ``<file>``; a crash while saving never destroys the previous checkpoint.
- **Verified.** The SHA-256 of the bytes written goes, after the fsync, into the sidecar ``<file>.sha256``
  (``sha256sum`` format: ``sha256sum -c latest.pt.sha256`` checks it by hand). :func:`load` checks it when the
  sidecar exists (a file copied without one loads unverified), and that every floating tensor is finite;
  :func:`save_atomic` refuses to write non-finite tensors.
- **Self-describing.** Besides the weights, a checkpoint records how its images were preprocessed
  (``"preprocess"``: :class:`clipcore.images.PreprocessCfg` as a dict) and its tokenizer (``"tokenizer"``:
  ``{"kind": "bpe"|"word"|"open_clip", "context_length", ...}``, a word tokenizer's vocabulary included);
  :func:`preprocess_of` and :func:`clipcore.methods.load_model` read them back (older files: :func:`preprocess_of` warns once).
- **A predecessor.** With ``keep_previous`` the replaced file becomes ``<stem>.prev<suffix>`` (its sidecar
  too), in an order that leaves at every instant one of the two verifiable (or the new one complete but, until its
  sidecar is written, unverified); ``load(..., fallback=True)`` uses the predecessor, with a warning, when the
  newest is missing or fails verification.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from clipcore.data import default_preprocess
from clipcore.errors import ConfigError, UserError
from clipcore.images import PreprocessCfg
from clipcore.models import config_from_dict
from clipcore.tokenizer import WordTokenizer, build_tokenizer

# what earlier checkpoints need beyond weights_only's defaults: numpy's RNG state as an array (data only)
_LEGACY_NUMPY = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
_TMP = re.compile(r"^(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[^@/]+)\.tmp$")


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not exist, cannot be read, fails verification or cannot be written; names the file."""


# ----------------------------------------------------------------------------- writing
def previous_path(path: str | os.PathLike) -> Path:
    """Where ``save_atomic(..., keep_previous=True)`` keeps the file it replaces: ``latest.pt`` -> ``latest.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{path}.sha256")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}@{socket.gethostname()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path) -> None:
    """Remove temporary files left by processes of this host that died while saving; a live process's (another
    run writing here, or this one) and other hosts' are left alone."""
    host = socket.gethostname()
    for p in folder.glob("*.tmp"):
        m = _TMP.match(p.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)


def _open_sink(fd: int):
    """The buffered file the checkpoint bytes go to (tests replace it to simulate a full disk)."""
    return open(fd, "wb", closefd=False)


class _HashingWriter:
    """A write-only file for ``torch.save`` that hashes what it writes and remembers the first OSError (torch's
    zip writer turns it into "unexpected pos ..." without saying why)."""

    def __init__(self, fd: int):
        self.sink, self.sha, self.error = _open_sink(fd), hashlib.sha256(), None

    def write(self, b) -> int:
        try:
            n = self.sink.write(b)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(b)
        return n

    def flush(self) -> None:
        try:
            self.sink.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _write_tmp(path: Path, write, what: str) -> tuple[Path, str]:
    """Write the per-process temporary file of ``path``: ``write(file)`` fills it, then fsync. Returns (temporary
    file, SHA-256 of the bytes written). An OSError becomes a CheckpointError naming ``path`` (and, for a full
    disk, the disk); the temporary file is removed then and ``path`` is untouched."""
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)      # this process's own leftover, or a dead one's with the same pid
    w = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666 & ~umask, like any other file
        try:
            w = _HashingWriter(fd)
            write(w)
            w.flush()
            pause_for_test(what)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        error = (w.error if w is not None else None) or (e if isinstance(e, OSError) else None)
        if error is None:
            raise
        kept = f"{path} is unchanged" if path.exists() else "nothing was written"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(f"no space left on the disk of {path.parent} ({free / 2**20:.1f} MiB free) while "
                                  f"writing {path}; {kept}. Free space (or use another --logs) and continue with "
                                  "--resume") from e
        raise CheckpointError(f"cannot write {path}: {error}; {kept}") from e
    return tmp, w.sha.hexdigest()


def _write_text(path: Path, text: str) -> None:
    tmp, _ = _write_tmp(path, lambda f: f.write(text.encode()), "text")
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj: dict, path: str | os.PathLike, *, keep_previous: bool = False) -> None:
    """torch.save ``obj`` (tensors and plain values) to ``path`` atomically, with its SHA-256 sidecar (module
    docstring). ``keep_previous``: the file it replaces becomes :func:`previous_path` (with its sidecar).
    Raises :class:`CheckpointError`, leaving ``path`` as it was, for a non-finite tensor or a failed write."""
    path = Path(path)
    bad = nonfinite(obj)
    if bad:
        raise CheckpointError(f"not writing {path}: {bad} at step {obj.get('step')}; the previous checkpoint stays")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e}") from e
    sweep_stale(path.parent)
    tmp, digest = _write_tmp(path, lambda f: torch.save(obj, f), f"save:{obj.get('step')}")
    try:
        # Every instant leaves a loadable file: verified, or (briefly, without its sidecar) unverified.
        if keep_previous and path.exists():
            prev, old = previous_path(path), sidecar(path)
            if old.is_file():        # prev's sidecar first: prev fails verification for a moment, path still passes
                _write_text(sidecar(prev), f"{old.read_text().split()[0]}  {prev.name}\n")
            else:
                sidecar(prev).unlink(missing_ok=True)
            os.replace(path, prev)   # path missing for a moment; prev passes
        sidecar(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_text(sidecar(path), f"{digest}  {path.name}\n")
    _fsync_dir(path.parent)


def pause_for_test(point: str) -> None:
    """Fault injection for tests/test_kill.py: when ``CLIPCORE_TEST_PAUSE`` equals ``point`` ("save:<step>" inside
    the checkpoint write, "step:<step>" between a step's forward and its optimiser update), write the file named
    by ``CLIPCORE_TEST_MARKER`` and sleep, so the test can SIGKILL the process at exactly that point."""
    if os.environ.get("CLIPCORE_TEST_PAUSE") == point:
        Path(os.environ["CLIPCORE_TEST_MARKER"]).write_text(point)
        time.sleep(300)


# ----------------------------------------------------------------------------- reading
def _tensors(obj, where: str = ""):
    """(key path, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield where or "tensor", obj
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        yield from _tensors(v, f"{where}.{k}" if where else str(k))


def nonfinite(obj) -> str | None:
    """The first floating tensor in ``obj`` (nested dicts, lists, tuples) holding NaN or inf, described with its
    key path ("optimizer.state.3.exp_avg: 1024 of 4096 values are NaN/inf"); None when all are finite. One
    host sync per device, not per tensor."""
    floats = [(k, t) for k, t in _tensors(obj) if t.is_floating_point() or t.is_complex()]
    bad: set[int] = set()
    for device in {t.device for _, t in floats}:
        idx = [i for i, (_, t) in enumerate(floats) if t.device == device]
        ok = torch.stack([torch.isfinite(floats[i][1]).all() for i in idx]).tolist()
        bad.update(i for i, good in zip(idx, ok) if not good)
    if not bad:
        return None
    key, t = floats[min(bad)]
    return f"{key}: {int((~torch.isfinite(t)).sum())} of {t.numel()} values are NaN/inf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def safe_load(path: str | os.PathLike, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` with errors that name the file: a pickle that would call anything
    but tensor and plain-value constructors is refused (:class:`CheckpointError`), as is an unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; pass the path of a .pt file written by "
                              "clipcore.train")
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "Weights only load failed" in msg:
            found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", msg)
            raise CheckpointError(
                f"refusing to load {what} {path}: it holds a Python object "
                f"({(found[1] or found[2]) if found else 'not a tensor or plain value'}) whose unpickling could run code; clipcore "
                "loads only tensors and plain values (torch.load weights_only=True). If you trust the file, "
                "re-save its tensors (e.g. its state_dict) with torch.save") from e
        first = msg.strip().splitlines()[0].split(". ")[0] if msg.strip() else type(e).__name__
        raise CheckpointError(f"{what} {path} is unreadable (truncated or corrupt?): {first}") from e


def _load_verified(path: Path) -> dict:
    if sidecar(path).is_file() and path.is_file():
        want = sidecar(path).read_text().split()[:1]
        got = _sha256(path)
        if want != [got]:
            raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 {got[:16]}... differs from the one "
                                  f"recorded when it was written ({(want or ['none'])[0][:16]}..., {sidecar(path).name})")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a clipcore checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    bad = nonfinite(ckpt)
    if bad:
        raise CheckpointError(f"checkpoint {path} is corrupt: {bad}")
    return ckpt


def load(path: str | os.PathLike, *, fallback: bool = False) -> dict:
    """Read and verify a checkpoint (module docstring) -> its dict; :class:`CheckpointError` naming the file if it
    is missing, refused, unreadable, fails its checksum or holds NaN/inf. ``fallback``: then use its predecessor
    (:func:`previous_path`) when that verifies, with a warning; the dict's ``"loaded_from"`` says which file."""
    path = Path(path)
    try:
        ckpt, used = _load_verified(path), path
    except CheckpointError as e:
        prev = previous_path(path)
        if not fallback or not prev.is_file():
            raise
        try:
            ckpt, used = _load_verified(prev), prev
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; its predecessor failed too: {e2}") from e
        warnings.warn(f"{e}; using its predecessor {prev} (step {ckpt.get('step')}) instead", stacklevel=2)
    ckpt["loaded_from"] = str(used)
    return ckpt


def rng_state() -> dict:
    """Every RNG the loop draws from, as tensors and plain values (so that weights_only loads it)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()   # ("MT19937", uint32 (624,), int, int, float)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# train_config keys that must match for an exact resume. File data are batched by global batch whatever the
# number of processes and workers; webdataset shards are dealt to (rank, worker) slots, so there those count too.
RESUME_KEYS = ("method", "options", "model", "train_data", "dataset_type", "loss", "reg_lambda", "reg_pairs",
               "batch_size", "accum_freq", "epochs", "lr", "wd", "warmup", "seed")
STREAM_KEYS = ("workers",)


def config_differences(ckpt: dict, cfg, world_size: int, streamed: bool = False) -> list[str]:
    """What differs between the run that wrote ``ckpt`` and the TrainConfig ``cfg`` of a resume, as
    "--batch-size 32 (now 64)" items, over :data:`RESUME_KEYS` (``streamed``, webdataset shards: also
    :data:`STREAM_KEYS` and the number of processes)."""
    stored = ckpt.get("train_config") or {}
    keys = RESUME_KEYS + (STREAM_KEYS if streamed else ())
    out = [f"--{k.replace('_', '-')} {stored[k]!r} (now {getattr(cfg, k)!r})"
           for k in keys if k in stored and stored[k] != getattr(cfg, k)]
    if streamed and ckpt.get("world_size", world_size) != world_size:
        out.append(f"{ckpt['world_size']} processes (now {world_size})")
    return out


def state_dict_mismatch(own: dict, sd: dict) -> str | None:
    """How state dict ``sd`` fails to fit a model whose state dict is ``own`` ("missing keys 1 (logit_scale);
    unexpected keys 0 (); shape mismatches 0 ()"), or None when it fits exactly."""
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if not (missing or unexpected or wrong):
        return None

    def show(keys: list[str]) -> str:
        return f"{len(keys)} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
    return f"missing keys {show(missing)}; unexpected keys {show(unexpected)}; shape mismatches {show(wrong)}"


def restore(state: dict, cfg, world: int, model, opt, sched, scaler, *, streamed: bool = False) -> None:
    """--resume: load ``state`` (a checkpoint of clipcore.train) into the model, optimiser, scheduler, scaler and
    RNGs, after checking that it was written with the same settings (:func:`config_differences`, ``cfg`` a TrainConfig):
    a ConfigError lists the differences, unless ``cfg.resume_override``, which takes the new ones (lr and wd
    included) with a warning."""
    src = state["loaded_from"]
    diffs = config_differences(state, cfg, world, streamed)
    if diffs and not cfg.resume_override:
        raise ConfigError(f"--resume {src}: that run used other settings: {'; '.join(diffs)}. Pass the same flags, "
                          "or add --resume-override to continue with the new ones (the schedule or sample order then "
                          "differs from an uninterrupted run)")
    mismatch = state_dict_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise ConfigError(f"--resume {src}: its weights do not fit this run's model ({mismatch}); resume with that "
                          "run's --model")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"]); sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"]); set_rng_state(state["rng"])
    if diffs:
        warnings.warn(f"--resume-override: continuing {src} with {'; '.join(diffs)}", stacklevel=3)
        sched.base_lrs = [cfg.lr] * len(opt.param_groups)
        for g, f in zip(opt.param_groups, sched.lr_lambdas):
            g["initial_lr"], g["lr"] = cfg.lr, cfg.lr * f(sched.last_epoch)
        opt.param_groups[0]["weight_decay"] = cfg.wd     # param_groups(): the decayed matrices come first


def tokenizer_for(model_cfg, tokenizer_state: dict | None = None):
    """The tokenizer a model config asks for (a word tokenizer is restored from its saved vocabulary)."""
    if model_cfg.tokenizer == "word":
        if tokenizer_state is None:
            raise ValueError("a word-tokenizer model needs its vocabulary (tokenizer state) from the checkpoint")
        return WordTokenizer.from_state_dict(tokenizer_state)
    if model_cfg.tokenizer == "none":
        return None
    return build_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)


_WARNED: set[str] = set()


def preprocess_of(ckpt: dict, model=None) -> PreprocessCfg:
    """The :class:`~clipcore.images.PreprocessCfg` the checkpoint's model was trained with (``ckpt["preprocess"]``).

    A checkpoint written before clipcore recorded it gets today's rule for its training data -- the embedded
    animal-mnist: 0.5/0.5 bilinear; GRAIN: CLIP's mean/std, whole image; files: CLIP's mean/std (0.5 grey),
    bicubic, centre crop -- at the model's input size (``model.input_size()``, else its model_config), with
    one warning per file naming that assumption."""
    if ckpt.get("preprocess"):
        return PreprocessCfg.from_dict(ckpt["preprocess"])
    if model is not None and hasattr(model, "input_size"):
        size, channels = model.input_size()
    else:
        vis = (ckpt.get("model_config") or ckpt.get("base_model_config") or {}).get("vision", {})
        size, channels = vis.get("image_size", 32), vis.get("in_channels", 3)
    tc = ckpt.get("train_config") or {}
    if ckpt.get("method") == "grain":
        pp = PreprocessCfg(size, channels, interpolation="bilinear" if tc.get("train_data") is None else "bicubic",
                           resize_mode="whole")
    elif tc.get("train_data") is None:
        pp = default_preprocess(size, channels)
    else:
        pp = PreprocessCfg.for_files(size, channels)
    where = str(ckpt.get("loaded_from", "a checkpoint"))
    if where not in _WARNED:
        _WARNED.add(where)
        warnings.warn(f"{where} records no image preprocessing (written by an older clipcore); assuming {pp}, the "
                      "rule for its training data then. If it was trained otherwise, record how: ckpt['preprocess'] = "
                      "clipcore.PreprocessCfg(...).to_dict(), and save it again", stacklevel=2)
    return pp


def tokenizer_record(model, tokenizer) -> dict | None:
    """What a checkpoint stores about ``tokenizer``: its ``state_dict()`` (bpe: kind + context length; word: the
    vocabulary too) or, for an open_clip model's tokenizer, {"kind": "open_clip", "name", "context_length"}."""
    if hasattr(tokenizer, "state_dict"):
        return tokenizer.state_dict()
    name = getattr(model, "name", None)
    if name is None or tokenizer is None:
        return None
    return {"kind": "open_clip", "name": name, "context_length": int(getattr(tokenizer, "context_length", 77))}


def tokenizer_of(ckpt: dict):
    """The tokenizer a checkpoint records (:func:`tokenizer_record`; a method's base's for RECO), rebuilt without
    building the model; older checkpoints without the record: the one their model config names."""
    meta = ckpt.get("base") or ckpt
    rec = ckpt.get("tokenizer") or meta.get("tokenizer")
    if (rec and rec.get("kind") == "open_clip") or meta.get("open_clip_model"):
        import open_clip
        return open_clip.get_tokenizer(rec["name"] if rec and rec.get("name") else meta["open_clip_model"])
    cfg = meta.get("model_config") or ckpt.get("base_model_config")
    if cfg is None:
        raise CheckpointError(f"{ckpt.get('loaded_from', 'the checkpoint')} records no tokenizer and no model config")
    return tokenizer_for(config_from_dict(cfg), rec)
