"""GRAIN: box utilities, Hungarian matcher, losses, model, zero-shot modes, and the plug-in (clipcore.methods.grain)."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipcore.methods.grain.annotations import RegionBatch
from clipcore.errors import ConfigError
from clipcore.evaluate import encode_texts, zero_shot_classifier
from clipcore.methods import grain
from clipcore.methods.grain.boxes import (box_iou, box_loss, cxcywh_to_xyxy, giou, hungarian_match, match_cost,
                                          xyxy_to_cxcywh)
from clipcore.models import get_config
from clipcore.tokenizer import WordTokenizer


# ----------------------------------------------------------------------------- boxes
def test_giou_hand_computed():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    # overlap 1, union 7, enclosing 3 x 3 = 9: 1/7 - 2/9
    assert giou(a, torch.tensor([1.0, 1.0, 3.0, 3.0])).item() == pytest.approx(1 / 7 - 2 / 9)
    assert giou(a, a).item() == pytest.approx(1.0)
    # disjoint side by side: IoU 0, union 2 (1 + 1), enclosing 3 -> -1/3
    assert giou(torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([2.0, 0.0, 3.0, 1.0])).item() == pytest.approx(-1 / 3)
    # nested: IoU = 1/4, enclosing = union -> GIoU = IoU
    assert giou(a, torch.tensor([0.0, 0.0, 1.0, 1.0])).item() == pytest.approx(0.25)
    assert box_iou(a, torch.tensor([1.0, 1.0, 3.0, 3.0])).item() == pytest.approx(1 / 7)


def test_giou_pairwise_broadcast_matches_loop_and_box_conversions_invert():
    g = torch.Generator().manual_seed(0)
    a = cxcywh_to_xyxy(torch.rand(4, 4, generator=g) * 0.5 + 0.1)
    b = cxcywh_to_xyxy(torch.rand(3, 4, generator=g) * 0.5 + 0.1)
    pair = giou(a[:, None], b[None])
    assert pair.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert pair[i, j] == pytest.approx(giou(a[i], b[j]).item(), abs=1e-6)
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(a)), a, atol=1e-6)


def _brute_force(cost: np.ndarray) -> float:
    """Minimum total cost over all injective maps of the n targets (columns) to the Q queries (rows)."""
    q, n = cost.shape
    return min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(q), n))


def test_hungarian_matches_brute_force_over_permutations():
    g = torch.Generator().manual_seed(1)
    b, q, t = 24, 5, 5
    pred, tgt = torch.rand(b, q, 4, generator=g) * 0.5 + 0.2, torch.rand(b, t, 4, generator=g) * 0.5 + 0.2
    mask = torch.arange(t)[None] < (torch.arange(b) % (t + 1))[:, None]       # 0..5 targets per image
    cost = match_cost(pred, tgt)
    bi, qi, ti = hungarian_match(cost, mask)
    for i in range(b):
        n = int(mask[i].sum())
        sel = bi == i
        assert sel.sum() == n and len(set(qi[sel].tolist())) == n and sorted(ti[sel].tolist()) == list(range(n))
        if n:
            assert cost[i, qi[sel], ti[sel]].sum().item() == pytest.approx(_brute_force(cost[i, :, :n].numpy()), abs=1e-4)


def test_match_cost_is_5_l1_minus_2_giou():
    p, t = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), torch.tensor([[[0.55, 0.5, 0.2, 0.3]]])
    want = 5 * (p - t).abs().sum() - 2 * giou(cxcywh_to_xyxy(p[0, 0]), cxcywh_to_xyxy(t[0, 0]))
    assert match_cost(p, t)[0, 0, 0].item() == pytest.approx(want.item())


def test_box_loss_value_and_empty_targets():
    pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]], requires_grad=True)
    tgt = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.2]]])
    m = (torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    loss, parts = box_loss(pred, tgt, m, n_targets=2, scale=1.5)
    l1 = (pred[0, 1] - tgt[0, 1]).abs().sum() / 2
    lg = (1 - giou(cxcywh_to_xyxy(pred[0, 1]), cxcywh_to_xyxy(tgt[0, 1]))) / 2
    assert loss.item() == pytest.approx(1.5 * (l1 + lg).item(), rel=1e-5)
    empty = torch.zeros(0, dtype=torch.long)
    zero, _ = box_loss(pred, tgt, (empty, empty, empty), n_targets=0)
    zero.backward()
    assert zero.item() == 0.0 and torch.all(pred.grad == 0)


# ----------------------------------------------------------------------------- losses on a small model
def _small(**opts):
    cfg = get_config("grain-xs", tokenizer="word", text__vocab_size=40, text__context_length=8)
    mcfg = grain.Config(decoder_width=32, decoder_layers=2, decoder_ffn=64, dropout=0.0, **opts)
    torch.manual_seed(0)
    return grain.GrainModel(cfg, mcfg), mcfg


def _batch(n_boxes: list[int], t: int = 5) -> RegionBatch:
    g = torch.Generator().manual_seed(2)
    b = len(n_boxes)
    mask = torch.arange(t)[None] < torch.tensor(n_boxes)[:, None]
    texts = [f"t{i}" for i in range(b + t)]
    region_text = torch.where(mask, b + (torch.arange(t)[None] + torch.arange(b)[:, None]) % t, torch.tensor(-1))
    boxes = torch.where(mask[..., None], torch.rand(b, t, 4, generator=g) * 0.4 + 0.2, torch.tensor(0.0))
    tokens = torch.randint(4, 40, (len(texts), 8), generator=g)
    tokens[:, -1] = 2
    return RegionBatch(torch.randn(b, 3, 32, 32, generator=g), tokens, torch.arange(b), boxes, region_text, mask,
                       torch.full((b,), -1), texts)


@pytest.mark.parametrize("n_boxes", [[0, 0, 0], [1, 0, 0], [5, 5, 5], [0, 1, 5]])
@pytest.mark.parametrize("opts", [{}, {"match": "similarity"}, {"lambda_desc_global": 1.0, "aux_loss": True}])
def test_loss_gradients_finite_with_zero_one_five_targets(n_boxes, opts):
    model, mcfg = _small(**opts)
    batch = _batch(n_boxes)
    out = model(batch.images)
    loss, logs = grain.grain_loss(out, batch, model.encode_text(batch.tokens), model.logit_scale_value(), mcfg)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.queries.grad.abs().sum() > 0
    if sum(n_boxes) and mcfg.match == "box":
        assert model.box_head[0].weight.grad.abs().sum() > 0 and logs["targets"] == sum(n_boxes)


def test_region_description_loss_count_trick_equals_duplicate_columns():
    g = torch.Generator().manual_seed(3)
    regions = F.normalize(torch.randn(2, 3, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    region_text = torch.tensor([[1, 2, 1], [3, 1, -1]])            # "1" appears on three boxes
    mask = region_text >= 0
    match = (torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([0, 1, 0]))
    got = grain.region_description_loss(regions, text, region_text, mask, match, torch.tensor(10.0))
    cols = text[region_text[mask]]                                  # every instance a column, duplicates included
    b, q, j = match
    logits = 10.0 * regions[b, q] @ cols.T
    target = torch.tensor([list(region_text[mask]).index(region_text[i, k]) for i, k in zip(b, j)])
    assert got.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    masked = grain.region_description_loss(regions, text, region_text, mask, match, torch.tensor(10.0), True)
    assert masked.item() < got.item()


def test_model_follows_the_clip_interface():
    model, _ = _small()
    tok = WordTokenizer(["a", "red", "blue", "circle"], context_length=8)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out["global"].shape == (3, 48) and out["regions"].shape == (3, 5, 48) and out["boxes"].shape == (3, 5, 4)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    assert torch.allclose(model.encode_image(x).norm(dim=-1), torch.ones(3), atol=1e-5)
    clf = zero_shot_classifier(model, tok, ["red circle", "blue circle"], ["a {c}"])
    assert clf.shape == (2, 48)
    assert model.logit_scale_value().item() == pytest.approx(1 / 0.07, rel=1e-5)


# ----------------------------------------------------------------------------- zero-shot with descriptions
def test_connective_follows_the_official_rule():
    assert grain.connective("a red circle") == "which is"
    assert grain.connective("has a red circle") == "which"
    assert grain.connective("red circle which is striped") == "which has"


def test_zero_shot_scores_fusion_formula():
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    reg = F.normalize(torch.randn(4, 5, 6, generator=g), dim=-1)
    cls = torch.randn(3, 6, generator=g)
    desc = F.normalize(torch.randn(3, 2, 6, generator=g), dim=-1)
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    assert torch.allclose(grain.zero_shot_scores(img, cls), img @ cls.T)
    got = grain.zero_shot_scores(img, cls, reg, desc, mask, alpha=0.5)
    want = torch.empty(4, 3)
    for n in range(4):
        for c in range(3):
            best = torch.stack([max(reg[n, k] @ desc[c, m] for m in range(2) if mask[c, m]) for k in range(5)])
            want[n, c] = 0.5 * img[n] @ cls[c] + 0.5 * best.mean()
    assert torch.allclose(got, want, atol=1e-5)


def test_class_embeddings_modes_and_renorm():
    model, _ = _small()
    tok = WordTokenizer.from_texts(["a photo of zorb blib which is has red blue circle"], 8)
    names, descs = ["zorb", "blib"], [["a red circle", "has a blue circle"], ["a blue circle"]]
    for mode in ("name", "name+desc", "desc"):
        raw = grain.class_embeddings(model, tok, names, descs, ["a photo of {c}"], mode)
        ren = grain.class_embeddings(model, tok, names, descs, ["a photo of {c}"], mode, renorm=True)
        assert raw.shape == (2, 48) and torch.allclose(ren, F.normalize(raw, dim=-1), atol=1e-6)
    one = encode_texts(model, tok, ["a photo of blib which is a blue circle"])[0]
    assert torch.allclose(grain.class_embeddings(model, tok, names, descs, ["a photo of {c}"], "name+desc")[1], one, atol=1e-6)


def test_build_trains_a_step_and_evaluates_on_a_small_partworld():
    from clipcore.train import TrainConfig
    cfg = TrainConfig(method="grain", model="grain-xs", batch_size=32, seed=0)
    task = grain.build(cfg, grain.Config(world_train=64, world_test_per_class=1, decoder_width=32, decoder_layers=1, decoder_ffn=64), "cpu")
    assert task.steps_per_epoch == 2 and task.eval_splits == ("test",)
    batch = next(iter(task.loader(0, 0)))
    loss, logs = task.step(batch)
    loss.backward()
    assert math.isfinite(loss.item()) and {"ic", "box", "rd"} <= logs.keys()
    m = task.evaluate("test")
    assert list(m)[0] == "acc1" and 0 <= m["novel/name+desc/acc"] <= 1 and 0 <= m["grounding/box_iou50"] <= 1
    # the checkpoint the loop writes loads back through clipcore.methods.load_model (what clipcore.eval uses)
    import dataclasses
    import tempfile
    from clipcore.checkpoint import save_atomic
    from clipcore.methods import load_model
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/grain.pt"
        save_atomic({"model": task.model.state_dict(), "method": "grain", "train_config": dataclasses.asdict(cfg),
                     **task.meta}, path)
        model, tokenizer, ckpt = load_model(path)
        from clipcore.eval import evaluate_checkpoint   # the held-out PartWorld regenerated, every mode reported
        ev = evaluate_checkpoint(path)
    assert isinstance(model, grain.GrainModel) and ckpt["method"] == "grain"
    assert ckpt["preprocess"]["resize_mode"] == "whole" and ev["primary"] == "all/name+desc/acc"
    assert ev["all/name/acc"] == m["all/name/acc"] and ev["all/fusion0.5/acc"] == m["all/fusion0.5/acc"]
    x = batch.images[:2]
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), task.model.encode_image(x))


def test_cli_trains_on_a_written_partworld(tmp_path):
    """`python -m clipcore.methods.grain.partworld DIR` then `python -m clipcore.train --method grain --train-data DIR/annotations.jsonl`:
    the annotation-file path of the loader, the test split read back from test.jsonl/classes.json, the loop's
    checkpoint, and clipcore.eval's loader on it."""
    from clipcore.methods import load_model
    from clipcore.methods.grain.partworld import main as write_world
    from clipcore.train import parse_args, train
    write_world([str(tmp_path / "pw"), "--n-train", "48", "--n-test-per-class", "1"])
    cfg = parse_args(["--method", "grain", "--model", "grain-xs", "--train-data", str(tmp_path / "pw" / "annotations.jsonl"),
                      "--batch-size", "16", "--epochs", "1", "--grain-decoder-width", "32", "--grain-decoder-layers", "1",
                      "--grain-decoder-ffn", "64", "--warmup", "1", "--logs", str(tmp_path / "logs"), "--device", "cpu",
                      "--grain-val-size", "16"])      # 16 of the 48 rows held out for the validation loss
    out = train(cfg)
    assert out["run_dir"].endswith("grain_annotations_s0")
    assert 0 <= out["novel/name+desc/acc"] <= 1 and 0 <= out["grounding/box_iou50"] <= 1   # the held-out metrics
    # 32 rows / 16: one epoch of 2 steps, then the final weights' validation loss (no check came due mid-run)
    assert out["plateau/checks"] == 1.0 and out["plateau/steps"] == 2.0 and out["plateau/best_step"] == 2.0
    model, _, ckpt = load_model(f"{out['run_dir']}/checkpoints/latest.pt")
    assert isinstance(model, grain.GrainModel) and ckpt["step"] == 2


