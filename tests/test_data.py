"""Tests of clipcore.data: embedded default, CSV/TSV, image folders, errors, collate, sampler, loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.data import (CAPTION_TEMPLATES, CLASSNAMES, ZS_TEMPLATES, DataError, EpochBatchSampler,
                           ImageTextDataset, caption_for, collate, load_dataset, make_loader)


def tok(captions: list[str]) -> torch.Tensor:
    """Stand-in tokenizer: first 12 characters as codes, (B, 12) long."""
    return torch.tensor([[ord(ch) for ch in c[:12].ljust(12)] for c in captions], dtype=torch.long)


def png(path, size=(10, 8), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture(scope="module")
def train() -> ImageTextDataset:
    return load_dataset(None, "train")


# ---------------------------------------------------------------------------------------------- default data
def test_default_items(train):
    img, cap, lab = train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert isinstance(cap, str) and isinstance(lab, int) and 0 <= lab < 10
    assert -1.0 - 1e-6 <= img.min() and img.max() <= 1.0 + 1e-6 and img.min() < -0.9   # black background -> -1
    assert train.classnames == list(CLASSNAMES) and len(CLASSNAMES) == 10
    assert train.labels.dtype == torch.long and set(train.labels.tolist()) == set(range(10))
    grey = load_dataset("animal-mnist", "test", image_size=28, in_channels=1)
    x = grey[5][0]
    assert x.shape == (1, 28, 28)
    assert torch.allclose((x + 1) / 2 * 255, (grey.images[5].float())[None], atol=1e-3)   # no resize at 28


def test_default_splits_disjoint_stratified_deterministic(train):
    parts = {s: load_dataset(None, s, seed=7) for s in ("val", "test")}
    parts["train"] = train
    assert {s: len(d) for s, d in parts.items()} == {"train": 8000, "val": 1000, "test": 1000}
    ids = {s: set(d.rows) for s, d in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert len(ids["train"] | ids["val"] | ids["test"]) == 10000 == len(load_dataset(None, "all"))
    for s, n in (("train", 800), ("val", 100), ("test", 100)):
        assert torch.bincount(parts[s].labels).tolist() == [n] * 10
    again = load_dataset(None, "test", seed=123)     # the split does not depend on the run seed
    assert again.rows == parts["test"].rows and torch.equal(again.images, parts["test"].images)


def test_default_captions_vary_and_name_class(train):
    idx = list(range(0, 8000, 20))
    caps = train.captions_at(idx)
    assert len(set(caps)) > 40
    for c, lab in zip(caps, train.labels[idx].tolist()):
        assert CLASSNAMES[lab] in c
    assert len(CAPTION_TEMPLATES) >= 16 and 6 <= len(ZS_TEMPLATES) <= 8
    assert all("{c}" in t for t in CAPTION_TEMPLATES + ZS_TEMPLATES)
    assert caption_for("a photo of a {c}.", "elephant") == "a photo of an elephant."
    assert caption_for("A {c} in silhouette.", "cat") == "A cat in silhouette."


def test_captions_depend_only_on_seed_epoch_index():
    a, b = load_dataset(None, "val", seed=0), load_dataset(None, "val", seed=0)
    idx = list(range(300))
    a.set_epoch(3), b.set_epoch(3)
    assert a.captions_at(idx) == b.captions_at(idx)
    assert a.captions_at(idx[::-1]) == a.captions_at(idx)[::-1]   # per index, not per position
    assert [a[i][1] for i in (7, 250)] == [a.captions_at(idx)[i] for i in (7, 250)]
    b.set_epoch(4)
    assert a.captions_at(idx) != b.captions_at(idx)
    reseeded = load_dataset(None, "val", seed=1)
    reseeded.set_epoch(3)
    assert a.captions_at(idx) != reseeded.captions_at(idx)


def test_getitems_fast_path(train):
    import time
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256].tolist()
    times = []
    for _ in range(20):
        t = time.perf_counter()
        train.__getitems__(idx)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.02, f"__getitems__(256) took {min(times) * 1e3:.1f} ms (expected ~1 ms)"


def test_getitems_equals_getitem(train):
    idx = [5, 17, 4000, 7999, 5]
    batch = train.__getitems__(idx)
    for i, (img, cap, lab) in zip(idx, batch):
        img1, cap1, lab1 = train[i]
        assert torch.equal(img, img1) and cap == cap1 and lab == lab1
    big = load_dataset(None, "val", image_size=40)
    big._cache = None                                  # the un-cached path resizes per batch: same numbers
    ref = load_dataset(None, "val", image_size=40)
    assert torch.allclose(torch.stack([b[0] for b in big.__getitems__([5, 17, 999])]),
                          torch.stack([b[0] for b in ref.__getitems__([5, 17, 999])]), atol=1e-6)
    assert torch.equal(ref[-1][0], ref[999][0])


# ---------------------------------------------------------------------------------------------- CSV / TSV
def test_csv_basic_relative_paths_and_int_labels(tmp_path):
    png(tmp_path / "img" / "a.png", size=(20, 10))
    png(tmp_path / "img" / "b.png", color=(0, 0, 255))
    (tmp_path / "d.csv").write_text('filepath,caption,label\nimg/a.png,"a red, wide box",1\nimg/b.png,a blue box,0\n')
    ds = load_dataset(str(tmp_path / "d.csv"), "test", image_size=16)
    assert len(ds) == 2 and ds.classnames is None and ds.labels.tolist() == [1, 0]
    img, cap, lab = ds[0]
    assert img.shape == (3, 16, 16) and cap == "a red, wide box" and lab == 1
    red = torch.tensor([200, 30, 30]) / 255.0
    assert torch.allclose(img[:, 8, 8], (red - torch.tensor(ds.mean)) / torch.tensor(ds.std), atol=1e-4)
    assert load_dataset(tmp_path / "d.csv", in_channels=1, image_size=8)[1][0].shape == (1, 8, 8)


def test_tsv_title_fallback_and_label_names(tmp_path):
    png(tmp_path / "x.png")
    png(tmp_path / "y.png")
    (tmp_path / "d.tsv").write_text("filepath\ttitle\tlabel\nx.png\ta dog, running\tdog\ny.png\ta cat\tcat\n"
                                    f"{tmp_path / 'x.png'}\tagain a dog\tdog\n")
    ds = load_dataset(str(tmp_path / "d.tsv"))
    assert ds.captions == ["a dog, running", "a cat", "again a dog"]
    assert ds.classnames == ["cat", "dog"] and ds.labels.tolist() == [1, 0, 1]


def test_csv_custom_keys_and_no_label(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "d.csv").write_text("img,text\nx.png,hello\n")
    ds = load_dataset(str(tmp_path / "d.csv"), image_key="img", caption_key="text")
    assert ds[0][1:] == ("hello", -1)


# ---------------------------------------------------------------------------------------------- folders
def test_image_folder(tmp_path):
    png(tmp_path / "polar_bear" / "1.png")
    png(tmp_path / "polar_bear" / "sub" / "2.jpg")
    png(tmp_path / "ant" / "1.PNG", mode="L", color=9)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), image_size=12, seed=3)
    assert ds.classnames == ["ant", "polar bear"] and ds.labels.tolist() == [0, 1, 1]
    img, cap, lab = ds[1]
    assert img.shape == (3, 12, 12) and "polar bear" in cap and lab == 1
    assert "an ant" in " ".join(load_dataset(str(tmp_path), seed=s).captions_at([0])[0] for s in range(20))


# ---------------------------------------------------------------------------------------------- errors
def test_error_missing_csv(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: CSV/TSV file not found"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_error_unknown_source(tmp_path):
    with pytest.raises(DataError, match=r"'.*nothing-here'.* accepted: None or 'animal-mnist'"):
        load_dataset(str(tmp_path / "nothing-here"))
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(DataError, match=r"d\.json.*unknown extension.*\.csv/\.tsv"):
        load_dataset(str(tmp_path / "d.json"))
    with pytest.raises(DataError, match="split='dev'"):
        load_dataset(None, "dev")


def test_error_missing_columns(tmp_path):
    (tmp_path / "d.csv").write_text("path,text\nx.png,hi\n")
    with pytest.raises(DataError, match=r"d\.csv: missing column.*'filepath'.*found columns \['path', 'text'\].*image_key="):
        load_dataset(str(tmp_path / "d.csv"))


def test_error_empty_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_dataset(str(tmp_path / "empty.csv"))
    (tmp_path / "head.csv").write_text("filepath,caption\n")
    with pytest.raises(DataError, match=r"head\.csv: no data rows"):
        load_dataset(str(tmp_path / "head.csv"))


def test_error_empty_caption(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\nx.png,  \n")
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 3\): empty caption"):
        load_dataset(str(tmp_path / "d.csv"))


def test_error_missing_image(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\ngone.png,hi\n")
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 3\): image file .*gone\.png not found"):
        load_dataset(str(tmp_path / "d.csv"))


def test_error_unreadable_image_at_build_time(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\nbad.png,hi\n")
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 3\): .*bad\.png is not a readable image.*--skip-bad"):
        load_dataset(str(tmp_path / "d.csv"))


def test_error_image_damaged_after_build_names_row(tmp_path):
    png(tmp_path / "x.png")
    png(tmp_path / "y.png")
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\ny.png,hi\n")
    ds = load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "y.png").write_bytes(b"damaged since")
    ds[0]
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 3\): cannot decode image .*y\.png.*replace or remove"):
        ds.__getitems__([0, 1])


def test_error_bad_label(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "d.csv").write_text("filepath,caption,label\nx.png,a,3\nx.png,b,dog\n")
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 3\): cannot parse label 'dog'"):
        load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "e.csv").write_text("filepath,caption,label\nx.png,a,cat\nx.png,b,\n")
    with pytest.raises(DataError, match=r"e\.csv data row 2 \(line 3\): cannot parse label ''"):
        load_dataset(str(tmp_path / "e.csv"))


def test_error_empty_folders(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=r"a: no class subfolders"):
        load_dataset(str(tmp_path / "a"))
    png(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match=r"flat: no class subfolders.*one subfolder per class"):
        load_dataset(str(tmp_path / "flat"))
    (tmp_path / "b" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"cat: class folder has no image files"):
        load_dataset(str(tmp_path / "b"))


# ---------------------------------------------------------------------------------------------- skip_bad
def test_skip_bad_records_and_warns(tmp_path):
    png(tmp_path / "x.png", size=(64, 64))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "d.csv").write_text("filepath,caption\nx.png,ok\nbad.png,a\nmissing.png,b\nx.png,\n"
                                    "trunc.png,c\nx.png,fine\n")
    with pytest.warns(UserWarning, match=r"d\.csv: skipped 4 of 6 bad rows.*data row 2"):
        ds = load_dataset(str(tmp_path / "d.csv"), skip_bad=True)
    assert len(ds) == 2 and ds.captions == ["ok", "fine"] and len(ds.skipped) == 4
    assert any("trunc.png" in s for s in ds.skipped) and any("empty caption" in s for s in ds.skipped)
    assert torch.stack([b[0] for b in ds.__getitems__([0, 1])]).shape == (2, 3, 32, 32)


def test_skip_bad_all_bad_still_raises(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "d.csv").write_text("filepath,caption\nbad.png,a\nmissing.png,b\n")
    with pytest.raises(DataError, match=r"d\.csv: all 2 rows are bad"):
        load_dataset(str(tmp_path / "d.csv"), skip_bad=True)
    (tmp_path / "f" / "dog").mkdir(parents=True)
    (tmp_path / "f" / "dog" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"all 1 rows are bad"):
        load_dataset(str(tmp_path / "f"), skip_bad=True)


# ---------------------------------------------------------------------------------------------- batching
def test_collate_labels_and_caption_identity():
    img = torch.zeros(3, 4, 4)
    x, t, y = collate([(img, "a cat", 2), (img, "a dog", 0)], tok)
    assert x.shape == (2, 3, 4, 4) and t.shape == (2, 12) and t.dtype == torch.long and y.tolist() == [2, 0]
    _, _, y = collate([(img, "b", -1), (img, "a", -1), (img, "b", -1), (img, "c", -1)], tok)
    # caption-hash ids: equal captions equal ids, and the same ids on every rank of a distributed batch
    assert y[0] == y[2] and len(set(y.tolist())) == 3 and (y >= 0).all()
    assert collate([(img, "b", -1)], tok)[2].tolist() == [y[0].item()]


def test_sampler_deterministic_resume_epochs():
    s = EpochBatchSampler(103, 10, seed=5, epoch=2)
    full = list(s)
    assert len(s) == len(full) == 10 and all(len(b) == 10 for b in full)
    assert full == list(EpochBatchSampler(103, 10, seed=5, epoch=2))
    assert len({i for b in full for i in b}) == 100
    tail = EpochBatchSampler(103, 10, seed=5, epoch=2, start_batch=7)
    assert len(tail) == 3 and list(tail) == full[7:]
    assert list(EpochBatchSampler(103, 10, seed=5, epoch=3)) != full
    assert list(EpochBatchSampler(103, 10, seed=6, epoch=2)) != full
    keep = list(EpochBatchSampler(103, 10, seed=5, shuffle=False, drop_last=False))
    assert len(keep) == 11 and keep[-1] == [100, 101, 102] and keep[0] == list(range(10))
    assert len(EpochBatchSampler(5, 10, seed=0, start_batch=3)) == 0


def test_make_loader_resume_matches_tail():
    ds = load_dataset(None, "val")
    full = list(make_loader(ds, tok, 64, seed=1, epoch=2))
    ds.set_epoch(0)
    tail = list(make_loader(ds, tok, 64, seed=1, epoch=2, start_batch=12))
    assert len(full) == 15 and len(tail) == 3
    for (x1, t1, y1), (x2, t2, y2) in zip(full[12:], tail):
        assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(y1, y2)
    x, t, y = full[0]
    assert x.shape == (64, 3, 32, 32) and x.is_contiguous() and t.shape == (64, 12) and y.shape == (64,)


def test_make_loader_worker_process(tmp_path):
    for i in range(6):
        png(tmp_path / f"{i}.png", color=(i * 40, 0, 0))
    (tmp_path / "d.csv").write_text("filepath,caption\n" + "".join(f"{i}.png,c{i % 3}\n" for i in range(6)))
    ds = load_dataset(str(tmp_path / "d.csv"), image_size=8)
    batches = list(make_loader(ds, tok, 3, seed=0, num_workers=1))
    ref = list(make_loader(ds, tok, 3, seed=0))
    assert len(batches) == 2
    for (x1, t1, y1), (x2, t2, y2) in zip(batches, ref):
        assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(y1, y2)
        assert len(set(y1.tolist())) <= 3       # unlabelled: caption identities (3 distinct captions)


def test_default_asset_matches_classnames():
    with np.load(__import__("clipcore.data", fromlist=["ASSET"]).ASSET) as z:
        assert tuple(z["classnames"].tolist()) == CLASSNAMES
        assert z["images"].shape == (10000, 28, 28) and z["images"].dtype == np.uint8
        assert z["labels"].dtype == np.int64 and np.bincount(z["labels"]).tolist() == [1000] * 10


def test_csv_bom_multiline_and_bad_encoding(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "d.csv").write_bytes('\ufefffilepath,caption\nx.png,"two\nlines"\nx.png,\n'.encode("utf-8"))
    with pytest.raises(DataError, match=r"d\.csv data row 2 \(line 4\): empty caption"):
        load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "e.csv").write_bytes(b"filepath,caption\nx.png,caf\xe9\n")
    with pytest.raises(DataError, match=r"e\.csv: not UTF-8"):
        load_dataset(str(tmp_path / "e.csv"))
