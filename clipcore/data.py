"""Image–text data: the embedded animal-mnist default, open_clip-style CSV/TSV files, image folders.

    from clipcore.data import load_dataset, make_loader
    train = load_dataset(None, "train", image_size=32)          # 8000 animal silhouettes, 10 classes
    loader = make_loader(train, tokenizer, 256, seed=0, epoch=3)  # (images, tokens, labels) batches
    load_dataset("pairs.csv")      # columns filepath, caption (or title) [, label]
    load_dataset("photos/")        # photos/<class_name>/*.jpg
    load_dataset("test.csv", preprocess=clipcore.checkpoint.preprocess_of(ckpt))   # read as that model's training data

Every item is `(image (C, H, W) float, caption str, label int)`, label -1 when the data have no labels.
Captions of labelled data without text (default data, folders) are drawn from CAPTION_TEMPLATES by a hash of
(seed, epoch, index) only, so a resumed run sees exactly the captions it would have seen. Plain CLIP loss
cannot learn from a few repeated captions (identical captions in a batch are false negatives), hence the
template variety here and the label / caption-identity targets returned by `collate` for multi-positive losses.
Bad input raises DataError naming the file, the row and the fix; `skip_bad=True` (``--skip-bad``) skips and counts
bad rows instead. What is checked when a data set is built: CSV/TSV quoting and field counts (`_read_table`),
every row's caption and image path, and every image's header (`images.check_image`; no pixel decoding). Every PIL
image mode is converted faithfully (`images.to_canonical`: 16-bit and float rescaled, alpha onto white).
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import sys
import warnings
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from .errors import UserError
from .images import CLIP_MEAN, CLIP_STD, ImageTransform, PreprocessCfg, check_image  # noqa: F401 (CLIP_*: re-exported)

ASSET = Path(__file__).parent / "assets" / "animal_mnist.npz"   # see assets/ANIMAL_MNIST_LICENSE.txt
CLASSNAMES: tuple[str, ...] = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
# The animal-mnist images are white silhouettes on black (zebras keep grey stripes), so no template says "black".
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.", "a silhouette of a {c}.", "a white silhouette of a {c}.", "a {c} in silhouette.",
    "an outline of a {c}.", "the shape of a {c}.", "a small drawing of a {c}.", "a low resolution picture of a {c}.",
    "a blurry image of a {c}.", "a black and white picture of a {c}.", "a cutout of a {c}.", "a pictogram of a {c}.",
    "a stencil of a {c}.", "the silhouette of the {c}.", "a tiny image of a {c}.", "a {c}.", "an icon of a {c}.",
    "a side view of a {c}.", "this is a {c}.", "a picture showing a {c}.", "a shadow shaped like a {c}.",
)
ZS_TEMPLATES: tuple[str, ...] = (   # zero-shot prompt ensemble (CLIP style); average the text embeddings per class
    "a photo of a {c}.", "a silhouette of a {c}.", "a {c} in silhouette.", "the shape of a {c}.",
    "a drawing of a {c}.", "a black and white picture of a {c}.", "a low resolution picture of a {c}.",
)
SPLITS = ("train", "val", "test", "all")
SPLIT_SEED = 20240601          # fixed, independent of the run seed: every run evaluates on the same test set
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PROGRESS_MIN = 20_000   # image checks show a progress bar (stderr) from this many rows on
CACHE_BYTES = 256 * 2**20   # pre-resize in-memory images when the float copy fits in this


class DataError(UserError, ValueError):
    """Bad data or arguments; the message names the file, row (or argument) and how to fix it."""


def caption_for(template: str, classname: str) -> str:
    """Fill `{c}` in a template with a class name, turning "a {c}" into "an {c}" before a vowel."""
    if classname[:1].lower() in "aeiou":
        template = re.sub(r"\b([Aa]) \{c\}", r"\1n {c}", template)
    return template.replace("{c}", classname)


def _hash3(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """splitmix64-style hash of (seed, epoch, index) -> uint64 array; no global RNG state involved."""
    def mix(x: np.ndarray) -> np.ndarray:
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
    s = mix(np.array([seed % 2**64], dtype=np.uint64))
    s = mix(s ^ np.array([epoch % 2**64], dtype=np.uint64))
    return mix(s ^ np.asarray(index, dtype=np.int64).astype(np.uint64))


# ---------------------------------------------------------------------------------------------- dataset
class ImageTextDataset(torch.utils.data.Dataset):
    """Map-style dataset of (image (C, H, W) float, caption str, label int) items.

    Built by `load_dataset`; holds either uint8 grey images in memory (`images` (N, h, w); resized and normalised
    once into a float cache when that fits in CACHE_BYTES, else per batch) or lazily loaded files (`paths`). `captions` None means captions come from CAPTION_TEMPLATES and labels.
    Attributes: classnames (list[str] | None), labels (N,) LongTensor (-1 = unknown), rows (a description of
    each item's origin, for errors), skipped (descriptions of rows skipped under skip_bad), preprocess_cfg (the
    :class:`clipcore.images.PreprocessCfg` applied: what a checkpoint of a run on these data records).
    """

    def __init__(self, *, labels: Tensor, classnames: list[str] | None, rows: list[str], preprocess: PreprocessCfg,
                 seed: int = 0, images: Tensor | None = None, paths: list[Path] | None = None,
                 captions: list[str] | None = None, skipped: list[str] | None = None) -> None:
        self.labels, self.classnames, self.rows = labels, classnames, rows
        self.preprocess_cfg = preprocess
        self.image_size, self.in_channels, self.seed, self.epoch = preprocess.image_size, preprocess.in_channels, seed, 0
        self.images, self.paths, self.captions = images, paths, captions
        self.skipped = skipped or []
        self.mean, self.std = preprocess.mean, preprocess.std
        self._mean, self._std = preprocess.tensors()
        self._transform = ImageTransform(preprocess)
        # grey in-memory images: one normalised channel expanded (a view) when every channel has the same mean/std
        self._grey_norm = len(set(self.mean)) == 1 and len(set(self.std)) == 1
        if captions is None:   # table[label][template] so drawing a caption is a lookup
            assert classnames is not None, "template captions need class names"
            self._table = [[caption_for(t, c) for t in CAPTION_TEMPLATES] for c in classnames]
        self._cache: Tensor | None = None   # in-memory images resized (+ normalised) once when small enough
        if images is not None and len(images) * self.image_size ** 2 * 4 <= CACHE_BYTES:
            self._cache = torch.cat([self._resize(c) for c in images.split(1024)]) if len(images) else None

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose captions are drawn; captions depend only on (seed, epoch, index)."""
        self.epoch = int(epoch)

    def captions_at(self, idx: list[int]) -> list[str]:
        """Captions of items `idx` for the current epoch."""
        return self._captions(idx, self.labels[idx].tolist())

    def _captions(self, idx: list[int], labels: list[int]) -> list[str]:
        if self.captions is not None:
            return [self.captions[i] for i in idx]
        t = (_hash3(self.seed, self.epoch, np.asarray(idx)) % np.uint64(len(CAPTION_TEMPLATES))).tolist()
        return [self._table[c][k] for c, k in zip(labels, t)]

    def _load_file(self, i: int) -> Tensor:
        """The transform of :attr:`preprocess_cfg` (:class:`clipcore.images.ImageTransform`) of file i -> (C, S, S)."""
        try:
            with Image.open(self.paths[i]) as im:
                return self._transform(im)
        except Exception as e:  # PIL raises many types for bad files
            raise DataError(f"{self.rows[i]}: cannot decode image {self.paths[i]} ({type(e).__name__}: {e}); "
                            "replace or remove the file. (Only headers are checked when the data set is built, "
                            "see clipcore.images.check_image, so damage inside the pixel data shows here.)") from e

    def _resize(self, u8: Tensor) -> Tensor:
        """uint8 (B, h, w) -> (B, 1, S, S) float: antialiased resize to image_size (torch's mode of the
        interpolation; the same square images, so crop and whole agree), normalised when _grey_norm."""
        x = u8.unsqueeze(1).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            mode = self.preprocess_cfg.interpolation
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=mode,
                              **({} if mode == "nearest" else dict(antialias=True, align_corners=False)))
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)       # as PIL's 8-bit resize clips the overshoot
        return x.sub_(self.mean[0]).div_(self.std[0]) if self._grey_norm else x

    def batch_images(self, idx: list[int]) -> Tensor:
        """Images of items `idx` -> (B, C, image_size, image_size) float32, normalised."""
        if self.images is None:
            return torch.stack([self._load_file(i) for i in idx])
        it = torch.as_tensor(idx, dtype=torch.long)
        x = self._cache.index_select(0, it) if self._cache is not None else self._resize(self.images.index_select(0, it))
        x = x.expand(-1, self.in_channels, -1, -1)   # grey repeated to 3 channels (a view, no copy)
        return x if self._grey_norm else (x - self._mean) / self._std

    def __getitems__(self, idx: list[int]) -> list[tuple[Tensor, str, int]]:
        """Batched fetch used by torch's DataLoader: (image (C, H, W), caption, label) per index.

        In-memory data: one index_select on the pre-resized cache (or one resize for the batch); under 1 ms for 256
        items at 32 px on 2 CPU cores. Grey images repeated to 3 channels are expanded views, not copies.
        """
        idx = [int(i) for i in idx]
        labels = self.labels.index_select(0, torch.as_tensor(idx, dtype=torch.long)).tolist()
        return list(zip(self.batch_images(idx).unbind(0), self._captions(idx, labels), labels))

    def __getitem__(self, i: int) -> tuple[Tensor, str, int]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        return self.__getitems__([i % len(self)])[0]


