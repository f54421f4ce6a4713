"""ARF's data: the finetune set and the pool as tensors or clipcore datasets (:class:`Pairs`), a captioner's JSON
lines for L_TCA (:func:`read_captions`), the candidate pool for L_ITA (:func:`read_pool`), and the random-caption
control (:func:`random_word_captions`). Every bad line is an error naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from clipcore.data import DataError
from clipcore.errors import MissingFileError


class Pairs:
    """Images (N, C, H, W) float in memory (or any ``batch_images(idx)``), with captions and labels: the
    finetune set and the pool as ARF sees them. Wraps clipcore datasets and synthetic tensors alike."""

    def __init__(self, images, captions: Sequence[Sequence[str]] | Sequence[str] | None = None,
                 labels: Tensor | None = None, classnames: Sequence[str] | None = None):
        self._images = images
        self.captions = captions
        self.labels = labels
        self.classnames = list(classnames) if classnames is not None else None

    def __len__(self) -> int:
        return len(self._images) if isinstance(self._images, Tensor) else len(self._images.labels)

    def batch_images(self, idx: Sequence[int]) -> Tensor:
        if isinstance(self._images, Tensor):
            return self._images[torch.as_tensor(list(idx), dtype=torch.long)]
        return self._images.batch_images(list(idx))


def read_captions(path: str | Path, image_paths: Sequence[Path]) -> list[list[str]]:
    """A captioner's JSON lines ``{"image", "caption"}`` (image relative to the file's folder or absolute) ->
    the captions of each finetune image, in dataset order. Several lines per image are allowed; a bad line or a
    finetune image without a caption is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--arf-captions {str(path)!r}: file not found (JSON lines of {{\"image\", \"caption\"}})")
    by_image: dict[Path, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, caption = rec["image"], str(rec["caption"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path} line {n}: expected a JSON object with keys image and caption ({e!r})") from e
        if not caption:
            raise DataError(f"{path} line {n}: empty caption for {image}")
        by_image.setdefault((path.parent / image).resolve(), []).append(caption)
    out = []
    for p in image_paths:
        caps = by_image.get(Path(p).resolve())
        if not caps:
            raise DataError(f"{path}: no caption for finetune image {p}; every finetune image needs at least one line")
        out.append(caps)
    return out


def read_pool(path: str | Path, **data_kw):
    """The candidate pool: anything clipcore.data.load_dataset reads, or JSON lines ``{"image", "caption"}``."""
    from clipcore.data import ImageTextDataset, load_dataset
    from clipcore.images import PreprocessCfg
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return load_dataset(path, "train", **data_kw)
    if not path.is_file():
        raise MissingFileError(f"--arf-pool {str(path)!r}: file not found")
    paths, caps, rows = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            paths.append(path.parent / rec["image"]); caps.append(str(rec["caption"]).strip())
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path} line {n}: expected a JSON object with keys image and caption ({e!r})") from e
        if not caps[-1] or not paths[-1].is_file():
            raise DataError(f"{path} line {n}: {'empty caption' if not caps[-1] else f'image {paths[-1]} not found'}")
        rows.append(f"{path} line {n}")
    pp = data_kw.get("preprocess") or PreprocessCfg.for_files(data_kw.get("image_size", 32), data_kw.get("in_channels", 3))
    return ImageTextDataset(paths=paths, captions=caps, labels=torch.full((len(paths),), -1), classnames=None,
                            rows=rows, preprocess=pp)


def random_word_captions(captions: Sequence[str], seed: int = 0) -> list[str]:
    """ARF-5 control (i): each caption replaced by as many words drawn uniformly from all captions' words."""
    words = sorted({w for c in captions for w in c.split()})
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=max(1, len(c.split())))) for c in captions]
