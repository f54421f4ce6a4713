"""Images from files as tensors: every PIL mode converted faithfully, CLIP's eval transform, a cheap integrity check.

    from clipcore.images import preprocess, check_image
    x = preprocess(Image.open("a.png"), 224, mean, std)    # (C, 224, 224) float, normalised
    check_image(Path("a.jpg"))                              # None, or why the file is not a whole image

16-bit and float images are rescaled by their real range and resized in float, transparent pixels are
composited onto white (`to_canonical` lists every mode); `check_image` reads headers without decoding pixels,
so clipcore.data runs it on every image when a data set is built.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ALPHA_BACKGROUND = 255   # transparent pixels are composited onto white (a page, as viewers show them)
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
TAIL_BYTES = 4096        # a JPEG's last TAIL_BYTES must hold its end-of-image marker (else it is decoded to check)


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


def preprocess(im: Image.Image, size: int, mean: Tensor, std: Tensor, crop: bool = True) -> Tensor:
    """CLIP's eval transform: shorter side -> size (bicubic), centre crop, normalise -> (C, size, size) float.
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
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    else:
        im = im.resize((size, size), Image.BICUBIC)
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