# ---------------------------------------------------------------------------------------------- sources
@lru_cache(maxsize=1)
def _animal_mnist() -> tuple[Tensor, Tensor, tuple[np.ndarray, ...]]:
    """-> images (10000, 28, 28) uint8, labels (10000,) int64, split indices (train, val, test)."""
    if not ASSET.exists():
        raise DataError(f"embedded data {ASSET} is missing; reinstall clipcore (the .npz ships as package data) "
                        "or regenerate it with tools/convert_animal_mnist.py")
    with np.load(ASSET, allow_pickle=False) as z:
        images, labels, names = z["images"], z["labels"], tuple(z["classnames"].tolist())
    assert names == CLASSNAMES, names
    rng, parts = np.random.default_rng(SPLIT_SEED), ([], [], [])
    for c in range(len(CLASSNAMES)):      # stratified: 80/10/10 of every class
        ix = rng.permutation(np.flatnonzero(labels == c))
        a = round(SPLIT_FRACTIONS[0] * len(ix))
        b = a + round(SPLIT_FRACTIONS[1] * len(ix))
        for part, sl in zip(parts, (ix[:a], ix[a:b], ix[b:])):
            part.append(sl)
    splits = tuple(np.sort(np.concatenate(p)) for p in parts)
    return torch.from_numpy(images), torch.from_numpy(labels), splits


