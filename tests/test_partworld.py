"""PartWorld (clipcore.methods.grain.partworld): determinism, class structure, novel split, annotations, domains, files on disk."""
import json
import subprocess
import sys

import numpy as np
import pytest

from clipcore.methods.grain.annotations import load_annotations
from clipcore.methods.grain.partworld import COLOURS, DOMAINS, PartWorld, PartWorldConfig, part_phrase

CFG = PartWorldConfig(n_train=300, n_test_per_class=1)


@pytest.fixture(scope="module")
def world():
    return PartWorld(CFG, seed=0)


def test_deterministic_per_seed(world):
    a, b = world.sample("train", 50), PartWorld(CFG, seed=0).sample("train", 50)
    assert np.array_equal(a.images, b.images) and a.records == b.records and np.array_equal(a.parts, b.parts)
    other = PartWorld(CFG, seed=1)
    assert other.classnames != world.classnames


def test_sibling_groups_differ_in_exactly_one_part(world):
    assert len(world.classes) == 200 and len(set(world.classnames)) == 200
    assert len({c.parts for c in world.classes}) == 200
    for g in range(CFG.n_groups):
        members = [c for c in world.classes if c.group == g]
        assert len(members) == 4 and len({c.seen for c in members}) == 1
        varying = {k for k in range(3) if len({m.parts[k] for m in members}) > 1}
        assert len(varying) == 1


def test_novel_classes_never_in_training_text_or_images(world):
    assert (~world.seen).sum() == CFG.novel_groups * CFG.group_size
    s = world.sample("train")
    assert world.seen[s.labels].all()
    novel = {c.name for c in world.classes if not c.seen}
    words = {w for r in s.records for t in [r["caption"], r["aug_caption"], *(x["description"] for x in r["regions"])]
             for w in t.replace(",", " ").split()}
    assert not novel & words
    assert {c.name for c in world.classes if c.seen} & words                   # seen names do occur


def test_annotations_follow_the_generators(world):
    s = world.sample("train")
    regions = [x for r in s.records for x in r["regions"]]
    true = {part_phrase(p) for c in world.classes for p in c.parts}
    kept = [x for x in regions if x["score"] >= 0.3]
    assert all(x["description"] in true for x in kept) and any(x["score"] < 0.3 for x in regions)
    per_image = [sum(x["score"] >= 0.3 for x in r["regions"]) for r in s.records]
    assert 0.7 < np.mean(per_image) / 3 < 0.9                                   # drop probability 0.2
    generic = np.mean([world.classes[c].name not in r["caption"] for c, r in zip(s.labels, s.records)])
    assert 0.2 < generic < 0.4
    assert all(any(col in r["aug_caption"] or pat in r["aug_caption"] for col in COLOURS for pat in ("striped", "dotted", "solid"))
               for r in s.records)
    assert all(len(c.descriptors) == 3 for c in world.classes)


def test_clean_part_boxes_contain_their_colour(world):
    s = world.sample("test")
    hits = []
    for img, lab, boxes in zip(s.images, s.labels, s.parts):
        for (shape, colour, pattern), (x1, y1, x2, y2) in zip(world.classes[lab].parts, boxes * 32):
            crop = img[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))].reshape(-1, 3) / 255
            hits.append(np.abs(crop - np.array(COLOURS[colour])).max(1).min() < 0.15)
    assert np.mean(hits) > 0.9                                                  # later parts may cover earlier ones


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_render_the_same_classes(world, domain):
    s = world.sample("test", domain=domain)
    assert s.images.shape == (200, 32, 32, 3) and s.images.dtype == np.uint8
    photo = world.sample("test")
    assert np.array_equal(s.labels, photo.labels)
    if domain == "sketch":
        assert np.median(s.images) == 255                                       # white paper
    if domain != "photo":
        assert not np.array_equal(s.images, photo.images)


def test_write_roundtrips_through_the_loader(tmp_path):
    w = PartWorld(PartWorldConfig(n_train=20, n_test_per_class=1, n_groups=4, novel_groups=1), seed=0)
    path = w.write(tmp_path)
    ds = load_annotations(path, image_size=32)
    assert len(ds) == 20 and ds[0][0].shape == (3, 32, 32)
    test = [json.loads(x) for x in open(tmp_path / "test.jsonl")]
    assert len(test) == 16 and all(len(r["parts"]) == 3 and "label" in r for r in test)
    table = json.loads((tmp_path / "classes.json").read_text())
    assert [c["name"] for c in table["classes"]] == w.classnames and table["templates"]


@pytest.mark.parametrize("args", [["out", "--n-train", "0"], ["out", "--image-size", "3"], ["a_file"]])
def test_cli_user_errors_are_one_line_without_traceback(args, tmp_path):
    (tmp_path / "a_file").write_text("")
    p = subprocess.run([sys.executable, "-m", "clipcore.methods.grain.partworld", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipcore.methods.grain.partworld: error: "), p.stderr
    assert not (tmp_path / "out").exists()
