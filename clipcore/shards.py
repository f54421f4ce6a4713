"""webdataset shards: a streamed training source beside CSV and folders, and the tool that writes them.

    python -m clipcore.shards write --from train.csv --out shards/ --per-shard 1000     # or --from photos/
    python -m clipcore.train --train-data 'shards/{00000..00099}.tar' --dataset-type webdataset

A shard is a tar of samples ``<key>.{jpg,png,webp}`` + ``<key>.txt`` (caption), optionally ``<key>.cls``
(integer label) and ``<key>.json``, read with the webdataset library as open_clip does. ``sizes.json`` beside
the shards ({shard file name: samples}, open_clip's convention) gives the epoch length without reading the data;
the writer creates it. ``python -m clipcore.shards count 'shards/{00000..00099}.tar'`` reads the shards, prints
each one's count beside sizes.json's and adds the shards sizes.json lacks; it changes a listed count, or records a
damaged (truncated) shard's, only with ``--write``. Opening the shards warns about any that is cut short (no
tar end marker). While training, every shard read to its end is checked against sizes.json: a shard holding
fewer or more samples (truncated, or a wrong sizes.json) gets a warning naming it, as does a worker whose
shards run out before the batches sizes.json promised.

Order and resume. The shards are dealt to (rank, worker) slots once: shard s goes to slot s mod (W * workers).
Each epoch a slot reads its shards in an order drawn from (seed, epoch, slot) and mixes samples in a shuffle
buffer seeded the same way, then cuts batches of B / W. Every slot yields the same number of batches (the
smallest slot's, so a few samples of an epoch can be left out, as drop_last), and the DataLoader takes one batch
from each worker in turn, so batch k of an epoch is a fixed set of samples. Resuming at batch k re-reads each
slot's stream from the start of the epoch and drops the samples of the batches already taken, before decoding
them (reading, not decoding, the part of the epoch already done): resume repeats and skips nothing, provided
(1) the number of processes and --workers are those of the run that wrote the checkpoint (another layout deals
the shards differently) and (2) no bad sample lies before the resume point in that epoch: the drop counts
samples as stored, so each bad one there shifts the resumed stream by one sample (granularity: one sample per
bad sample; clean shards resume exactly).

A sample whose image does not decode, or that has no image or no caption, is counted, skipped and reported
with the shard's name in a warning; a shard that cannot be read at all is reported the same way.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcore.data import DataError, collate, load_dataset
from clipcore.images import ImageTransform, PreprocessCfg, to_canonical
from clipcore.errors import cli

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples mixed across a slot's shards (open_clip: 1000 per worker after shard shuffle)


def expand(urls: str) -> list[str]:
    """'shards/{00000..00009}.tar' (brace ranges; several patterns joined by '::') -> the list of shard paths."""
    import braceexpand
    return [u for part in urls.split("::") for u in braceexpand.braceexpand(part)]


class ShardSource:
    """Training batches from webdataset shards (see the module docstring for order, resume and bad samples).

    urls: a brace pattern, or several joined by '::'. Images come out as (in_channels, image_size, image_size)
    by ``preprocess`` (a :class:`clipcore.images.PreprocessCfg`, e.g. an --init checkpoint's), by default that
    of the CSV/folder sources (CLIP's statistics for RGB, 0.5/0.5 for grey; bicubic, centre crop).
    """

    def __init__(self, urls: str, *, image_size: int, in_channels: int = 3, seed: int = 0,
                 shuffle_buffer: int = SHUFFLE_BUFFER, preprocess: PreprocessCfg | None = None) -> None:
        self.shards = expand(urls)
        self.preprocess_cfg = preprocess or PreprocessCfg.for_files(image_size, in_channels)
        self.image_size, self.seed, self.shuffle_buffer = self.preprocess_cfg.image_size, seed, shuffle_buffer
        self.transform = ImageTransform(self.preprocess_cfg)
        self.sizes = self._sizes()
        self.num_samples = sum(self.sizes)
        cut = [s for s in self.shards if cut_short(s)]
        if cut:
            warnings.warn(f"{len(cut)} of {len(self.shards)} shards are cut short (no end-of-archive marker; first: "
                          f"{cut[0]}): the samples past the cut are lost and the epoch is shorter than sizes.json "
                          f"says. Rewrite them; see the counts with: python -m clipcore.shards count '{cut[0]}'",
                          stacklevel=2)
        self.skipped = 0   # bad samples met in this process (workers report theirs in warnings)
        self.miscounted: dict[str, int] = {}   # shard -> samples read, where that differs from sizes.json

    def _sizes(self) -> list[int]:
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.shards)} shards not found (first: {missing[0]}); check "
                            "the --train-data pattern, e.g. 'shards/{00000..00099}.tar'")
        found: dict[str, int] = {}
        for folder in {Path(s).parent for s in self.shards}:
            if (folder / "sizes.json").is_file():
                found.update({str(folder / k): v for k, v in read_sizes(folder / "sizes.json").items()})
        unknown = [s for s in self.shards if str(Path(s)) not in found]
        if unknown:
            raise DataError(f"{unknown[0]}: not listed in a sizes.json beside it, so the epoch length is unknown; "
                            f"write it with: python -m clipcore.shards count '{self.shards[0]}' ...")
        return [found[str(Path(s))] for s in self.shards]

    def _slots(self, world_size: int, num_workers: int) -> list[list[int]]:
        n = world_size * max(1, num_workers)
        if len(self.shards) < n:
            raise DataError(f"{len(self.shards)} shards cannot feed {world_size} processes x {max(1, num_workers)} "
                            "workers (each reads its own shards); write more, smaller shards (--per-shard) or lower --workers")
        return [list(range(k, len(self.shards), n)) for k in range(n)]

    def steps_per_epoch(self, batch_size: int, world_size: int = 1, num_workers: int = 0) -> int:
        """Global batches per epoch: every slot yields as many local batches as the smallest one can."""
        if batch_size % world_size:
            raise DataError(f"--batch-size {batch_size} (the global batch) must be a multiple of the {world_size} processes")
        local, w = batch_size // world_size, max(1, num_workers)
        per_slot = min(sum(self.sizes[s] for s in slot) // local for slot in self._slots(world_size, num_workers))
        return per_slot * w

    def loader(self, tokenizer, batch_size: int, *, epoch: int = 0, start_batch: int = 0, rank: int = 0,
               world_size: int = 1, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """(images, tokens, labels) batches of this rank for one epoch, from global batch ``start_batch`` on."""
        steps = self.steps_per_epoch(batch_size, world_size, num_workers)
        stream = _Stream(self, tokenizer, batch_size // world_size, epoch, start_batch, rank, world_size,
                         num_workers, steps // max(1, num_workers))
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)

    def samples(self, shard_ids: list[int], rng: random.Random, skip: int):
        """Decoded (image, caption, label) of the given shards in order, through the shuffle buffer; the first
        ``skip`` samples are dropped before decoding (resume)."""
        import webdataset as wds

        urls = [self.shards[i] for i in shard_ids]
        raw = wds.tarfile_to_samples(handler=self._bad_shard)({"url": u} for u in urls)
        raw = self._counted(raw, [(self.shards[i], self.sizes[i]) for i in shard_ids])
        for n, sample in enumerate(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(raw)):
            if n < skip:
                continue
            item = self._decode(sample)
            if item is not None:
                yield item

    def _counted(self, raw, listed: list[tuple[str, int]]):
        """Pass the raw samples of shards ``listed`` ((url, size in sizes.json), in reading order) through,
        warning about each shard that, read to its end, holds fewer samples, or that goes past its listed size."""
        pos, n = 0, 0            # the shard being read (index into listed) and its samples so far
        for sample in raw:
            url = sample.get("__url__")
            while pos < len(listed) and listed[pos][0] != url:   # shards before this one are complete
                self._check_count(*listed[pos], n)
                pos, n = pos + 1, 0
            n += 1
            if pos < len(listed) and n == listed[pos][1] + 1:
                self._check_count(*listed[pos], n)
            yield sample
        for url, size in listed[pos:]:
            self._check_count(url, size, n)
            n = 0

    def _check_count(self, url: str, listed: int, n: int) -> None:
        if n == listed or url in self.miscounted:
            return
        self.miscounted[url] = n
        if n < listed:
            what = (f"{n} samples, but sizes.json beside it lists {listed}: the shard is truncated or sizes.json is "
                    "wrong, so this epoch is shorter than announced")
        else:   # called as soon as the count passes the listed one
            what = (f"more than the {listed} samples sizes.json beside it lists: sizes.json is wrong, so the epoch "
                    "length leaves out samples the data hold")
        warnings.warn(f"{url}: {what}. Compare with: python -m clipcore.shards count '{url}'", stacklevel=2)

    def _decode(self, s: dict):
        where = f"{s.get('__url__')} sample {s.get('__key__')}"
        image = next((s[k] for k in IMAGE_KEYS if k in s), None)
        try:
            if image is None or "txt" not in s:
                raise ValueError(f"no {'image' if image is None else 'txt caption'}")
            with Image.open(io.BytesIO(image)) as im:
                x = self.transform(im)
            caption = s["txt"].decode("utf-8").strip()
            if not caption:
                raise ValueError("empty caption")
            label = int(s["cls"].decode()) if "cls" in s else -1
        except Exception as e:
            self.skipped += 1
            warnings.warn(f"{where}: skipped ({type(e).__name__}: {e}); {self.skipped} bad samples so far in this "
                          "process. Rewrite or remove the sample.", stacklevel=2)
            return None
        return x, caption, label

    def _bad_shard(self, exn: Exception) -> bool:
        self.skipped += 1
        warnings.warn(f"unreadable shard data, skipped ({type(exn).__name__}: {exn}); {self.skipped} bad so far "
                      "in this process. Rewrite the shard.", stacklevel=2)
        return True  # continue with the next sample or shard


class _Stream(torch.utils.data.IterableDataset):
    """One rank's batches of one epoch; in each DataLoader worker, that worker's slot (module docstring)."""

    def __init__(self, src: ShardSource, tokenizer, local_batch: int, epoch: int, start_batch: int, rank: int,
                 world_size: int, num_workers: int, batches_per_slot: int) -> None:
        self.src, self.tokenizer, self.local, self.epoch, self.start = src, tokenizer, local_batch, epoch, start_batch
        self.rank, self.world, self.workers, self.per_slot = rank, world_size, max(1, num_workers), batches_per_slot

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        slot = self.rank * self.workers + w
        shard_ids = self.src._slots(self.world, self.workers)[slot]
        rng = random.Random(f"{self.src.seed}/{self.epoch}/{slot}")
        rng.shuffle(shard_ids)
        # the DataLoader takes batches from workers 0, 1, ..., W-1, 0, ...: batch k is worker k mod W's (k // W)-th
        done = self.start // self.workers + (w < self.start % self.workers)
        if done >= self.per_slot:
            return
        batch = []
        for item in self.src.samples(shard_ids, rng, skip=done * self.local):
            batch.append(item)
            if len(batch) == self.local:
                yield collate(batch, self.tokenizer)
                batch, done = [], done + 1
                if done == self.per_slot:
                    return
        warnings.warn(f"epoch {self.epoch}: the shards of rank {self.rank} worker {w} ran out after {done} of the "
                      f"{self.per_slot} batches sizes.json promised (truncated shards or a wrong sizes.json, named "
                      "in the warnings above); this epoch ends early", stacklevel=2)


# ----------------------------------------------------------------------------- writing
def write_shards(source: str, out: str | Path, per_shard: int = 1000, *, image_format: str = "png",
                 overwrite: bool = False) -> list[Path]:
    """Write the pairs of a CSV/TSV file or image folder (clipcore.data sources) as shards ``out/NNNNN.tar``
    plus ``out/sizes.json``. Images are stored as their original file bytes when the format matches the
    extension, else re-encoded to ``image_format``; folder data get the caption "a photo of a <class>." and cls.

    A folder that already holds shards is written into only with overwrite (``--overwrite``); then the old
    shards the new set does not reuse are removed. Each shard is written under a temporary name and renamed
    when complete, and sizes.json comes last, so an interrupted run never leaves a half shard under a listed
    name."""
    import webdataset as wds

    if per_shard < 1:
        raise DataError(f"--per-shard {per_shard}: use a positive number of samples per shard")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder for the shards")
    old = sorted(out.glob("[0-9][0-9][0-9][0-9][0-9].tar")) if out.is_dir() else []
    if (old or (out / "sizes.json").exists()) and not overwrite:
        raise DataError(f"--out {out} already holds shards ({len(old)} .tar files and/or sizes.json); choose a new "
                        "folder, or pass --overwrite to replace them")
    ds = load_dataset(source, "all", image_size=1)     # paths, captions, labels; images are read here as bytes
    paths, sizes = [], {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(ds), per_shard):
            path = out / f"{start // per_shard:05d}.tar"
            idx = list(range(start, min(start + per_shard, len(ds))))
            captions = (ds.captions_at(idx) if ds.captions is not None
                        else [f"a photo of a {ds.classnames[int(ds.labels[i])]}." for i in idx])
            with wds.TarWriter(str(path) + ".partial") as tar:
                for i, caption in zip(idx, captions):
                    sample = {"__key__": f"{i:09d}", "txt": caption, **_image_bytes(ds.paths[i], image_format,
                                                                                   ds.rows[i])}
                    label = int(ds.labels[i])
                    if label >= 0:
                        sample["cls"] = str(label)
                        if ds.classnames:
                            sample["json"] = {"label": label, "classname": ds.classnames[label]}
                    tar.write(sample)
            os.replace(str(path) + ".partial", path)
            paths.append(path)
            sizes[path.name] = len(idx)
        for stale in set(old) - set(paths):
            stale.unlink()
        (out / "sizes.json.partial").write_text(json.dumps(sizes, indent=1))
        os.replace(out / "sizes.json.partial", out / "sizes.json")
    except OSError as e:
        raise DataError(f"cannot write shards into {out} ({type(e).__name__}: {e}); check the folder's "
                        "permissions and free space") from e
    return paths


STORABLE = {"png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "jpg": ("L", "RGB"), "webp": ("RGB", "RGBA")}


def _image_bytes(path: Path, image_format: str, row: str) -> dict[str, bytes]:
    """{extension: bytes}: the file itself when it is jpg/png/webp, else re-encoded to image_format.

    Modes the format cannot hold are converted as the reader would (clipcore.data.to_canonical): 16-bit and
    float images by their range, to 16-bit PNG (8-bit grey for jpg/webp); others to RGB, alpha onto white."""
    ext = path.suffix.lower().lstrip(".")
    if ext in ("jpg", "jpeg", "png", "webp"):
        return {"jpg" if ext == "jpeg" else ext: path.read_bytes()}
    buf = io.BytesIO()
    try:
        with Image.open(path) as im:
            if im.mode not in STORABLE[image_format]:
                im = to_canonical(im, 3)
                if im.mode == "F":
                    a = np.asarray(im)
                    im = (Image.fromarray((a * 65535).round().astype(np.uint16)) if image_format == "png"
                          else Image.fromarray((a * 255).round().astype(np.uint8), "L").convert("RGB"))
            im.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format])
    except Exception as e:  # PIL raises many types for bad files
        raise DataError(f"{row}: cannot decode image {path} ({type(e).__name__}: {e}); replace or remove the "
                        "file") from e
    return {image_format: buf.getvalue()}


def read_sizes(path: Path) -> dict[str, int]:
    """A sizes.json file -> {shard file name: samples}; DataError naming the file and the fix when malformed."""
    fix = f"fix it, or rebuild it with: python -m clipcore.shards count '{path.parent}/<shard pattern>' --write"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); {fix}") from e
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected a JSON object {{\"<shard>.tar\": samples}}, got "
                        f"{type(table).__name__}; {fix}")
    bad = [k for k, v in table.items() if type(v) is not int or v < 0]
    if bad:
        raise DataError(f"{path}: {bad[0]!r} has {table[bad[0]]!r} samples; each value must be a count >= 0; {fix}")
    return table


def _count_shard(path: str) -> tuple[int, str | None]:
    """-> samples in the shard as the reader sees them, and what is wrong with the file (None when whole)."""
    import webdataset as wds

    errors: list[Exception] = []
    n = sum(1 for _ in wds.tarfile_to_samples(handler=lambda e: errors.append(e) or False)([{"url": path}]))
    if errors:
        return n, f"unreadable after {n} samples ({type(errors[0]).__name__}: {errors[0]})"
    if cut_short(path):
        return n, "truncated: no end-of-archive marker (the file was cut short)"
    return n, None


def cut_short(path: str) -> bool:
    """True when a tar file lacks the two zero blocks that end every tar: it was cut short. (A file cut at a
    member boundary reads without any error; this reads its last KiB, so it is cheap to run on every shard.)"""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 1024))
        tail = f.read()
    return len(tail) < 1024 or bool(tail.strip(b"\0"))


def count_shards(urls: str, *, overwrite: bool = False) -> list[dict]:
    """Count the samples of each shard (reads them all) and compare with the sizes.json beside it.

    -> one row per shard: {"shard": path, "counted": n, "listed": n in sizes.json or None, "problem": None or
    what is wrong with the file (truncated, unreadable)}. Shards that sizes.json does not list and that read
    cleanly are added to it; a listed count that differs, or a damaged shard, is written only when overwrite
    (``--write``) is set, so a truncated shard never silently shortens the epoch (a malformed sizes.json is
    then replaced too).
    """
    paths = expand(urls)
    missing = [u for u in paths if not Path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} shards not found (first: {missing[0]}); check the pattern, "
                        "e.g. 'shards/{00000..00099}.tar'")
    tables: dict[Path, dict[str, int]] = {}
    for folder in {Path(u).parent for u in paths}:
        try:
            tables[folder] = read_sizes(folder / "sizes.json") if (folder / "sizes.json").is_file() else {}
        except DataError:
            if not overwrite:
                raise
            tables[folder] = {}
    rows, changed = [], set()
    for u in paths:
        folder, name = Path(u).parent, Path(u).name
        n, problem = _count_shard(u)
        listed = tables[folder].get(name)
        rows.append({"shard": u, "counted": n, "listed": listed, "problem": problem})
        if (listed is None and problem is None) or (overwrite and listed != n):
            tables[folder][name] = n
            changed.add(folder)
    if overwrite:
        changed |= set(tables)
    for folder in changed:
        (folder / "sizes.json.partial").write_text(json.dumps(tables[folder], indent=1))
        os.replace(folder / "sizes.json.partial", folder / "sizes.json")
    return rows


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clipcore.shards", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="CSV/TSV or image folder -> webdataset shards + sizes.json")
    w.add_argument("--from", dest="source", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--per-shard", type=int, default=1000)
    w.add_argument("--image-format", default="png", choices=("png", "jpg", "webp"),
                   help="for images not already png/jpg/webp")
    w.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    c = sub.add_parser("count", help="count the samples of existing shards, compare with sizes.json and add "
                                     "the shards it lacks")
    c.add_argument("urls")
    c.add_argument("--write", action="store_true",
                   help="also overwrite listed counts that differ and record damaged shards' counts")
    a = p.parse_args(argv)
    if a.cmd == "write":
        paths = write_shards(a.source, a.out, a.per_shard, image_format=a.image_format, overwrite=a.overwrite)
        pattern = Path(a.out) / ("{00000..%05d}.tar" % (len(paths) - 1))
        print(f"wrote {len(paths)} shards: --train-data '{pattern}' --dataset-type webdataset")
        return
    rows = count_shards(a.urls, overwrite=a.write)
    width = max(len(r["shard"]) for r in rows)
    print(f"{'shard':<{width}}  {'listed':>7}  {'counted':>7}  {'diff':>6}  problem")
    for r in rows:
        listed = "-" if r["listed"] is None else r["listed"]
        diff = "" if r["listed"] is None else f"{r['counted'] - r['listed']:+d}"
        print(f"{r['shard']:<{width}}  {listed:>7}  {r['counted']:>7}  {diff:>6}  {r['problem'] or ''}")
    bad = [r for r in rows if r["problem"] or (r["listed"] is not None and r["listed"] != r["counted"])]
    print(f"{len(rows)} shards, {sum(r['counted'] for r in rows)} samples", file=sys.stderr)
    if bad and not a.write:
        raise DataError(f"{len(bad)} of {len(rows)} shards are damaged or disagree with sizes.json (first: "
                        f"{bad[0]['shard']}, see the table); sizes.json keeps its entries for them. Rewrite damaged "
                        "shards (python -m clipcore.shards write), or pass --write to record the counts read.")


if __name__ == "__main__":
    main()
