"""webdataset shards: writer round trip, rank/worker split, exact resume position, bad samples, training."""
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import torch
import pytest
from PIL import Image

from clipcore.data import DataError
from clipcore.shards import ShardSource, count_shards, main as shards_main, write_shards
from clipcore.tokenizer import build_tokenizer
from clipcore.train import TrainConfig, train

N, PER_SHARD = 48, 6   # 8 shards


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """48 pairs with distinct captions: a CSV of small PNGs whose caption names their colour and index."""
    root = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    rows = ["filepath,caption,label"]
    for i in range(N):
        arr = np.clip(rng.normal(100, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
        arr[..., i % 3] = 230
        Image.fromarray(arr).save(root / f"{i}.png")
        rows.append(f"{i}.png,picture number {i} in {['red', 'green', 'blue'][i % 3]},{i % 3}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def shards(csv_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    shards_main(["write", "--from", str(csv_data), "--out", str(out), "--per-shard", str(PER_SHARD)])
    return out


def _pattern(folder):
    return str(folder / "{00000..00007}.tar")


def _captions(loader, tok=None):
    """The caption ids of each batch, decoded back through the tokenizer's token rows (as tuples)."""
    return [[tuple(r) for r in tokens.tolist()] for _, tokens, _ in loader]


def test_writer_round_trip(shards, csv_data):
    assert json.loads((shards / "sizes.json").read_text()) == {f"{k:05d}.tar": PER_SHARD for k in range(8)}
    with tarfile.open(shards / "00000.tar") as t:
        names = sorted(t.getnames())
    assert names[:3] == ["000000000.cls", "000000000.png", "000000000.txt"]   # integer labels: no json
    src = ShardSource(_pattern(shards), image_size=8, seed=0)
    tok = build_tokenizer("bpe", 16)
    batches = list(src.loader(tok, 8, epoch=0))
    assert src.steps_per_epoch(8) == 6 == len(batches)
    images, tokens, labels = batches[0]
    assert images.shape == (8, 3, 8, 8) and tokens.shape == (8, 16) and set(labels.tolist()) <= {0, 1, 2}
    seen = sorted(r for b in _captions(batches, tok) for r in b)
    assert len(set(seen)) == N   # every sample once per epoch


def test_a_preprocessing_record_is_applied_to_shards(shards, csv_data):
    """ShardSource(preprocess=) (an --init checkpoint's record) reads images as the CSV read with the same record."""
    from clipcore.data import load_dataset
    from clipcore.images import PreprocessCfg
    cfg = PreprocessCfg(8, 3, (0.5,) * 3, (0.5,) * 3, "bilinear", "whole")
    src = ShardSource(_pattern(shards), image_size=32, seed=0, shuffle_buffer=0, preprocess=cfg)
    assert src.preprocess_cfg == cfg
    images, tokens, _ = next(iter(src.loader(build_tokenizer("bpe", 16), 48, epoch=0)))
    ds = load_dataset(csv_data, preprocess=cfg)
    want = {tuple(t): ds[i][0] for i, t in enumerate(build_tokenizer("bpe", 16)(ds.captions).tolist())}
    for x, t in zip(images, tokens.tolist()):
        torch.testing.assert_close(x, want[tuple(t)])


def test_ranks_and_workers_split_without_overlap_and_resume_exactly(shards):
    tok = build_tokenizer("bpe", 16)
    src = ShardSource(_pattern(shards), image_size=8, seed=3)
    for world, workers in ((1, 2), (2, 0), (2, 2)):
        steps = src.steps_per_epoch(12, world, workers)
        per_rank = [_captions(src.loader(tok, 12, epoch=1, rank=r, world_size=world, num_workers=workers), tok)
                    for r in range(world)]
        assert all(len(b) == steps for b in per_rank)
        rows = [r for b in per_rank for batch in b for r in batch]
        assert len(rows) == len(set(rows)) == steps * 12          # disjoint across ranks and batches
        for r in range(world):
            resumed = _captions(src.loader(tok, 12, epoch=1, start_batch=2, rank=r, world_size=world,
                                           num_workers=workers), tok)
            assert resumed == per_rank[r][2:]                        # no repeat, no skip
    again = _captions(src.loader(tok, 12, epoch=1), tok)
    assert again == _captions(src.loader(tok, 12, epoch=1), tok) != _captions(src.loader(tok, 12, epoch=2), tok)


def test_corrupt_sample_is_counted_skipped_and_named(shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(8):
        (bad / f"{k:05d}.tar").write_bytes((shards / f"{k:05d}.tar").read_bytes())
    (bad / "sizes.json").write_text((shards / "sizes.json").read_text().replace('"00003.tar": 6', '"00003.tar": 7'))
    with tarfile.open(bad / "00003.tar", "a") as t:          # one more sample, its image is garbage
        for name, data in (("zzz.png", b"not a png"), ("zzz.txt", b"a broken picture")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    src = ShardSource(_pattern(bad), image_size=8, shuffle_buffer=1)
    with pytest.warns(UserWarning, match=r"00003\.tar sample zzz: skipped"):
        rows = [r for b in _captions(src.loader(build_tokenizer("bpe", 16), 6), None) for r in b]
    assert src.skipped == 1 and len(rows) == N


def test_missing_sizes_and_shards_are_named(shards, tmp_path):
    with pytest.raises(DataError, match="not found"):
        ShardSource(str(tmp_path / "{00000..00001}.tar"), image_size=8)
    (tmp_path / "00000.tar").write_bytes((shards / "00000.tar").read_bytes())
    with pytest.raises(DataError, match="sizes.json"):
        ShardSource(str(tmp_path / "00000.tar"), image_size=8)
    shards_main(["count", str(tmp_path / "00000.tar")])
    assert ShardSource(str(tmp_path / "00000.tar"), image_size=8).num_samples == PER_SHARD


def test_train_on_shards_resumes_exactly(shards, tmp_path):
    cfg = dict(train_data=_pattern(shards), batch_size=8, warmup=1, log_every=1, epochs=2)
    full = train(TrainConfig(logs=str(tmp_path), name="a", **cfg))
    train(TrainConfig(logs=str(tmp_path), name="b", max_steps=4, **cfg))
    rest = train(TrainConfig(logs=str(tmp_path), name="b", resume="latest", **cfg))
    assert full["steps"] == 12 and rest["losses"] == full["losses"][4:]


# ----------------------------------------------------------------------------- sample counts and sizes.json
def _copy(shards, folder, sizes=None):
    folder.mkdir()
    for k in range(8):
        (folder / f"{k:05d}.tar").write_bytes((shards / f"{k:05d}.tar").read_bytes())
    (folder / "sizes.json").write_text(sizes if sizes is not None else (shards / "sizes.json").read_text())
    return folder


def _cut_after(path, samples):
    """Truncate a shard at the tar member boundary after its first ``samples`` samples (3 members each): tar
    reads such a file without an error, so nothing but the sample count shows the loss."""
    with tarfile.open(path) as t:
        last = t.getmembers()[3 * samples - 1]
    end = last.offset_data + -(-last.size // 512) * 512
    path.write_bytes(path.read_bytes()[:end])


def test_truncated_shard_and_wrong_sizes_are_named_while_training(shards, tmp_path):
    cut = _copy(shards, tmp_path / "cut")
    _cut_after(cut / "00003.tar", 3)
    with pytest.warns(UserWarning, match=rf"1 of 8 shards are cut short .*first: {cut / '00003.tar'}"):
        src = ShardSource(_pattern(cut), image_size=8, shuffle_buffer=1)
    with pytest.warns(UserWarning) as rec:
        batches = list(src.loader(build_tokenizer("bpe", 16), 6))
    text = [str(w.message) for w in rec]
    assert any(m.startswith(f"{cut / '00003.tar'}: 3 samples, but sizes.json beside it lists 6") for m in text), text
    assert any("ran out after 7 of the 8 batches" in m for m in text), text
    assert len(batches) == 7 and src.miscounted == {str(cut / "00003.tar"): 3}
    low = _copy(shards, tmp_path / "low", json.dumps({f"{k:05d}.tar": 5 if k == 2 else 6 for k in range(8)}))
    src = ShardSource(_pattern(low), image_size=8, shuffle_buffer=1)
    with pytest.warns(UserWarning, match=r"00002\.tar: more than the 5 samples sizes.json beside it lists"):
        list(src.loader(build_tokenizer("bpe", 16), 6))


def test_count_reports_truncation_and_overwrites_only_with_write(shards, tmp_path, capsys):
    cut = _copy(shards, tmp_path / "cut")
    _cut_after(cut / "00003.tar", 3)
    before = (cut / "sizes.json").read_text()
    with pytest.raises(SystemExit) as e:
        shards_main(["count", _pattern(cut)])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and (cut / "sizes.json").read_text() == before          # not rewritten
    row = next(line for line in out.splitlines() if "00003.tar" in line).split()
    assert row[1:5] == ["6", "3", "-3", "truncated:"] and "no end-of-archive marker" in out
    assert "1 of 8 shards are damaged or disagree with sizes.json" in err and "--write" in err
    assert all(line.split()[1:4] == ["6", "6", "+0"] for line in out.splitlines()[1:] if "00003" not in line)
    shards_main(["count", _pattern(cut), "--write"])
    assert json.loads((cut / "sizes.json").read_text())["00003.tar"] == 3


def test_malformed_sizes_json_is_a_data_error(shards, tmp_path):
    for text, why in (("{'00000.tar': 6,}", "not valid JSON"), ("[6, 6]", "expected a JSON object"),
                      ('{"00000.tar": "6"}', "'00000.tar' has '6' samples")):
        folder = tmp_path / f"m{len(why)}"
        folder.mkdir()
        (folder / "00000.tar").write_bytes((shards / "00000.tar").read_bytes())
        (folder / "sizes.json").write_text(text)
        with pytest.raises(DataError, match=rf"sizes\.json: {why}.*clipcore\.shards count .*--write"):
            ShardSource(str(folder / "00000.tar"), image_size=8)
        with pytest.raises(DataError, match=why):
            count_shards(str(folder / "00000.tar"))
        shards_main(["count", str(folder / "00000.tar"), "--write"])              # replaces the broken file
        assert ShardSource(str(folder / "00000.tar"), image_size=8).num_samples == PER_SHARD


@pytest.mark.parametrize("argv", [["clipcore.shards", "count", "no/such/{00000..00001}.tar"],
                                  ["clipcore.shards", "write", "--from", "no/such.csv", "--out", "x"]])
def test_cli_user_errors_are_one_line_without_traceback(argv, tmp_path):
    p = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(f"{argv[0]}: error: "), p.stderr


def test_writer_keeps_sixteen_bit_and_float_images(tmp_path):
    """Images re-encoded for a shard keep their values: a 16-bit TIFF stays 16-bit, a float one is rescaled (the
    PNG writer refuses mode F; WebP silently clipped it to 0/1)."""
    dark = (np.arange(16 * 16).reshape(16, 16) * 13 % 3000).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    Image.fromarray(np.full((16, 16), 0.75, np.float32)).save(tmp_path / "float.tif")
    (tmp_path / "d.csv").write_text("filepath,caption\ndark.tif,a dark frame\nfloat.tif,a float frame\n")
    for fmt, atol in (("png", 1e-4), ("webp", 0.02)):
        out = tmp_path / fmt
        shards_main(["write", "--from", str(tmp_path / "d.csv"), "--out", str(out), "--image-format", fmt])
        src = ShardSource(str(out / "00000.tar"), image_size=16, in_channels=1, shuffle_buffer=1)
        x = {c: img * 0.5 + 0.5 for img, c, _ in src.samples([0], __import__("random").Random(0), skip=0)}
        assert torch.allclose(x["a float frame"], torch.full((1, 16, 16), 0.75), atol=atol)
        want = torch.from_numpy(dark / 65535).float()
        if fmt == "png":   # 16-bit PNG: exact
            assert torch.allclose(x["a dark frame"][0], want, atol=atol)
        else:              # 8-bit lossy WebP: the level survives
            assert abs(x["a dark frame"].mean() - want.mean()) < 0.01


def test_resume_at_the_end_of_an_epoch_yields_nothing(shards):
    """3 ranks: rank 0's slot holds 18 samples but every slot yields the smallest slot's 6 batches of 2; a stream
    resumed at batch 6 must stop, not read on into rank 0's 3 extra batches."""
    src = ShardSource(_pattern(shards), image_size=8)
    tok = build_tokenizer("bpe", 16)
    assert src.steps_per_epoch(6, 3) == 6 and len(list(src.loader(tok, 6, rank=0, world_size=3))) == 6
    assert list(src.loader(tok, 6, start_batch=6, rank=0, world_size=3)) == []


def test_write_keeps_existing_shards_unless_overwrite(csv_data, tmp_path):
    out = tmp_path / "out"
    shards_main(["write", "--from", str(csv_data), "--out", str(out), "--per-shard", "24"])
    before = (out / "00000.tar").read_bytes()
    with pytest.raises(DataError, match=r"already holds shards.*--overwrite"):
        write_shards(str(csv_data), out, 48)
    assert (out / "00000.tar").read_bytes() == before and sorted(p.name for p in out.iterdir()) == [
        "00000.tar", "00001.tar", "sizes.json"]
    write_shards(str(csv_data), out, 48, overwrite=True)          # one shard now: the stale 00001.tar goes
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "sizes.json"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": N}
    with pytest.raises(DataError, match=r"--out .*sizes\.json is a file"):
        write_shards(str(csv_data), out / "sizes.json", 48)