# ----------------------------------------------------------------------------- training to a plateau
def test_plateau_stops_after_patience_and_restores_the_best_weights():
    from clipcore.methods.grain.plateau import Plateau
    model = torch.nn.Linear(2, 1)
    losses = iter([3.0, 2.0, 2.05, 1.999, 2.5, 9.0])      # checks at steps 2, 4, 6, 8, 10: improvement only at 4
    seen = []

    def val_loss() -> float:
        seen.append(model.weight.detach().clone())
        return next(losses)
    p = Plateau(model, val_loss, every=2, patience=3, min_delta=0.01)   # 1.999 < 2.0 but not by min_delta
    loader = p.wrap(lambda epoch, start: iter(range(4)))                # 4 batches per epoch
    handed = []
    for epoch in range(5):
        for b in loader(epoch, 0):
            handed.append((epoch, b))
            with torch.no_grad():
                model.weight += 1.0                                     # "the update" of this batch
    # checks at steps 2, 4 (best), 6, 8, 10 -> the third check without improvement (step 10) stops it
    assert p.stopped and [s for s, _ in p.history] == [2, 4, 6, 8, 10] and len(handed) == 10
    assert handed[-1] == (2, 1) and all(e <= 2 for e, _ in handed)      # later epochs hand out nothing
    torch.testing.assert_close(model.weight, seen[1])                   # the weights of the step-4 check
    assert p.state() == {"plateau/reached": 1.0, "plateau/best_step": 4.0, "plateau/best_val_loss": 1.999,
                         "plateau/steps": 10.0, "plateau/checks": 5.0}
    never = Plateau(model, lambda: 1.0, every=1, patience=0)            # patience 0: tracks, never stops
    assert len(list(never.wrap(lambda e, s: iter(range(5)))(0, 0))) == 5 and not never.stopped
    with pytest.raises(ValueError):
        Plateau(model, lambda: 1.0, every=0, patience=1)