def default_preprocess(image_size: int = 32, in_channels: int = 3) -> PreprocessCfg:
    """The embedded animal-mnist's preprocessing: silhouettes are not photos, so CLIP's photo statistics do not
    fit and 0.5/0.5 maps [0, 1] to [-1, 1]; 28 px resized bilinearly (torch, antialiased)."""
    return PreprocessCfg(int(image_size), in_channels, (0.5,) * in_channels, (0.5,) * in_channels, "bilinear", "crop")


def _default(split: str, preprocess: PreprocessCfg, seed: int) -> ImageTextDataset:
    images, labels, splits = _animal_mnist()
    ix = np.arange(len(labels)) if split == "all" else splits[SPLITS.index(split)]
    ix_t = torch.from_numpy(ix)
    return ImageTextDataset(images=images[ix_t].contiguous(), labels=labels[ix_t].clone(),
                            classnames=list(CLASSNAMES), rows=[f"animal-mnist item {i}" for i in ix.tolist()],
                            preprocess=preprocess, seed=seed)


def _filter_rows(items: list[tuple[str, Path | None, str | None]], skip_bad: bool,
                 where: str) -> tuple[list[int], list[str]]:
    """Check (row description, image path (None: empty cell), caption) items -> kept positions, skipped rows.

    Every image gets :func:`check_image` (headers, no decoding: about 0.1 ms per file on a local disk, so a
    million images take a few minutes; a progress bar shows beyond PROGRESS_MIN rows). A bad row raises a
    DataError naming it, or with skip_bad (``--skip-bad``) is skipped, counted and reported in one warning.
    """
    keep, skipped = [], []
    check = tqdm(items, desc=f"checking {where}", unit="image", disable=len(items) < PROGRESS_MIN,
                 file=sys.stderr, mininterval=2.0)
    for k, (row, path, cap) in enumerate(check):
        if cap is not None and not cap.strip():
            why, fix = "empty caption", "write a caption or delete the row"
        elif path is None:
            why, fix = "empty image path", "fill in the image column or delete the row"
        elif path.is_dir():
            why, fix = f"{path} is a directory, not an image", "point the row at an image file"
        elif not path.is_file():
            why = f"image file {path} not found"
            fix = "fix the path (relative paths are resolved against the CSV's folder)"
        elif err := check_image(path):
            why, fix = f"{path} is not a readable image ({err})", "replace or remove the file"
        else:
            keep.append(k)
            continue
        if not skip_bad:
            raise DataError(f"{row}: {why}; {fix}, or pass --skip-bad to skip and count bad rows.")
        skipped.append(f"{row}: {why}")
    if not keep:
        raise DataError(f"{where}: all {len(items)} rows are bad, nothing left to load (first: {skipped[0]}). "
                        "Fix the data; --skip-bad cannot help when every row is bad.")
    if skipped:
        warnings.warn(f"{where}: skipped {len(skipped)} of {len(items)} bad rows (see dataset.skipped); "
                      f"first: {'; '.join(skipped[:3])}", stacklevel=3)
    return keep, skipped


