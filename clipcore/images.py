"""Images from files as tensors: every PIL mode converted faithfully, CLIP's eval transform, a cheap integrity check.

    from clipcore.images import PreprocessCfg, ImageTransform, check_image
    cfg = PreprocessCfg(image_size=224)                     # CLIP's mean/std, bicubic, shorter side + centre crop
    x = ImageTransform(cfg)(Image.open("a.png"))            # (C, 224, 224) float, normalised
    check_image(Path("a.jpg"))                              # None, or why the file is not a whole image

A :class:`PreprocessCfg` is what a model's images went through in training (size, channels, mean, std,
interpolation, resize mode); every checkpoint records it (``ckpt["preprocess"]``) and everything that reads images
for a checkpoint uses it (``clipcore.data.load_dataset(..., preprocess=cfg)``, ``clipcore.eval``, RECO memories,
ARF, ``clipcore.create_model_and_transforms``), so data and model cannot disagree on the normalisation.

16-bit and float images are rescaled by their real range and resized in float, transparent pixels are
composited onto white (`to_canonical` lists every mode); `check_image` reads headers without decoding pixels,
so clipcore.data runs it on every image when a data set is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ALPHA_BACKGROUND = 255   # transparent pixels are composited onto white (a page, as viewers show them)
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
TAIL_BYTES = 4096        # a JPEG's last TAIL_BYTES must hold its end-of-image marker (else it is decoded to check)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
RESIZE_MODES = ("crop", "whole")


@dataclass(frozen=True)
class PreprocessCfg:
    """How images become a model's input: resize to image_size x image_size, in_channels (1 grey, 3 RGB),
    then (x / 255 - mean) / std per channel.

    interpolation: "bicubic" (CLIP's), "bilinear" or "nearest" -- PIL's filter for files, torch's antialiased
    ``F.interpolate`` mode for in-memory uint8 data (the embedded default), which agree to about 1/255.
    resize_mode: "crop" (shorter side to image_size, centre crop: CLIP's eval transform) or "whole" (the whole
    image squashed to a square: region boxes stay valid, as GRAIN needs).
    """
    image_size: int = 224
    in_channels: int = 3
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.in_channels not in (1, 3) or len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"in_channels must be 1 or 3 with one mean and std per channel; got {self.in_channels}, "
                             f"mean {self.mean}, std {self.std}")
        if int(self.image_size) < 1 or any(s <= 0 for s in self.std):
            raise ValueError(f"need image_size >= 1 and std > 0; got {self.image_size}, {self.std}")
        if self.interpolation not in INTERPOLATIONS or self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)} and resize_mode one of "
                             f"{RESIZE_MODES}; got {self.interpolation!r}, {self.resize_mode!r}")

    @classmethod
    def for_files(cls, image_size: int, in_channels: int = 3) -> "PreprocessCfg":
        """CSV, folder and shard data: CLIP's mean/std (RGB) or 0.5/0.5 (grey), bicubic, centre crop."""
        rgb = in_channels == 3
        return cls(int(image_size), in_channels, CLIP_MEAN if rgb else (0.5,), CLIP_STD if rgb else (0.5,))

    def to_dict(self) -> dict:
        """Plain values (what a checkpoint stores)."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessCfg":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def tensors(self) -> tuple[Tensor, Tensor]:
        """mean, std as (C, 1, 1) tensors."""
        return torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)


class ImageTransform:
    """A PIL image -> (C, H, W) float tensor by a :class:`PreprocessCfg`, as open_clip's preprocess objects:
    ``preprocess(Image.open(p)).unsqueeze(0)`` is a batch of one."""

    def __init__(self, cfg: PreprocessCfg):
        self.cfg = cfg
        self._mean, self._std = cfg.tensors()

    def __call__(self, im: Image.Image) -> Tensor:
        c = self.cfg
        return preprocess(im, c.image_size, self._mean, self._std, crop=c.resize_mode == "crop",
                          interpolation=c.interpolation)

    def __repr__(self) -> str:
        c = self.cfg
        resize = ("shorter side to {s}, centre crop {s}x{s}" if c.resize_mode == "crop" else "whole image to {s}x{s}"
                  ).format(s=c.image_size)
        fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        return (f"ImageTransform({resize} ({c.interpolation}), {'RGB' if c.in_channels == 3 else 'grey'}, "
                f"to tensor, normalise mean={fmt(c.mean)} std={fmt(c.std)})")


def to_canonical(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L"/"RGB" (8-bit modes) or "F" with values in [0, 1] (16-bit, 32-bit and float modes).

    channels: 1 gives grey ("L" or "F"), 3 gives "RGB" (or "F" for a high-bit-depth grey, repeated by the caller).
      - 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: PIL's conversion to RGB/L (grey is ITU-R 601 luma; CMYK naive).
      - alpha (LA, La, PA, RGBA, RGBa, and P/L/RGB with a "transparency" key): composited onto
        ALPHA_BACKGROUND (white), so a transparent pixel looks as it does in an image viewer.
      - I;16, I;16L, I;16B, I;16N: divided by 65535 (the full 16-bit range; PIL's "L" conversion would clip
        everything above 255 to white).
      - I (32-bit int): divided by 65535 when every value lies in [0, 65535] (16-bit data, which some readers
        open as "I"); otherwise min-max scaled over the image (a constant image gives 0).
      - F (32-bit float): kept as is when every value lies in [0, 1]; otherwise min-max scaled over the image.
        NaN or infinite pixels raise ValueError (there is no faithful way to show them).
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float32)
            if not np.isfinite(a).all():
                raise ValueError("float image with NaN or infinite pixel values")
            if a.size and (a.min() < 0 or a.max() > 1):
                a = _min_max(a)
        elif (mode.startswith("I;16") and a.dtype.kind == "u") or (a.size and a.min() >= 0 and a.max() <= 65535):
            a = a.astype(np.float32) / 65535.0
        else:
            a = _min_max(a.astype(np.float64))
        return Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    target = "RGB" if channels == 3 else "L"
    if mode in ALPHA_MODES or "transparency" in im.info:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")   # un-premultiplies La/RGBa; applies
                                                                             # a P/L/RGB transparency key
        im = Image.alpha_composite(Image.new("RGBA", im.size, (ALPHA_BACKGROUND,) * 3 + (255,)), rgba)
    if im.mode not in (target, "L", "RGB"):
        im = im.convert("RGB")             # 1, P, CMYK, YCbCr, LAB, HSV, RGBA (composited above)
    return im if im.mode == target else im.convert(target)


def _min_max(a: np.ndarray) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)


def preprocess(im: Image.Image, size: int, mean: Tensor, std: Tensor, crop: bool = True,
               interpolation: str = "bicubic") -> Tensor:
    """CLIP's eval transform: shorter side -> size (bicubic), centre crop, normalise -> (C, size, size) float.
    ``interpolation``: a key of :data:`INTERPOLATIONS` (PIL's filter).
    ``crop=False`` resizes the whole image to size x size instead (aspect not kept: region boxes given relative
    to the whole image stay valid, as GRAIN's annotations need).

    C = len(mean): 1 converts to grey, 3 to RGB, every PIL mode as :func:`to_canonical` says (16-bit and float
    images are resized in float, so their precision survives). mean, std: (C, 1, 1).
    """
    im = to_canonical(im, mean.shape[0])
    if crop:
        w, h = im.size
        r = size / min(w, h)
        nw, nh = max(size, round(w * r)), max(size, round(h * r))
        im = im.resize((nw, nh), INTERPOLATIONS[interpolation])
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    else:
        im = im.resize((size, size), INTERPOLATIONS[interpolation])
    a = np.asarray(im, dtype=np.float32)
    a = np.clip(a, 0.0, 1.0) if im.mode == "F" else a / 255.0   # bicubic overshoot: 8-bit PIL clips it too
    x = torch.from_numpy(a)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] != mean.shape[0]:
        x = x.expand(mean.shape[0], -1, -1)   # high-bit-depth grey as RGB
    return (x - mean) / std


def check_image(path: Path) -> str | None:
    """None when `path` looks like a whole image, else the reason. Reads headers, does not decode pixels.

    Cost: ``Image.open`` reads the header (~20 us); ``verify()`` reads the rest of the file without decoding
    (PNG: every chunk's CRC, which catches truncation; ~80 us for a 256 px PNG, against ~1 ms to decode it);
    a JPEG must hold its end-of-image marker in its last TAIL_BYTES (entropy-coded data cannot contain it, so a
    cut-off download fails this) and is decoded only when it does not. Damage inside the compressed pixels of
    a file that passes (rare: GIF, WebP, TIFF bodies, a JPEG corrupted but not cut short) shows when the loader
    decodes it, as a DataError naming the file.
    """
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            im.verify()
        if w < 1 or h < 1:
            return f"image has no pixels ({w}x{h})"
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - TAIL_BYTES))
                tail = f.read()
            if b"\xff\xd9" not in tail:       # no end-of-image marker near the end: cut short, or trailing data
                with Image.open(path) as im:
                    im.load()
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"
    return None