def test_grain_trains_to_a_plateau_in_the_loop(tmp_path):
    """--grain-val-size / --grain-patience through clipcore.train: a PartWorld "val" draw of seen classes; with a
    learning rate too small to move the validation loss by min_delta the run stops after `patience` checks (the
    Task's ``finished``: no empty epochs after it, a completed run) and reports where it stopped."""
    from clipcore.methods.grain.partworld import PartWorld, PartWorldConfig
    w = PartWorld(PartWorldConfig(n_train=32, n_test_per_class=1), seed=3)
    val, train_ = w.sample("val", 16), w.sample("train", 16)
    assert w.seen[val.labels].all() and not np.array_equal(val.images, train_.images)
    from clipcore.train import TrainConfig, train
    opts = dict(world_train=64, world_test_per_class=1, decoder_width=32, decoder_layers=1, decoder_ffn=64,
                val_size=32, val_every=1, patience=2, min_delta=1e-3)
    cfg = TrainConfig(method="grain", model="grain-xs", options=opts, batch_size=32, epochs=3, lr=1e-9, warmup=0,
                      seed=0, logs=str(tmp_path), log_every=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)        # an empty epoch's mean loss ("Mean of empty slice")
        out = train(cfg)
    assert out["stopped"] == "completed"
    assert out["steps"] == 3 and out["plateau/reached"] == 1.0 and out["plateau/best_step"] == 1.0   # of 6 planned
    assert out["plateau/checks"] == 3.0 and 0 <= out["novel/name+desc/acc"] <= 1
    with pytest.raises(ConfigError, match="val-size"):
        grain.Config(patience=3)
