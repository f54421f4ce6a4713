"""open_clip towers behind clipcore's CLIP interface, and weights from disk.

    python -m clipcore.train --model open_clip:ViT-B-32 --train-data pairs.csv            # random init
    python -m clipcore.train --model open_clip:ViT-B-32 --pretrained ViT-B-32.pt ...       # open_clip weights
    python -m clipcore.train --model small --pretrained small.safetensors ...               # clipcore weights

:class:`OpenCLIP` builds ``open_clip.create_model(name, pretrained=None)`` (nothing is downloaded; open_clip's
BPE vocabulary ships in its wheel) and gives it the interface the loop, the evaluation and the methods use:
``encode_image`` / ``encode_text`` (``normalize``), ``forward -> (image, text, logit_scale)``,
``logit_scale_value()`` (exp, capped at 100 as open_clip's loss clamps it), ``input_size()``,
``set_grad_checkpointing()`` and ``.tokenizer``. A checkpoint of such a run records ``open_clip_model`` and loads
back with :func:`clipcore.methods.load_model`, so RECO and ARF take it as their frozen base (``--init``).
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from clipcore.errors import ConfigError
from clipcore.models import logit_scale_from


class OpenCLIP(nn.Module):
    """An open_clip model (``self.model``) with clipcore's CLIP interface."""

    def __init__(self, name: str):
        super().__init__()
        import open_clip
        if name not in open_clip.list_models():
            raise ConfigError(f"open_clip has no model {name!r}; e.g. {', '.join(open_clip.list_models()[:8])}, ... "
                             "(open_clip.list_models() lists all)")
        self.name = name
        self.model = open_clip.create_model(name, pretrained=None)
        self.tokenizer = open_clip.get_tokenizer(name)

    @property
    def visual(self) -> nn.Module:
        """The image tower (clipcore's CLIP names it the same): what ARF's ft/lpft modes train."""
        return self.model.visual

    def input_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size[0] if isinstance(size, (tuple, list)) else int(size)), 3

    def encode_image(self, images: Tensor, normalize: bool | None = True) -> Tensor:
        return self.model.encode_image(images, normalize=normalize is not False)

    def encode_text(self, text: Tensor, normalize: bool | None = True) -> Tensor:
        return self.model.encode_text(text, normalize=normalize is not False)

    def logit_scale_value(self) -> Tensor:
        return logit_scale_from(self.model.logit_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(text), self.logit_scale_value()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Weights from .safetensors, or .pt/.pth/.bin holding a state dict, open_clip's {"state_dict": ...} (its
    DDP "module." prefix removed) or a clipcore checkpoint ({"model": ...})."""
    from clipcore.checkpoint import CheckpointError, load, safe_load, sidecar
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--pretrained {str(path)!r} does not exist; pass a .safetensors, .pt, .pth or .bin file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = load(path) if sidecar(path).is_file() else safe_load(path, "--pretrained")  # verified if it can be
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"--pretrained {path}: not a state dict of tensors (found {type(sd).__name__})")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` (an :class:`OpenCLIP` takes open_clip's key names, a clipcore CLIP its own),
    requiring every key to match: a ConfigError names the missing and unexpected keys otherwise."""
    target = model.model if isinstance(model, OpenCLIP) else model
    sd = read_state_dict(path)
    if isinstance(model, OpenCLIP) and sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}     # a clipcore checkpoint of an OpenCLIP run
    from clipcore.checkpoint import state_dict_mismatch
    mismatch = state_dict_mismatch(target.state_dict(), sd)
    if mismatch:
        what = getattr(model, "name", None) or type(model).__name__
        raise ConfigError(f"--pretrained {path} does not fit the model {what}: {mismatch}. Pass weights saved "
                          "from the same architecture (open_clip weights need --model open_clip:<its name>).")
    target.load_state_dict(sd)
