"""The JSON-lines region-annotation loader (clipcore.methods.grain.annotations): box rules, caption mixing, batching, errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.methods.grain.annotations import collate_regions, from_records, load_annotations, parse_regions, region_loader
from clipcore.data import DataError
from clipcore.tokenizer import WordTokenizer


def _region(d, box, score=0.9):
    return {"description": d, "bbox": box, "score": score}


@pytest.fixture
def ann(tmp_path):
    """Two 64 x 32 (W x H) images and a valid annotation file."""
    for i in range(2):
        Image.fromarray(np.full((32, 64, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    lines = [
        {"image": "im0.png", "caption": "a photo of a zorbel", "aug_caption": "a thing with a red circle",
         "regions": [_region("red circle", [16, 8, 48, 24], 0.8), _region("blue bar", [0, 0, 10, 10], 0.2)]},
        {"image": "im1.png", "caption": "an object", "regions": []},
    ]
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def write(tmp_path, obj) -> str:
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "im0.png", "caption": "c", "regions": []}) + "\n"
                                        + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    return str(tmp_path / "bad.jsonl")


def test_boxes_rescaled_per_axis_to_normalised_cxcywh_and_threshold(ann):
    ds = load_annotations(ann, image_size=16)
    r = ds.regions[0]
    # x scaled by S/W, y by S/H, divided by S: [16/64, 8/32, 48/64, 24/32] -> cxcywh (0.5, 0.5, 0.5, 0.5)
    assert r.descriptions == ["red circle"] and np.allclose(r.boxes, [[0.5, 0.5, 0.5, 0.5]])
    assert len(ds.regions[1].descriptions) == 0                       # "blue bar" scored 0.2 < 0.3
    assert ds[0][0].shape == (3, 16, 16)                               # resized without crop
    assert len(load_annotations(ann, image_size=16, score_threshold=0.1).regions[0].descriptions) == 2


def test_top5_by_score_clipping_and_degenerate_boxes():
    raw = [_region(f"d{k}", [10 * k, 0, 10 * k + 10, 10], s) for k, s in enumerate([0.4, 0.9, 0.5, 0.8, 0.6, 0.7, 0.95])]
    raw.append(_region("outside", [200, 0, 220, 10], 0.99))             # entirely right of a 100 px image: dropped
    raw.append(_region("clipped", [-20, -10, 10, 10], 0.31))
    r = parse_regions(raw, (100, 50), where="x", max_regions=5)
    assert r.descriptions == ["d6", "d1", "d3", "d5", "d4"] and np.all(np.diff(r.scores) <= 0)
    r = parse_regions(raw[-1:], (100, 50), where="x")
    assert np.allclose(r.boxes, [[0.05, 0.1, 0.1, 0.2]])               # clipped to [0, 10] x [0, 10] of 100 x 50
    assert parse_regions([_region("- * red circle", [0, 0, 5, 5])], (10, 10), where="x").descriptions == ["red circle"]


@pytest.mark.parametrize("obj, words", [
    ("{not json", ["line 2", "not valid JSON"]),
    ({"image": "im0.png", "regions": []}, ["line 2", '"caption"']),
    ({"image": "im0.png", "caption": "c", "regions": [{"description": "x", "bbox": [1, 2, 3], "score": 1}]},
     ["line 2", "regions[0]", "four numbers"]),
    ({"image": "im0.png", "caption": "c", "regions": [_region("x", [5, 2, 3, 4])]}, ["line 2", "x2 > x1"]),
    ({"image": "im0.png", "caption": "c", "regions": [_region(" ", [1, 2, 3, 4])]}, ["line 2", "description"]),
    ({"image": "im0.png", "caption": "c", "regions": [_region("x", [1, 2, 3, 4], "high")]}, ["line 2", "score"]),
    ({"image": "im0.png", "caption": "c", "regions": [{"bbox": [1, 2, 3, 4], "score": 1}]}, ["line 2", "description"]),
    ({"image": "missing.png", "caption": "c", "regions": []}, ["line 2", "not found"]),
    ({"image": "im0.png", "caption": "c", "aug_caption": "", "regions": []}, ["line 2", "aug_caption"]),
    ({"image": "im0.png", "caption": "c", "regions": "none"}, ["line 2", "regions"]),
])
def test_errors_name_the_file_line_and_field(ann, obj, words):
    path = write(ann.parent, obj)
    with pytest.raises(DataError) as e:
        load_annotations(path, image_size=16)
    assert "bad.jsonl" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_caption_mix_is_50_50_and_deterministic_in_seed_and_epoch():
    n = 2000
    records = [{"caption": f"alt {i}", "aug_caption": f"aug {i}", "regions": []} for i in range(n)]
    ds = from_records(records, np.zeros((n, 8, 8, 3), np.uint8), image_size=8, seed=3)
    caps = [c for c, _ in ds.item_text(range(n))]
    assert 0.45 < np.mean([c.startswith("aug") for c in caps]) < 0.55
    assert caps == [c for c, _ in ds.item_text(range(n))]
    ds.set_epoch(1)
    assert caps != [c for c, _ in ds.item_text(range(n))]
    alt_only = from_records(records, np.zeros((n, 8, 8, 3), np.uint8), image_size=8, caption_mix=0.0)
    assert all(c.startswith("alt") for c, _ in alt_only.item_text(range(n)))


def test_no_aug_caption_always_uses_caption(ann):
    ds = load_annotations(ann, image_size=16)
    assert all(ds.item_text([1])[0][0] == "an object" for ds.epoch in range(10))


def test_collate_pads_boxes_and_deduplicates_texts():
    records = [{"caption": "same", "regions": [_region("a", [0, 0, 4, 4]), _region("b", [4, 4, 8, 8])]},
               {"caption": "same", "regions": [_region("a", [2, 2, 6, 6])]},
               {"caption": "other", "regions": []}]
    ds = from_records(records, np.zeros((3, 8, 8, 3), np.uint8), image_size=8)
    tok = WordTokenizer(["same", "other", "a", "b"], 6)
    b = collate_regions(ds.__getitems__([0, 1, 2]), tok, max_regions=5)
    assert b.boxes.shape == (3, 5, 4) and b.box_mask.sum(1).tolist() == [2, 1, 0]
    assert b.caption[0] == b.caption[1] != b.caption[2]                # identical captions share one text
    assert b.tokens.shape[0] == len(b.texts) == 4                      # same, a, b, other: each encoded once
    assert b.region_text[0, 0] == b.region_text[1, 0] and b.region_text[2].tolist() == [-1] * 5
    assert torch.allclose(b.boxes[1, 0], torch.tensor([0.5, 0.5, 0.5, 0.5]))
    loader = list(region_loader(ds, tok, 2, seed=0))
    assert len(loader) == 1 and loader[0].images.shape == (2, 3, 8, 8)


def test_shuffle_descriptions_permutes_within_an_image():
    records = [{"caption": "c", "regions": [_region(f"d{k}", [k, 0, k + 1, 1], 0.9 - 0.1 * k) for k in range(4)]}] * 50
    ds = from_records(records, np.zeros((50, 8, 8, 3), np.uint8), image_size=8, shuffle_descriptions=True)
    descs = [d for _, d in ds.item_text(range(50))]
    assert all(sorted(d) == ["d0", "d1", "d2", "d3"] for d in descs)
    assert sum(d != ["d0", "d1", "d2", "d3"] for d in descs) > 40


def test_sixteen_bit_images_keep_their_values_and_whole_frame(tmp_path):
    """GRAIN's annotation images go through clipcore.images (16-bit grey was clipped to white by convert("RGB")),
    resized whole (not centre-cropped) so that boxes relative to the image stay valid."""
    a = np.zeros((32, 64), np.uint16)
    a[:, 32:] = 30000                      # left half black, right half ~46% grey (white under convert("RGB"))
    Image.fromarray(a).save(tmp_path / "im16.png")         # uint16 -> mode I;16
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "im16.png", "caption": "c", "regions": []}) + "\n")
    ds = load_annotations(tmp_path / "a.jsonl", image_size=16)
    x = ds[0][0] * ds._std + ds._mean       # back to [0, 1]
    assert x.shape == (3, 16, 16)
    assert x[:, :, :6].max() < 0.02 and abs(x[:, :, 10:].mean().item() - 30000 / 65535) < 0.02   # not clipped to 1