def _parse_labels(values: list[str], rows: list[str], where: str) -> tuple[list[int], list[str] | None]:
    """Label strings -> int labels and class names (sorted unique names; None for integer labels)."""
    def as_int(v: str) -> int | None:
        try:
            return int(v)
        except ValueError:
            return None
    ints = as_int(values[0].strip()) is not None if values else True
    out: list[int] = []
    for v, row in zip(values, rows):
        v = v.strip()
        n = as_int(v) if ints else None
        if not v or (ints and (n is None or n < 0)):
            kind = "a non-negative integer" if ints else "a class name"
            raise DataError(f"{row}: cannot parse label {v!r}; the first row's label makes every label {kind}. "
                            "Use integers in every row or class names in every row (or drop the label column).")
        out.append(n if ints else v)
    if ints:
        return out, None
    names = sorted(set(out))
    index = {c: i for i, c in enumerate(names)}
    return [index[c] for c in out], names


def _read_table(path: Path, sep: str) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """A CSV/TSV file -> header, [(row description, {column: value})], parsed strictly by the csv module.

    Quoting follows RFC 4180 (a field holding the separator, a quote or a line break is quoted; a quote inside
    it is doubled) and ``strict=True``: a quote that never closes, or text after a closing quote, is an error
    naming the row where the quoted field opens -- never a caption that swallows the rows after it. Every
    row must have as many fields as the header. Blank lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")   # -sig: tolerate the BOM that spreadsheet exports add
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save the file as UTF-8.") from e
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    header: list[str] = []
    records: list[tuple[str, dict[str, str]]] = []
    start = 1                                   # first physical line of the row being read
    try:
        for fields in reader:
            if not fields:                      # blank line
                start = reader.line_num + 1
                continue
            if not header:
                header = fields
            else:
                row = f"{path} data row {len(records) + 1} (line {start})"
                if len(fields) != len(header):
                    extra = fields[len(header):]
                    hint = ("add the missing fields" if not extra else f"remove the trailing {sep!r}"
                            if not any(f.strip() for f in extra) else f"quote a field that contains {sep!r}")
                    raise DataError(f"{row}: {len(fields)} fields, the header has {len(header)} ({header}); {hint}.")
                records.append((row, dict(zip(header, fields))))
            start = reader.line_num + 1
    except csv.Error as e:
        row = f"{path} {'data row ' + str(len(records) + 1) if header else 'header'} (line {start})"
        if "end of data" in str(e):
            why = (f"a quoted field opens on this row and never closes, so the rest of the file "
                   f"(to line {reader.line_num}) would become one field")
        else:
            where = f"line {reader.line_num}" if reader.line_num != start else "this line"
            why = f"malformed quoting at {where} ({e}); a quote that opens here closes too early or too late"
        raise DataError(f"{row}: {why}. Close the quote, or write a literal quote inside a quoted field as two "
                        "quotes (\"\").") from e
    return header, records


def _from_table(path: Path, preprocess: PreprocessCfg, seed: int, skip_bad: bool, caption_key: str | None,
                image_key: str | None, label_key: str | None, sep: str | None = None) -> ImageTextDataset:
    sep = sep or ("\t" if path.suffix.lower() == ".tsv" else ",")
    cols, records = _read_table(path, sep)
    if not cols:
        raise DataError(f"{path}: the file is empty; it needs a header line (filepath{sep}caption) and data rows.")
    ikey = image_key or "filepath"
    ckey = caption_key or ("caption" if "caption" in cols else "title")
    missing = [k for k in (ikey, ckey) if k not in cols]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {cols}. Expected an image column "
                        f"'filepath' and a caption column 'caption' or 'title' (open_clip's convention), separator "
                        f"{sep!r}; rename the columns (in Python, image_key=/caption_key= name other columns).")
    lkey = label_key or "label"
    if label_key is not None and lkey not in cols:
        raise DataError(f"{path}: label column {lkey!r} (label_key) not found; found columns {cols}.")
    if not records:
        raise DataError(f"{path}: no data rows after the header; add rows of {ikey}{sep}{ckey}.")
    items = [(row, path.parent / r[ikey].strip() if r[ikey].strip() else None, r[ckey]) for row, r in records]
    keep, skipped = _filter_rows(items, skip_bad, str(path))
    rows = [items[k][0] for k in keep]
    if lkey in cols:
        labels, names = _parse_labels([records[k][1][lkey] for k in keep], rows, str(path))
    else:
        labels, names = [-1] * len(keep), None
    return ImageTextDataset(paths=[items[k][1] for k in keep], captions=[items[k][2].strip() for k in keep],
                            labels=torch.tensor(labels, dtype=torch.long), classnames=names, rows=rows,
                            preprocess=preprocess, seed=seed, skipped=skipped)


def _from_folder(root: Path, preprocess: PreprocessCfg, seed: int, skip_bad: bool) -> ImageTextDataset:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; an image folder needs one subfolder per class "
                        f"({root}/<class_name>/<image files>).")
    items, labels = [], []
    for c, d in enumerate(classes):
        files = sorted(p for p in d.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
        if not files:
            raise DataError(f"{d}: class folder has no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                            "add images or remove the folder.")
        items += [(f"{root} file {p.relative_to(root)}", p, None) for p in files]
        labels += [c] * len(files)
    keep, skipped = _filter_rows(items, skip_bad, str(root))
    return ImageTextDataset(paths=[items[k][1] for k in keep], labels=torch.tensor([labels[k] for k in keep]),
                            classnames=[d.name.replace("_", " ") for d in classes], rows=[items[k][0] for k in keep],
                            preprocess=preprocess, seed=seed, skipped=skipped)


def load_dataset(source: str | Path | None, split: str = "train", *, image_size: int = 32, in_channels: int = 3,
                 seed: int = 0, skip_bad: bool = False, caption_key: str | None = None, image_key: str | None = None,
                 label_key: str | None = None, preprocess: PreprocessCfg | None = None,
                 sep: str | None = None) -> ImageTextDataset:
    """Build a dataset from None / "animal-mnist" (embedded), a .csv/.tsv file, or an image folder.

    split ("train", "val", "test", "all") picks the fixed stratified 80/10/10 split of the default data; user
    files and folders are used whole (split ignored). Images come out as (in_channels, image_size, image_size).
    caption_key / image_key / label_key name CSV columns (defaults: caption or title, filepath, label); sep is the
    table's one-character separator (default: a tab for .tsv, else a comma; open_clip's --csv-separator).
    preprocess: how to turn images into tensors, e.g. a checkpoint's record (``clipcore.checkpoint.preprocess_of``);
    it overrides image_size and in_channels. None: the source's own default at image_size / in_channels
    (:func:`default_preprocess` for the embedded data, ``PreprocessCfg.for_files`` for files), which the
    returned dataset's ``preprocess_cfg`` records for the checkpoint.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {SPLITS}.")
    if preprocess is None:
        if in_channels not in (1, 3):
            raise DataError(f"in_channels={in_channels!r}: use 1 (grey) or 3 (RGB).")
        if int(image_size) < 1:
            raise DataError(f"image_size={image_size!r}: use a positive number of pixels.")
    default = source is None or str(source) == "animal-mnist"
    if preprocess is None:
        preprocess = (default_preprocess if default else PreprocessCfg.for_files)(int(image_size), in_channels)
    if default:
        return _default(split, preprocess, seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, preprocess, seed, skip_bad)
    if path.suffix.lower() in (".csv", ".tsv"):
        if not path.is_file():
            raise DataError(f"{path}: CSV/TSV file not found; check the path given as data source.")
        if sep is not None and len(sep) != 1:
            raise DataError(f"separator {sep!r}: use one character (e.g. ',' or a tab; --csv-separator '\\t').")
        return _from_table(path, preprocess, seed, skip_bad, caption_key, image_key, label_key, sep)
    raise DataError(f"data source {str(source)!r} is {'not a folder' if path.suffix else 'not found'}"
                    f"{' and has an unknown extension' if path.suffix else ''}; accepted: None or 'animal-mnist' "
                    "(embedded default), a .csv/.tsv file (columns filepath, caption/title[, label]), or a folder "
                    "with one subfolder of images per class.")


