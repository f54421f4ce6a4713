"""The distributed path is exact: 2 gloo processes == 1 process on the same global batch.

Each check spawns 2 CPU processes (torch.multiprocessing, gloo), runs the code train.py runs under torchrun
(DDP around clipcore.distributed.Runner, the gathered loss, the rank-split sampler) and compares with one
process on the same global batch: in fp64 the loss and every parameter gradient agree to 1e-10 for 3 training
steps, for each loss form (fused / naive, local loss on / off) and with GradCache accumulation across ranks.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from clipcore import distributed
from clipcore.data import EpochBatchSampler
from clipcore.losses import make_loss
from clipcore.models import CLIP, get_config

B, STEPS = 16, 3
# (loss, impl, local_loss, accum_freq); the last form, without gather_with_grad, is open_clip's default
FORMS = [("multipos", "fused", True, 1), ("multipos", "naive", True, 1), ("clip", "fused", False, 1),
         ("reg", "naive", True, 1), ("multipos", "fused", True, 2)]
NO_GRAD_GATHER = ("clip", "naive", True, 1)


def _model() -> CLIP:
    torch.manual_seed(0)
    cfg = get_config("tiny-vit", embed_dim=32, vision__width=32, vision__layers=1, vision__image_size=8,
                     vision__patch_size=4, text__width=32, text__layers=1, text__context_length=8)
    return CLIP(cfg).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 100, (B, 8), generator=g)
    labels = torch.randint(0, 5, (B,), generator=g)  # repeated labels: multi-positive targets cross ranks
    return images, tokens, labels


def _train(rank: int, world: int, form: tuple, gather_with_grad: bool = True) -> list[tuple[float, dict]]:
    """STEPS SGD steps on the global batch (this rank's slice of it); -> [(loss, {name: grad})] per step."""
    name, impl, local, k = form
    model = _model()
    dd = distributed.Dist(rank=rank, world=world)
    runner = distributed.wrap(model, dd)
    loss_fn = make_loss(name, impl=impl, reg_lambda=0.3, local_loss=local, gather_with_grad=gather_with_grad)
    rows = next(iter(EpochBatchSampler(B, B, seed=0, shuffle=False, rank=rank, world_size=world)))
    batch = tuple(t[rows] for t in _batch())

    def embed(b):
        img, txt, scale = model(b[0], b[1])
        return img, txt, scale, b[2]

    def loss_from_embeddings(img, txt, scale, labels):
        return loss_fn(img, txt, scale, labels), {}

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        if k > 1:
            loss, _ = distributed.grad_cache_step(runner, embed, loss_from_embeddings, batch, k,
                                                  _null, lambda l: l.backward())
        else:
            loss, _ = runner(lambda b: loss_from_embeddings(*embed(b)), batch)
            loss.backward()
        out.append((distributed.mean_across(loss).item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return out


def _null():
    import contextlib
    return contextlib.nullcontext()


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dd = distributed.init("cpu")
    assert (dd.rank, dd.world) == (rank, world)
    results = {form: _train(rank, world, form) for form in FORMS}
    results["no-grad-gather"] = _train(rank, world, NO_GRAD_GATHER, gather_with_grad=False)
    torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("form", FORMS, ids=["-".join(map(str, f)) for f in FORMS])
def test_two_processes_equal_one_on_the_global_batch(two_ranks, form):
    single = _train(0, 1, form)
    for rank in range(2):
        for step, ((loss, grads), (loss1, grads1)) in enumerate(zip(two_ranks[rank][form], single)):
            assert loss == pytest.approx(loss1, rel=1e-12, abs=1e-12), (rank, step)
            for n in grads1:
                torch.testing.assert_close(grads[n], grads1[n], rtol=1e-10, atol=1e-12, msg=f"{n} rank {rank} step {step}")


def test_sampler_splits_every_global_batch_without_overlap():
    full = list(EpochBatchSampler(100, 20, seed=3, epoch=2))
    parts = [list(EpochBatchSampler(100, 20, seed=3, epoch=2, rank=r, world_size=4)) for r in range(4)]
    for k, batch in enumerate(full):
        assert sum((p[k] for p in parts), []) == batch
    resumed = list(EpochBatchSampler(100, 20, seed=3, epoch=2, start_batch=3, rank=1, world_size=4))
    assert resumed == parts[1][3:]
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        EpochBatchSampler(100, 20, seed=0, rank=0, world_size=3)


def test_gather_without_grad_keeps_the_loss_but_not_the_gradient(two_ranks):
    """open_clip's gather_with_grad=False: the first step's loss is the global batch's, its gradient is not
    (a rank's embeddings get no gradient from the other ranks' losses)."""
    (loss, grads), = two_ranks[0]["no-grad-gather"][:1]
    (loss1, grads1), = _train(0, 1, NO_GRAD_GATHER)[:1]
    assert loss == pytest.approx(loss1, rel=1e-12)
    assert not torch.allclose(grads["visual.proj"], grads1["visual.proj"], rtol=1e-3)
