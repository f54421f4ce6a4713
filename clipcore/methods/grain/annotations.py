"""Region annotations for grounded pretraining (docs/methods.md, GRAIN §3): JSON lines, one image per line:

    {"image": "img/0001.jpg", "caption": "alt-text", "aug_caption": "an MLLM caption (optional)",
     "regions": [{"description": "red striped circle", "bbox": [x1, y1, x2, y2], "score": 0.82}, ...]}

``bbox`` is in pixels of the image file (W x H). The loader resizes every image to S x S (no crop, as the official
code), scales x by S/W and y by S/H, clips to the image, drops regions scoring below ``score_threshold`` (0.3, the
OWLv2 threshold) and boxes degenerate after clipping (each box keeps its own description: the pairing cannot shift),
keeps the top ``max_regions`` (5) by score, and stores boxes as normalised (cx, cy, w, h). An optional integer
``"label"`` is kept (-1 without); descriptions lose leading ``.,!?-*`` bullet characters (as the official code). Each epoch draws the caption 50/50 between ``caption`` and ``aug_caption``
(``caption_mix``), deterministically in (seed, epoch, index). Bad lines raise DataError naming file, line and field.

    ds = load_annotations("annotations.jsonl", image_size=32)
    loader = region_loader(ds, tokenizer, 128, seed=0, epoch=0)     # RegionBatch per step
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from clipcore.data import CLIP_MEAN, CLIP_STD, DataError, EpochBatchSampler, _hash3
from clipcore.images import preprocess

SCORE_THRESHOLD = 0.3   # OWLv2 post-processing threshold of the official annotations
MAX_REGIONS = 5         # top-5 detections by score (= the number of region queries)


@dataclass
class Regions:
    """The kept regions of one image: boxes (n, 4) normalised cxcywh float32, descriptions (n,), scores (n,)."""
    boxes: np.ndarray
    descriptions: list[str]
    scores: np.ndarray


def _bad(where: str, msg: str) -> DataError:
    return DataError(f"{where}: {msg}")


def parse_regions(raw, size: tuple[int, int], *, where: str, score_threshold: float = SCORE_THRESHOLD,
                  max_regions: int = MAX_REGIONS) -> Regions:
    """Validate a line's "regions" list and reduce it to the kept, normalised boxes.

    size = (W, H) of the image file. Boxes become x / W, y / H clipped to [0, 1] (resizing to S x S and dividing
    by S; docs/methods.md, GRAIN §3), then cxcywh. Order: threshold, drop degenerate, stable top-``max_regions`` by
    score.
    """
    if not isinstance(raw, list):
        raise _bad(where, f'"regions" must be a list of {{"description", "bbox", "score"}} objects, got {type(raw).__name__}')
    w, h = size
    kept = []
    for k, r in enumerate(raw):
        at = f"{where} regions[{k}]"
        if not isinstance(r, dict):
            raise _bad(at, f"must be an object with description, bbox, score; got {type(r).__name__}")
        missing = [key for key in ("description", "bbox", "score") if key not in r]
        if missing:
            raise _bad(at, f"missing key(s) {missing}")
        d = r["description"]
        if isinstance(d, str):
            d = d.strip().lstrip(".,!?-* ")       # MLLM bullet-list debris, as the official loader strips it
        if not isinstance(d, str) or not d:
            raise _bad(at, f'"description" must be a non-empty string, got {d!r}')
        b = r["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             and math.isfinite(v) for v in b)):
            raise _bad(at, f'"bbox" must be four numbers [x1, y1, x2, y2] in pixels, got {b!r}')
        if b[2] <= b[0] or b[3] <= b[1]:
            raise _bad(at, f'"bbox" {b} needs x2 > x1 and y2 > y1 (corners, not x, y, w, h)')
        s = r["score"]
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise _bad(at, f'"score" must be a number, got {s!r}')
        if s < score_threshold:
            continue
        x1, x2 = (min(max(v / w, 0.0), 1.0) for v in (b[0], b[2]))
        y1, y2 = (min(max(v / h, 0.0), 1.0) for v in (b[1], b[3]))
        if x2 - x1 <= 0 or y2 - y1 <= 0:      # degenerate after clipping: dropped with its description
            continue
        kept.append((float(s), d, ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)))
    kept.sort(key=lambda t: -t[0])             # stable: ties keep file order
    kept = kept[:max_regions]
    return Regions(np.array([k[2] for k in kept], np.float32).reshape(-1, 4), [k[1] for k in kept],
                   np.array([k[0] for k in kept], np.float32))


def parse_line(line: str, where: str) -> dict:
    """One JSON line -> dict with image, caption, aug_caption (None when absent), regions (raw), label."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise _bad(where, f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from e
    if not isinstance(obj, dict):
        raise _bad(where, f"must be a JSON object, got {type(obj).__name__}")
    for key in ("image", "caption", "regions"):
        if key not in obj:
            raise _bad(where, f'missing key "{key}"; a line needs "image", "caption" and "regions" (may be [])')
    for key in ("image", "caption"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise _bad(where, f'"{key}" must be a non-empty string, got {obj[key]!r}')
    aug = obj.get("aug_caption")
    if aug is not None and (not isinstance(aug, str) or not aug.strip()):
        raise _bad(where, f'"aug_caption" must be a non-empty string when present, got {aug!r}')
    label = obj.get("label", -1)
    if not isinstance(label, int) or isinstance(label, bool):
        raise _bad(where, f'"label" must be an integer when present, got {label!r}')
    return {"image": obj["image"], "caption": obj["caption"].strip(), "aug_caption": aug.strip() if aug else None,
            "regions": obj["regions"], "label": label}


# ----------------------------------------------------------------------------- dataset
class RegionDataset(torch.utils.data.Dataset):
    """Images with a caption, an optional aug_caption and kept regions; items are
    ``(image (C, S, S) float, caption str, Regions, label int)``.

    Images come from files (``paths``, resized without crop per item) or from memory (``images`` (N, H, W, 3)
    uint8, resized and normalised once). ``caption_mix`` is the probability of drawing ``aug_caption`` (0.5: the
    official 50/50; 0: alt-text only). ``shuffle_descriptions`` permutes each image's descriptions across its
    boxes (the G-shuf control: the text is kept, the grounding broken). Both draws hash (seed, epoch, index).
    """

    def __init__(self, *, captions: list[str], aug_captions: list[str | None], regions: list[Regions],
                 labels: Sequence[int], image_size: int, paths: list[Path] | None = None,
                 images: np.ndarray | None = None, rows: list[str] | None = None, seed: int = 0,
                 caption_mix: float = 0.5, shuffle_descriptions: bool = False,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        if (paths is None) == (images is None):
            raise ValueError("give exactly one of paths= (files) or images= (an in-memory uint8 array)")
        self.captions, self.aug_captions, self.regions = captions, aug_captions, regions
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.image_size, self.paths, self.rows = image_size, paths, rows or [f"item {i}" for i in range(len(captions))]
        self.seed, self.epoch, self.caption_mix, self.shuffle_descriptions = seed, 0, caption_mix, shuffle_descriptions
        self._mean, self._std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self._cache = None
        if images is not None:
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
            self._cache = (x - self._mean) / self._std

    def __len__(self) -> int:
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _image(self, i: int) -> Tensor:
        if self._cache is not None:
            return self._cache[i]
        s = self.image_size
        try:
            with Image.open(self.paths[i]) as im:
                return preprocess(im, s, self._mean, self._std, crop=False)   # boxes are relative to the whole image
        except Exception as e:   # PIL raises many types for bad files
            raise DataError(f"{self.rows[i]}: cannot read image {self.paths[i]} ({type(e).__name__}: {e}); "
                            "replace the file or remove its line") from e

    def subset(self, idx: Sequence[int]) -> "RegionDataset":
        """The items ``idx`` as a dataset of their own (same options; e.g. a validation split held out of a file)."""
        import copy
        idx = [int(i) for i in idx]
        new = copy.copy(self)
        new.captions, new.aug_captions = [self.captions[i] for i in idx], [self.aug_captions[i] for i in idx]
        new.regions, new.labels, new.rows = [self.regions[i] for i in idx], self.labels[idx], [self.rows[i] for i in idx]
        new.paths = None if self.paths is None else [self.paths[i] for i in idx]
        new._cache = None if self._cache is None else self._cache[idx]
        return new

    def all_images(self) -> Tensor:
        """Every image, (N, C, S, S) normalised (the in-memory cache itself, or the files loaded and stacked)."""
        return self._cache if self._cache is not None else torch.stack([self._image(i) for i in range(len(self))])

    def item_text(self, idx: Sequence[int]) -> list[tuple[str, list[str]]]:
        """(caption, descriptions) of items ``idx`` at the current epoch (the 50/50 mix and the optional shuffle)."""
        h = _hash3(self.seed, self.epoch, np.asarray(idx)) if len(idx) else np.zeros(0, np.uint64)
        u = (h >> np.uint64(11)).astype(np.float64) / 2.0**53           # uniform in [0, 1) per item
        out = []
        for i, ui, hi in zip(idx, u, h):
            aug = self.aug_captions[i]
            cap = aug if aug is not None and ui < self.caption_mix else self.captions[i]
            desc = self.regions[i].descriptions
            if self.shuffle_descriptions and len(desc) > 1:
                perm = np.random.default_rng(int(hi)).permutation(len(desc))
                desc = [desc[p] for p in perm]
            out.append((cap, desc))
        return out

    def __getitems__(self, idx: list[int]) -> list[tuple]:
        idx = [int(i) for i in idx]
        return [(self._image(i), cap, desc, self.regions[i].boxes, int(self.labels[i]))
                for i, (cap, desc) in zip(idx, self.item_text(idx))]

    def __getitem__(self, i: int):
        return self.__getitems__([int(i)])[0]


def load_annotations(path: str | Path, *, image_size: int, seed: int = 0, score_threshold: float = SCORE_THRESHOLD,
                     max_regions: int = MAX_REGIONS, caption_mix: float = 0.5, shuffle_descriptions: bool = False,
                     mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> RegionDataset:
    """Read and validate a JSON-lines annotation file (image paths relative to the file's folder).

    Every line is checked (JSON, keys, types, bbox corners, scores, the image file exists and opens); the first
    problem raises DataError naming the file, the line number and the field. Image sizes are read from the file
    headers (no decoding) to rescale the boxes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; pass a .jsonl file (one JSON object per line)")
    caps, augs, regs, labels, paths, rows = [], [], [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            rec = parse_line(line, where)
            img = path.parent / rec["image"]
            try:
                with Image.open(img) as im:
                    size = im.size
            except FileNotFoundError:
                raise _bad(where, f'"image" file {img} not found (paths are relative to {path.parent})') from None
            except Exception as e:
                raise _bad(where, f'"image" {img} is not a readable image ({type(e).__name__}: {e})') from e
            regs.append(parse_regions(rec["regions"], size, where=where, score_threshold=score_threshold,
                                      max_regions=max_regions))
            caps.append(rec["caption"]); augs.append(rec["aug_caption"]); labels.append(rec["label"])
            paths.append(img); rows.append(where)
    if not caps:
        raise DataError(f"{path}: no annotation lines; write one JSON object per image")
    return RegionDataset(captions=caps, aug_captions=augs, regions=regs, labels=labels, image_size=image_size,
                         paths=paths, rows=rows, seed=seed, caption_mix=caption_mix,
                         shuffle_descriptions=shuffle_descriptions, mean=mean, std=std)


def from_records(records: list[dict], images: np.ndarray, *, image_size: int, **kw) -> RegionDataset:
    """In-memory dataset from annotation records (the JSON objects without "image") and (N, H, W, 3) uint8 images,
    through the same validation and box rules as files (e.g. :meth:`clipcore.methods.grain.partworld.PartWorld.sample`)."""
    size = (images.shape[2], images.shape[1])
    thr = {k: kw.pop(k) for k in ("score_threshold", "max_regions") if k in kw}
    parsed = [parse_line(json.dumps({"image": f"#{i}", **r}), f"record {i}") for i, r in enumerate(records)]
    return RegionDataset(captions=[p["caption"] for p in parsed], aug_captions=[p["aug_caption"] for p in parsed],
                         regions=[parse_regions(p["regions"], size, where=f"record {i}", **thr) for i, p in enumerate(parsed)],
                         labels=[p["label"] for p in parsed], images=images, image_size=image_size, **kw)


# ----------------------------------------------------------------------------- batching
@dataclass
class RegionBatch:
    """One batch, texts de-duplicated so that each distinct string is encoded once.

    images (B, C, S, S); tokens (U, L) the U distinct strings among captions and descriptions; caption (B,) index
    of each image's caption in ``tokens`` (equal strings share an index: it doubles as the caption identity for
    multi-positive targets); boxes (B, T, 4) cxcywh padded with zeros; region_text (B, T) index of each box's
    description in ``tokens``, -1 for padding; box_mask (B, T) bool; labels (B,) (-1 unknown); texts the U strings.
    """
    images: Tensor
    tokens: Tensor
    caption: Tensor
    boxes: Tensor
    region_text: Tensor
    box_mask: Tensor
    labels: Tensor
    texts: list[str]

    def to(self, device) -> "RegionBatch":
        return RegionBatch(*(getattr(self, k).to(device) for k in ("images", "tokens", "caption", "boxes",
                                                                     "region_text", "box_mask", "labels")), self.texts)


def collate_regions(items: list[tuple], tokenizer: Callable[[list[str]], Tensor], max_regions: int = MAX_REGIONS
                    ) -> RegionBatch:
    """Items of :class:`RegionDataset` -> :class:`RegionBatch` (T = max_regions)."""
    index: dict[str, int] = {}
    b = len(items)
    boxes = torch.zeros(b, max_regions, 4)
    region_text = torch.full((b, max_regions), -1, dtype=torch.long)
    caption = torch.empty(b, dtype=torch.long)
    for i, (_, cap, desc, bx, _) in enumerate(items):
        caption[i] = index.setdefault(cap, len(index))
        n = min(len(desc), max_regions)
        if n:
            boxes[i, :n] = torch.from_numpy(bx[:n])
            region_text[i, :n] = torch.tensor([index.setdefault(d, len(index)) for d in desc[:n]])
    texts = list(index)
    return RegionBatch(torch.stack([it[0] for it in items]), tokenizer(texts), caption, boxes, region_text,
                       region_text >= 0, torch.tensor([it[4] for it in items], dtype=torch.long), texts)


def region_loader(ds: RegionDataset, tokenizer: Callable[[list[str]], Tensor], batch_size: int, *, seed: int = 0,
                  epoch: int = 0, start_batch: int = 0, shuffle: bool = True, drop_last: bool = True,
                  num_workers: int = 0, max_regions: int = MAX_REGIONS) -> Iterator[RegionBatch]:
    """DataLoader of RegionBatch for one epoch, deterministic in (seed, epoch), resumable at ``start_batch``."""
    from functools import partial
    ds.set_epoch(epoch)
    sampler = EpochBatchSampler(len(ds), batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                                shuffle=shuffle, drop_last=drop_last)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=partial(collate_regions, tokenizer=tokenizer, max_regions=max_regions))
