"""Unit tests of theory/arfworld.py: the pool options of docs/methods.md, ARF §6 (pool_domains, pool_exclude_zs)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clipcore.methods.grain.partworld import DOMAINS
from theory.arfworld import ArfWorld, ArfWorldConfig

SMALL = ArfWorldConfig(n_groups=4, id_groups=2, image_size=8, n_pretrain=60, n_pool=300, n_finetune=2, n_test=2)


def _pool(seed=0, **opts):
    w = ArfWorld(dataclasses.replace(SMALL, **opts), seed)
    x, y, d = w.draw("pool")
    return w, x, y, d, w.rich_captions(y, d, "pool")


def test_default_options_give_the_same_pool():
    _, x, y, d, caps = _pool()
    _, x1, y1, d1, caps1 = _pool(pool_domains=None, pool_exclude_zs=False)
    _, x2, y2, d2, caps2 = _pool(pool_domains=DOMAINS)   # every domain named: the same support, the same draw
    for xx, yy, dd, cc in ((x1, y1, d1, caps1), (x2, y2, d2, caps2)):
        assert torch.equal(x, xx) and torch.equal(y, yy) and torch.equal(d, dd) and caps == cc
    # and the same as the draw before the options existed: plain integers over all classes and domains
    rng = np.random.default_rng([0, 12, 9])
    w = ArfWorld(SMALL, 0)
    assert np.array_equal(y.numpy(), rng.integers(len(w.classnames), size=SMALL.n_pool))
    assert np.array_equal(d.numpy(), rng.integers(len(DOMAINS), size=SMALL.n_pool))
    assert len(set(d.tolist())) == len(DOMAINS) and set(y.tolist()) & set(w.zs_classes.tolist())


def test_photo_only_pool_has_only_photos():
    w, x, y, d, caps = _pool(pool_domains=("photo",))
    assert len(y) == SMALL.n_pool and set(d.tolist()) == {DOMAINS.index("photo")}
    assert all(c.startswith("a photo of a ") for c in caps)
    assert set(y.tolist()) == set(range(len(w.classnames)))          # still all classes
    _, _, _, d2, _ = _pool(pool_domains=("sketch", "painting"))
    assert set(d2.tolist()) == {DOMAINS.index("sketch"), DOMAINS.index("painting")}
    # the other splits ignore the pool options
    a, b = ArfWorld(SMALL, 0), ArfWorld(dataclasses.replace(SMALL, pool_domains=("photo",), pool_exclude_zs=True), 0)
    for split in ("pretrain", "finetune"):
        assert all(torch.equal(u, v) for u, v in zip(a.draw(split), b.draw(split)))


def test_exclude_zs_pool_has_no_zero_shot_class():
    w, x, y, d, caps = _pool(pool_exclude_zs=True)
    zs = {w.classnames[c] for c in w.zs_classes}
    assert len(y) == SMALL.n_pool and not set(y.tolist()) & set(w.zs_classes.tolist())
    assert set(y.tolist()) == set(w.id_classes.tolist())
    assert not any(word in zs for c in caps for word in c.split())
    assert len(set(d.tolist())) == len(DOMAINS)
    # same seed, same pool; another seed, another one
    assert torch.equal(y, _pool(pool_exclude_zs=True)[2]) and not torch.equal(y, _pool(1, pool_exclude_zs=True)[2])
    _, _, y2, d2, _ = _pool(pool_exclude_zs=True, pool_domains=("photo",))
    assert not set(y2.tolist()) & set(w.zs_classes.tolist()) and set(d2.tolist()) == {0}


@pytest.mark.parametrize("opts, match", [
    ({"pool_domains": ()}, "pool_domains"),
    ({"pool_domains": ("photo", "cartoon")}, "pool_domains.*cartoon"),
    ({"pool_domains": "photo"}, "pool_domains"),
    ({"pool_domains": ("photo", "photo")}, "pool_domains"),
    ({"pool_exclude_zs": "yes"}, "pool_exclude_zs"),
])
def test_bad_pool_options_name_the_option(opts, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **opts)


def test_exclude_zs_without_id_classes_is_an_error():
    w = ArfWorld(dataclasses.replace(SMALL, id_groups=0, pool_exclude_zs=True), 0)
    with pytest.raises(ValueError, match="pool_exclude_zs"):
        w.draw("pool")


def test_name_rate_and_photo_noise():
    """name_rate: the share of rich captions naming their class (1: every caption, the captions of before);
    photo_noise: extra pixel noise on photos only (0: the images of before)."""
    w, x, y, d, caps = _pool()
    _, x1, _, _, caps1 = _pool(name_rate=1.0, photo_noise=0.0)
    assert caps == caps1 and torch.equal(x, x1)
    named = lambda cs, ys: np.mean([w.classnames[c] in t.split() for t, c in zip(cs, ys.tolist())])  # noqa: E731
    _, _, y3, _, caps3 = _pool(name_rate=0.3)
    assert named(caps, y) == 1.0 and 0.2 < named(caps3, y3) < 0.4
    assert all(t.startswith(f"a {DOMAINS[k]} of a ") for t, k in zip(caps3, d.tolist()))
    _, x4, y4, d4, _ = _pool(photo_noise=0.5)
    photo = d4 == DOMAINS.index("photo")
    assert torch.equal(y4, y) and torch.equal(x4[~photo], x[~photo]) and not torch.equal(x4[photo], x[photo])
    assert x4.min() >= -1 and x4.max() <= 1


@pytest.mark.parametrize("opts, match", [({"name_rate": 0.0}, "name_rate"), ({"name_rate": 1.5}, "name_rate"),
                                         ({"photo_noise": -0.1}, "photo_noise")])
def test_bad_world_options_name_the_option(opts, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **opts)
