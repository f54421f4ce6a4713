"""Exact gradient accumulation (--accum-freq K, GradCache): K chunks give the full batch's loss and gradients."""
import contextlib

import pytest
import torch

from clipcore import distributed
from clipcore.losses import make_loss
from clipcore.models import CLIP, get_config
from clipcore.train import TrainConfig, train

FAST = dict(batch_size=32, warmup=2, log_every=1, epochs=1, model="tiny-vit")


def _setup():
    torch.manual_seed(0)
    cfg = get_config("tiny-vit", embed_dim=32, vision__width=32, vision__layers=2, vision__image_size=8,
                     vision__patch_size=4, text__width=32, text__layers=2, text__context_length=8)
    model = CLIP(cfg).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(1, 100, (32, 8), generator=g),
             torch.randint(0, 6, (32,), generator=g))
    loss_fn = make_loss("reg", impl="fused", reg_lambda=0.2)

    def embed(b):
        img, txt, scale = model(b[0], b[1])
        return img, txt, scale, b[2]

    def loss_from_embeddings(img, txt, scale, labels):
        return loss_fn(img, txt, scale, labels=labels), {}

    return model, batch, embed, loss_from_embeddings


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("k", [4, 32])
def test_k_chunks_equal_one_full_batch_fp64(k):
    model, batch, embed, loss_from_embeddings = _setup()
    loss1, _ = loss_from_embeddings(*embed(batch))
    loss1.backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    loss, _ = distributed.grad_cache_step(distributed.Runner(model), embed, loss_from_embeddings, batch, k,
                                          contextlib.nullcontext, lambda l: l.backward())
    assert loss.item() == pytest.approx(loss1.item(), rel=1e-13)
    got = _grads(model)
    assert got.keys() == full.keys() and "logit_scale" in got   # the logit scale's gradient too
    for n in full:
        torch.testing.assert_close(got[n], full[n], rtol=1e-10, atol=1e-13, msg=n)


def test_dropout_masks_are_replayed():
    """The re-run of a chunk must draw the masks of its no-grad pass (else its cached gradient belongs to another
    mask): with dropout, one chunk run through GradCache equals the plain backward from the same seed."""
    model, batch, embed, loss_from_embeddings = _setup()
    drop = torch.nn.Dropout(0.3)
    plain = embed
    embed = lambda b: (lambda i, t, s, y: (drop(i), t, s, y))(*plain(b))
    torch.manual_seed(5)
    loss1, _ = loss_from_embeddings(*embed(batch))   # one full-batch mask
    loss1.backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss, _ = distributed.grad_cache_step(distributed.Runner(model), embed, loss_from_embeddings, batch, 1,
                                          contextlib.nullcontext, lambda l: l.backward())
    assert loss.item() == pytest.approx(loss1.item(), rel=1e-13)
    for n in full:
        torch.testing.assert_close(_grads(model)[n], full[n], rtol=1e-10, atol=1e-13, msg=n)


def test_train_with_accum_matches_full_batch(tmp_path):
    """The training loop with --accum-freq 4 takes the steps of --accum-freq 1 (fp32: equal to rounding)."""
    a = train(TrainConfig(logs=str(tmp_path), name="k1", max_steps=3, **FAST))
    b = train(TrainConfig(logs=str(tmp_path), name="k4", max_steps=3, accum_freq=4, **FAST))
    assert b["losses"] == pytest.approx(a["losses"], rel=2e-5)
    c = train(TrainConfig(logs=str(tmp_path), name="gc", max_steps=3, accum_freq=4, grad_checkpointing=True, **FAST))
    assert c["losses"] == pytest.approx(a["losses"], rel=2e-5)


def test_accum_refuses_batch_norm_and_bad_chunks(tmp_path):
    with pytest.raises(ValueError, match="batch norm"):
        train(TrainConfig(logs=str(tmp_path), max_steps=1, accum_freq=2, **{**FAST, "model": "tiny"}))
    with pytest.raises(ValueError, match="must divide"):
        train(TrainConfig(logs=str(tmp_path), max_steps=1, accum_freq=5, **FAST))
