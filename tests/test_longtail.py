"""Unit tests of theory/longtail.py, RECO's long-tail world (docs/methods.md, RECO §7): class kinds, the
long-tailed pretraining set, memory relevance, caption label noise, the clean (oracle) pairs, and the
near-duplicate check between memory and evaluation images."""
from __future__ import annotations

import torch

from clipcore.memory import MemoryBank
from theory.longtail import LongTail, LongTailConfig, near_duplicates

SMALL = LongTailConfig(groups=2, fine=8, head=2)


def test_class_kinds_partition_the_classes():
    w = LongTail(SMALL, seed=0)
    kinds = [set(w.classes(k).tolist()) for k in ("head", "train_rare", "eval_rare")]
    assert sum(map(len, kinds)) == w.C == 16 and set().union(*kinds) == set(range(16))
    assert kinds[2] == {5, 6, 7, 13, 14, 15} and set(w.classes("train").tolist()) == kinds[0] | kinds[1]


def test_pretraining_is_long_tailed_and_memory_relevance_is_the_share_of_evaluated_classes():
    w = LongTail(SMALL.replace(head_pretrain=30, rare_pretrain=2), seed=0)
    counts = torch.bincount(w.pretraining_classes(), minlength=w.C)
    assert (counts[w.is_head] == 30).all() and (counts[~w.is_head] == 2).all()
    g = torch.Generator().manual_seed(0)
    labels = w.memory_classes(1000, 0.05, g)
    assert int(torch.isin(labels, w.classes("eval_rare")).sum()) == 50
    assert not torch.isin(w.memory_classes(1000, 0.0, g), w.classes("eval_rare")).any()   # the irrelevant memory


def test_label_noise_names_a_head_sibling_and_clean_pairs_have_none():
    w = LongTail(SMALL.replace(label_noise=0.3), seed=1)
    g = torch.Generator().manual_seed(0)
    labels = w.classes("eval_rare").repeat(500)
    p = w.sample_pairs(labels, g)
    wrong = p.named != p.labels
    assert abs(wrong.float().mean().item() - 0.3) < 0.03                # every wrong name is another class
    assert w.is_head[p.named[wrong]].all() and (w.group_of[p.named] == w.group_of[p.labels]).all()
    start = w.cfg.groups                                                # the caption's name code follows the group
    torch.testing.assert_close(p.y[:, start:start + w.cfg.vis_dim], w.names[p.named])
    c = w.sample_pairs(labels, g, clean=True)
    assert torch.equal(c.named, c.labels)
    r = c.x - w.proto[labels]                        # no image noise: only the instance part A a is left
    q = torch.linalg.qr(w.inst_map)[0]
    assert (r - r @ q @ q.T).abs().max() < 1e-5
    r_noisy = p.x - w.proto[labels]
    assert (r_noisy - r_noisy @ q @ q.T).norm(dim=1).mean() > 0.5 * w.cfg.noise_image


def test_near_duplicates_counts_evaluation_images_with_a_memory_image_above_the_threshold():
    g = torch.Generator().manual_seed(0)
    mem = MemoryBank(torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g))
    ev = torch.randn(30, 16, generator=g)
    ev[:4] = mem.image[:4] + 1e-3 * torch.randn(4, 16, generator=g)      # 4 planted near-duplicates
    out = near_duplicates(mem, ev, 0.99)
    assert out["n_eval_with_dup"] == 4 and out["max_cos"] > 0.999 and out["median_cos"] < 0.9
    assert mem.dedup_against(torch.nn.functional.normalize(ev, dim=-1), 0.99)[1] == 4   # de-dup removes them
