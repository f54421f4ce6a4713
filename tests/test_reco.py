"""clipcore.methods.reco: fusion modules, own-pair exclusion, gradients only in the fusion modules, search x fusion
modes, score mixing, the loss, and the plug-in end to end through clipcore.train."""
import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipcore.checkpoint import load, save_atomic
from clipcore.evaluate import retrieval_metrics, zero_shot_metrics
from clipcore.losses import contrastive_loss
from clipcore.memory import MemoryBank
from clipcore.methods import load_model, trainable_parameters
from clipcore.methods.reco import (RECO, AdapterMLP, Config, MLPFusion, TransformerFusion, fuser_params, make_task,
                                   precompute, reco_loss)
from clipcore.methods.reco import load as load_reco
from clipcore.models import CLIP, get_config
from clipcore.train import TrainConfig

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_clip(dx=12, dy=10, d=D, seed=0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(get_config("tiny", embed_dim=d, tokenizer="none", vision__kind="linear", vision__input_dim=dx,
                           text__kind="linear", text__input_dim=dy)).eval()


def _setup(n=200, seed=0, **opts):
    base = _linear_clip(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 12, generator=g), torch.randn(n, 10, generator=g)
    with torch.no_grad():
        bank = MemoryBank(base.encode_image(x), base.encode_text(y), labels=torch.arange(n) % 5)
    return base, bank, RECO(base, bank, Config(heads=4, **opts)), x, y


def test_fusion_modules_shapes_norm_and_parameter_count():
    u, r = F.normalize(torch.randn(5, D), dim=-1), torch.randn(5, 7, D)
    for mod in (TransformerFusion(D, heads=4, k=7), TransformerFusion(D, heads=4, k=7, output_token="cls", residual=True,
                                                                      type_embed=True, rank_embed=True),
                MLPFusion(D)):
        out = mod(u, r)
        assert out.shape == (5, D)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    # one pre-norm layer: (4 + 2 rho) d^2 + (9 + rho) d  (docs/methods.md, RECO §2); 3.15M at CLIP-B/32 width
    for d, rho in ((64, 4.0), (128, 1.0)):
        assert fuser_params(Config(mlp_ratio=rho), d) == (4 + 2 * rho) * d * d + (9 + rho) * d
    assert fuser_params(Config(), 512) == 3_152_384
    mlp, tel = fuser_params(Config(fuser="mlp"), 128), fuser_params(Config(), 128)
    assert abs(mlp / tel - 1) < 0.01                                  # the capacity control has the same size
    # MLPFusion starts as the identity on the query
    torch.testing.assert_close(MLPFusion(D)(u, r), u)


def test_adapter_capacity_control_sees_no_neighbour():
    """fuser="adapter" (the paper's capacity control): an MLP of the layer's size on the query alone; RECO does not
    search the memory for it, so the memory cannot change its embeddings, and it trains like the other fusers."""
    assert abs(fuser_params(Config(fuser="adapter"), 128) / fuser_params(Config(), 128) - 1) < 0.01
    u = F.normalize(torch.randn(5, D), dim=-1)
    torch.testing.assert_close(AdapterMLP(D)(u), u)                  # starts as the identity
    base, bank, model, x, _ = _setup(fuser="adapter", k=5)
    with torch.no_grad():
        for p in model.phi_image.parameters():
            p.add_(0.1 * torch.randn_like(p))
        other = MemoryBank(torch.randn(50, D), torch.randn(50, D))
        a = model.encode_image(x[:10])
        model.memory = other
        torch.testing.assert_close(model.encode_image(x[:10]), a)
        model.memory = None                                          # nothing is searched at all
        torch.testing.assert_close(model.encode_image(x[:10]), a)
        assert not torch.allclose(a, base.encode_image(x[:10]))      # yet it is not the base
    model.memory = bank
    pairs = precompute(model, bank.image, bank.text, bank.ids, bank)
    loss, _ = make_task(model, pairs, batch_size=32, seed=0).step(next(iter(make_task(model, pairs, batch_size=32,
                                                                                        seed=0).loader(0, 0))))
    loss.backward()
    assert all(p.grad is not None for p in model.phi_text.parameters())


def test_own_pair_is_excluded_from_both_neighbour_lists():
    base, bank, model, _, _ = _setup(k=5)
    pairs = precompute(model, bank.image, bank.text, bank.ids, bank)
    own = torch.arange(len(bank))[:, None]
    assert not (pairs.rows_image == own).any() and not (pairs.rows_text == own).any()
    # without exclusion the own pair is every query's first hit (cosine 1): the exclusion is not vacuous
    leak = precompute(model, bank.image, bank.text, None, bank)
    assert torch.equal(leak.rows_image[:, 0], own[:, 0]) and torch.equal(leak.rows_text[:, 0], own[:, 0])
    assert torch.equal(pairs.rows_image, bank.search(bank.image, 6)[1][:, 1:])     # the next 5, in order


def test_search_and_fusion_modes():
    """uni search ranks by the query's own modality, cross by the other; fusion picks the tokens' modality."""
    _, bank, _, _, _ = _setup()
    v = bank.image[:8]
    for search, by in (("uni", "image"), ("cross", "text")):
        m = RECO(_linear_clip(), bank, Config(heads=4, k=4, search=search))
        assert torch.equal(m.neighbours(v, "image"), bank.search(v, 4, by=by)[1])
    rows = bank.search(v, 4, by="image")[1]
    seen = {}
    for fusion in ("cross", "uni"):
        m = RECO(_linear_clip(), bank, Config(heads=4, k=4, fusion=fusion))
        spy = lambda u, r, f=fusion: seen.__setitem__(f, r) or u  # noqa: E731
        m.phi_image.forward = spy
        m.fuse(v, rows, "image")
    assert torch.equal(seen["cross"], bank.text[rows]) and torch.equal(seen["uni"], bank.image[rows])


def test_gradients_reach_only_the_fusion_modules():
    base, bank, model, _, _ = _setup(k=5)
    pairs = precompute(model, bank.image, bank.text, bank.ids, bank, labels=bank.labels)
    task = make_task(model, pairs, batch_size=32, seed=0)
    batch = next(iter(task.loader(0, 0)))
    loss, info = task.step(batch)
    loss.backward()
    assert set(info) >= {"nce_vbar_tbar", "nce_vbar_t", "nce_v_tbar", "logit_scale"}
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())
    for name in ("phi_image", "phi_text"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert model.logit_scale.grad is not None
    n_fuse = sum(p.numel() for p in model.phi_image.parameters()) * 2
    assert trainable_parameters(model) == n_fuse + 1                   # + the temperature
    model.train()
    assert model.training and not base.training                       # frozen towers stay in eval mode


def test_loader_is_deterministic_and_resumable():
    _, bank, model, _, _ = _setup()
    pairs = precompute(model, bank.image, bank.text, bank.ids, bank)
    task = make_task(model, pairs, batch_size=32, seed=3)
    full = list(task.loader(1, 0))
    assert len(full) == task.steps_per_epoch == 6
    assert all(torch.equal(a, b) for a, b in zip(full[2:], task.loader(1, 2)))
    assert not torch.equal(full[0], next(iter(task.loader(2, 0))))


def test_reco_loss_is_the_weighted_sum_of_three_nce_terms():
    g = torch.Generator().manual_seed(0)
    v, t, vb, tb = (F.normalize(torch.randn(8, D, generator=g), dim=-1) for _ in range(4))
    loss, parts = reco_loss(v, t, vb, tb, 10.0, lambdas=(1.0, 0.5, 2.0))
    ref = contrastive_loss(vb, tb, 10.0) + 0.5 * contrastive_loss(vb, t, 10.0) + 2.0 * contrastive_loss(v, tb, 10.0)
    torch.testing.assert_close(loss, ref)
    loss0, parts0 = reco_loss(v, t, vb, tb, 10.0, lambdas=(1.0, 0.0, 0.0))
    assert set(parts0) == {"nce_vbar_tbar"} and math.isclose(loss0.item(), parts["nce_vbar_tbar"], rel_tol=1e-6)


def test_encoders_alpha_mixing_and_evaluation_functions():
    """fuser=none gives the base embeddings exactly; alpha mixes refined and original cosines exactly; the
    refined encoders run through clipcore.evaluate's metric functions."""
    base, bank, model, x, y = _setup(k=5)
    none = RECO(base, bank, Config(heads=4, fuser="none"))
    with torch.no_grad():
        torch.testing.assert_close(none.encode_image(x[:10]), base.encode_image(x[:10]))
        a = 0.3
        mixed = RECO(base, bank, Config(heads=4, k=5, alpha=a))
        mixed.load_state_dict(model.state_dict())
        vi, ti = mixed.encode_image(x[:10]), mixed.encode_text(y[:10])
        vb, tb = model.encode_image(x[:10]), model.encode_text(y[:10])
        v, t = base.encode_image(x[:10]), base.encode_text(y[:10])
        torch.testing.assert_close(vi @ ti.T, a * vb @ tb.T + (1 - a) * v @ t.T)
        assert vi.shape == (10, 2 * D)
        m = zero_shot_metrics(vb, torch.arange(10) % 5, tb[:5])
        r = retrieval_metrics(vb, tb, torch.arange(10))
    assert 0 <= m["acc1"] <= 1 and 0 <= r["image_retrieval_recall@1"] <= 1


def test_config_validation():
    with pytest.raises(ValueError, match="search"):
        Config(search="both")
    with pytest.raises(ValueError, match="heads"):
        TransformerFusion(10, heads=4)


def test_cli_plugin_end_to_end(tmp_path):
    """A small frozen base checkpoint -> the CLI flags of `clipcore.train --method reco` -> the Task the loop runs
    (a few steps) -> held-out metrics with refined embeddings -> a checkpoint as the loop writes it -> load_reco
    gives the same encoders. (The loop itself is tested in test_train.py; its imports cost ~20 s here.)"""
    from clipcore.train import build_task, parse_args
    cfg = get_config("tiny", embed_dim=32, vision__kind="linear", vision__image_size=16, vision__in_channels=1,
                     text__width=32, text__layers=1, text__heads=2, text__context_length=16)
    torch.manual_seed(0)
    base = CLIP(cfg)
    save_atomic({"model": base.state_dict(), "model_config": dataclasses.asdict(cfg), "tokenizer": None},
                tmp_path / "base.pt")
    tc = parse_args(["--method", "reco", "--init", str(tmp_path / "base.pt"), "--batch-size", "256",
                     "--reco-k", "4", "--reco-heads", "4", "--reco-dedup", "0.999", "--device", "cpu"])
    assert tc.options == {"k": 4, "heads": 4, "dedup": 0.999}
    task = build_task(tc, torch.device("cpu"))
    assert task.steps_per_epoch == 8000 // 256 and task.eval_splits == ("val", "test")
    assert "3.15M per module" in task.describe
    opt = torch.optim.SGD([p for p in task.model.parameters() if p.requires_grad], lr=0.1)
    for _, batch in zip(range(3), task.loader(0, 0)):
        loss, _ = task.step(batch)
        opt.zero_grad(); loss.backward(); opt.step()
    out = task.evaluate("test")
    assert 0 <= out["acc1"] <= 1 and "image_retrieval_recall@1" in out and out["memory_removed"] >= 0
    assert 0 <= out["base/acc1"] <= 1 and "base/acc1" not in task.evaluate("val")   # the frozen base, held-out only
    path = tmp_path / "reco.pt"
    save_atomic({"model": task.model.state_dict(), "method": "reco", "train_config": dataclasses.asdict(tc),
                 **task.meta}, path)
    model, _ = load_reco(load(path), memory=task.model.memory)      # (memory=None re-embeds the 8000 train pairs: ~5 s)
    assert model.cfg.k == 4 and len(model.memory) == 8000
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), task.model.encode_image(x))
    assert task.meta["base"]["model_config"] == dataclasses.asdict(cfg) and task.meta["preprocess"]["image_size"] == 16
    legacy = {k: v for k, v in task.meta.items() if k not in ("base", "preprocess")}   # written before "base"
    save_atomic({"model": task.model.state_dict(), "method": "reco", "train_config": dataclasses.asdict(tc),
                 **legacy, "base_model_config": dataclasses.asdict(cfg)}, tmp_path / "old.pt")
    old, _ = load_reco(load(tmp_path / "old.pt"), memory=task.model.memory)
    with torch.no_grad():
        torch.testing.assert_close(old.encode_image(x), task.model.encode_image(x))
    model, _, ckpt = load_model(path)        # what clipcore.eval does: the memory re-embedded from train_config
    assert isinstance(model, RECO) and len(model.memory) == 8000
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), task.model.encode_image(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="--init"):
        build_task(TrainConfig(method="reco"), torch.device("cpu"))