# ---------------------------------------------------------------------------------------------- batching
def caption_id(caption: str) -> int:
    """A stable non-negative 62-bit id of a caption string (blake2b; Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(caption.encode(), digest_size=8).digest(), "little") >> 2


def collate(batch: list[tuple[Tensor, str, int]], tokenizer: Callable[[list[str]], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Items -> images (B, C, H, W), tokens (B, L) = tokenizer(captions), labels (B,) long.

    If any label is -1 (unlabelled data) the labels become caption identities: equal caption strings get equal
    ids, so a multi-positive InfoNCE treats identical captions as positives rather than as negatives. The id is a
    hash of the caption (not its position in the batch), so the slices of one global batch on different ranks
    agree on it when they are gathered (clipcore.distributed).
    """
    images, captions, labels = zip(*batch)
    if any(lab < 0 for lab in labels):
        labels = [caption_id(c) for c in captions]
    return torch.stack(images), tokenizer(list(captions)), torch.tensor(labels, dtype=torch.long)


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of one epoch: permutation from torch.Generator seeded by seed * 1_000_003 + epoch.

    Yields batches start_batch, start_batch + 1, ... so a resumed run skips batches without loading them;
    len() is the number of remaining batches. With world_size W > 1 (torchrun), batch_size is the global batch
    and rank r gets rows [r B/W, (r+1) B/W) of each: the ranks' slices are disjoint, together they are the
    1-process batch, and the order depends only on (seed, epoch), so resume is exact on any number of ranks.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int = 0, start_batch: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise DataError(f"--batch-size {batch_size!r}: use a positive batch size.")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise DataError(f"--batch-size {batch_size} (the global batch) must be a multiple of the {world_size} "
                            f"processes (rank {rank}); change --batch-size or --nproc_per_node.")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch, self.shuffle, self.drop_last = start_batch, shuffle, drop_last
        self.rank, self.world_size = rank, world_size

    def total_batches(self) -> int:
        """Batches in the whole epoch (ignoring start_batch)."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.total_batches() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        b = self.batch_size
        local = b // self.world_size
        for k in range(self.start_batch, self.total_batches()):
            batch = order[k * b:(k + 1) * b]
            yield batch if self.world_size == 1 else batch[self.rank * local:(self.rank + 1) * local]


def make_loader(dataset: ImageTextDataset, tokenizer: Callable[[list[str]], Tensor], batch_size: int, *,
                seed: int = 0, epoch: int = 0, start_batch: int = 0, shuffle: bool = True, drop_last: bool = True,
                num_workers: int = 0, rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """DataLoader for one epoch of (images, tokens, labels) batches, resumable at start_batch; under torchrun
    pass rank and world_size (``clipcore.distributed.world_rank()``) to get this rank's slice of each batch."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                                shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=partial(collate, tokenizer=tokenizer))
