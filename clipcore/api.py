"""The Python front door, named and shaped as open_clip's (``import clipcore`` re-exports it).

    model, _, preprocess = clipcore.create_model_and_transforms("logs/<run>/checkpoints/latest.pt")
    tokenizer = clipcore.get_tokenizer("logs/<run>/checkpoints/latest.pt")
    classifier = clipcore.build_zero_shot_classifier(model, tokenizer, ["cat", "dog"], ["a photo of a {c}."])  # (D, C)
    probs = (100 * model.encode_image(preprocess(Image.open("x.png")).unsqueeze(0)) @ classifier).softmax(-1)

``name_or_checkpoint`` is a model name -- a clipcore preset (:func:`list_models`) or ``open_clip:NAME`` (any
``open_clip.list_models()`` name; clipcore.adapters), untrained unless ``pretrained`` names weights -- or the path
of a checkpoint written by ``python -m clipcore.train`` (CLIP, GRAIN, RECO, ARF, open_clip towers), which carries
its weights, tokenizer and image preprocessing. The preprocess objects are :class:`clipcore.images.ImageTransform`:
a PIL image -> (C, H, W) float tensor, exactly the transform the checkpoint's training data went through (an
untrained model: CLIP's eval transform at its input size). clipcore trains without augmentation, so
``preprocess_train`` and ``preprocess_val`` are the same transform.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor, nn

from clipcore.errors import ConfigError

if TYPE_CHECKING:
    from clipcore.images import ImageTransform

__all__ = ["list_models", "create_model", "create_model_and_transforms", "get_tokenizer", "build_zero_shot_classifier"]

OPEN_CLIP = "open_clip:"


def list_models() -> list[str]:
    """Names :func:`create_model` takes besides checkpoint paths: clipcore's presets (clipcore.models.PRESETS),
    sorted. Any open_clip architecture works too, as ``"open_clip:" + name`` for a name of
    ``open_clip.list_models()``."""
    from clipcore.models import PRESETS
    return sorted(PRESETS)


def _is_checkpoint(name_or_path: str | os.PathLike) -> bool:
    s = str(name_or_path)
    return Path(s).is_file() or s.endswith((".pt", ".pth")) or os.sep in s


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else "cpu")


def _load(path: str | os.PathLike, device: torch.device):
    """(model, ImageTransform, tokenizer) of a clipcore checkpoint."""
    from clipcore.checkpoint import preprocess_of
    from clipcore.methods import load_model
    from clipcore.images import ImageTransform
    model, tokenizer, ckpt = load_model(path, str(device))
    return model, ImageTransform(preprocess_of(ckpt, model)), tokenizer


def _preset(name: str):
    """The CLIPConfig of a preset whose tokenizer needs no training data (a ConfigError naming the presets)."""
    from clipcore.models import PRESETS, get_config
    if name not in PRESETS:
        raise ConfigError(f"unknown model {name!r}: not a checkpoint file, a clipcore preset ({', '.join(list_models())}) "
                          "or open_clip:NAME")
    cfg = get_config(name)
    if cfg.tokenizer == "word":
        raise ConfigError(f"preset {name!r} uses a word tokenizer whose vocabulary comes from its training data; "
                          "load a trained checkpoint of it instead")
    return cfg


def _named(name: str, device: torch.device):
    """(untrained model, CLIP's eval transform at its input size, tokenizer) of a preset or open_clip:NAME."""
    from clipcore.checkpoint import tokenizer_for
    from clipcore.images import ImageTransform, PreprocessCfg
    from clipcore.models import CLIP
    if name.startswith(OPEN_CLIP):
        from clipcore.adapters import OpenCLIP
        model = OpenCLIP(name[len(OPEN_CLIP):])
        tokenizer = model.tokenizer
    else:
        cfg = _preset(name)
        model, tokenizer = CLIP(cfg), tokenizer_for(cfg)
    size, channels = model.input_size()
    return model.to(device).eval(), ImageTransform(PreprocessCfg.for_files(size, channels)), tokenizer


def _create(name_or_checkpoint: str | os.PathLike, pretrained: str | os.PathLike | None, device):
    device = _device(device)
    if _is_checkpoint(name_or_checkpoint):
        if pretrained is not None:
            raise ConfigError(f"{name_or_checkpoint} is a checkpoint, which holds its weights; pass pretrained=None "
                              "(or a model name with pretrained=<checkpoint>)")
        return _load(name_or_checkpoint, device)
    model, transform, tokenizer = _named(str(name_or_checkpoint), device)
    if pretrained is None:
        return model, transform, tokenizer
    from clipcore.checkpoint import safe_load
    if str(pretrained).endswith(".safetensors") or "train_config" not in (safe_load(pretrained, "pretrained") or {}):
        from clipcore.adapters import load_pretrained      # raw weights: a state dict (open_clip's or clipcore's)
        load_pretrained(model, pretrained)
        return model.to(device).eval(), transform, tokenizer
    loaded, transform, tokenizer = _load(pretrained, device)  # a clipcore checkpoint: its weights and preprocessing
    from clipcore.checkpoint import state_dict_mismatch
    mismatch = state_dict_mismatch(model.state_dict(), loaded.state_dict())
    if mismatch:
        raise ConfigError(f"pretrained={str(pretrained)!r} holds another architecture than {name_or_checkpoint!r} "
                          f"({mismatch}); pass the checkpoint alone: create_model({str(pretrained)!r})")
    return loaded, transform, tokenizer


def create_model(name_or_checkpoint: str | os.PathLike, pretrained: str | os.PathLike | None = None,
                 device: str | torch.device | None = None) -> nn.Module:
    """A model in eval mode on ``device`` (default CPU): a checkpoint's (weights, tokenizer and preprocessing
    from the file), or a preset / ``open_clip:NAME``, untrained unless ``pretrained`` names weights (a clipcore
    checkpoint of the same architecture, a .safetensors, or open_clip's .pt/.bin). Every model has
    ``encode_image((B, C, H, W)) -> (B, D)`` and ``encode_text((B, L) tokens) -> (B, D)``, L2-normalised."""
    return _create(name_or_checkpoint, pretrained, device)[0]


def create_model_and_transforms(name_or_checkpoint: str | os.PathLike, pretrained: str | os.PathLike | None = None,
                                device: str | torch.device | None = None
                                ) -> tuple[nn.Module, "ImageTransform", "ImageTransform"]:
    """-> (model, preprocess_train, preprocess_val), as open_clip's. The preprocess objects map a PIL image to a
    (C, H, W) float tensor by the checkpoint's recorded preprocessing (size, channels, mean, std, interpolation,
    crop or whole image); for an untrained name, CLIP's eval transform at the model's input size. Both are the
    same transform (clipcore trains without augmentation). Arguments as :func:`create_model`."""
    model, transform, _ = _create(name_or_checkpoint, pretrained, device)
    return model, transform, transform


def get_tokenizer(name_or_checkpoint: str | os.PathLike) -> Callable[[str | Sequence[str]], Tensor]:
    """The tokenizer of a checkpoint (its record: BPE and context length, a word tokenizer's vocabulary, or an
    open_clip model's tokenizer) or of a preset / ``open_clip:NAME``: texts -> (N, context_length) int64 tokens."""
    if _is_checkpoint(name_or_checkpoint):
        from clipcore.checkpoint import load, tokenizer_of
        return tokenizer_of(load(name_or_checkpoint))
    name = str(name_or_checkpoint)
    if name.startswith(OPEN_CLIP):
        import open_clip
        return open_clip.get_tokenizer(name[len(OPEN_CLIP):])
    from clipcore.checkpoint import tokenizer_for
    return tokenizer_for(_preset(name))


@torch.no_grad()
def build_zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                               templates: Sequence[str | Callable[[str], str]], num_classes_per_batch: int | None = 10,
                               device: str | torch.device | None = None, use_tqdm: bool = False) -> Tensor:
    """(D, C) zero-shot weights, open_clip's orientation: column c is the L2-normalised mean of the normalised
    text embeddings of every template filled with class c (CLIP's prompt ensemble). Templates are strings
    with ``{c}`` or ``{}`` (open_clip's), or callables ``lambda c: f"a photo of a {c}."``. Logits of images:
    ``model.encode_image(x) @ classifier``. ``num_classes_per_batch``: classes whose prompts are encoded in
    one forward pass (None: all); ``device``: default the model's. ``use_tqdm`` is accepted for open_clip
    compatibility (no progress bar is drawn). One implementation with clipcore.evaluate.zero_shot_classifier,
    which returns the (C, D) transpose."""
    from clipcore.evaluate import zero_shot_classifier
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    per = len(classnames) if num_classes_per_batch is None else max(1, num_classes_per_batch)
    return zero_shot_classifier(model, tokenizer, list(classnames), list(templates), device=device,
                                batch_size=max(1, per * len(templates))).T.contiguous().to(device)
