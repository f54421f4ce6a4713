"""Data parallelism for the training loop: torchrun, DistributedDataParallel and the gathering the contrastive loss
uses (:func:`all_gather`; the loss itself, on 1 or N processes, comes from :func:`clipcore.losses.make_loss`).

    torchrun --nproc_per_node 4 -m clipcore.train --model small --batch-size 1024     # one node, 4 GPUs
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint host0:29500 -m clipcore.train ...                          # two nodes

``--batch-size`` is the *global* batch: every optimiser step sees the same samples whatever the number of
processes (each rank gets a disjoint B / W slice of each global batch, :class:`clipcore.data.EpochBatchSampler`),
so a run on W ranks takes the steps of a 1-process run and resumes exactly on any W.

Why the loss is exact. A contrastive loss couples every row with every column, so each rank all-gathers the
embeddings *with gradient* (:func:`all_gather`) and computes its local rows against all N columns (open_clip's
``local_loss=True, gather_with_grad=True``). Rank r's loss L_r is the mean over its B/W image rows plus its B/W
text rows; the full-batch loss is L = (1/W) sum_r L_r. The backward of :func:`all_gather` sums, over ranks, the
gradient of every L_r' with respect to rank r's rows, which gives d(sum_r' L_r')/d(rank r's embeddings); DDP then
averages parameter gradients over ranks, dividing by W: exactly dL/dtheta. ``tests/test_distributed.py`` checks
the loss and every parameter gradient of 2 gloo processes against one process on the same global batch.

open_clip's flags, same meaning here:
- ``--local-loss`` (default on here): local rows x all columns, 2 B/W x N x D per rank. Off: every rank computes
  the full N x N loss on the gathered embeddings (same values and gradients, W times the loss compute).
- ``--gather-with-grad`` (default on here; open_clip's default is off): off gathers the other ranks' embeddings
  as constants, so a rank's embeddings get no gradient from the other ranks' losses. The loss value is the same
  but the gradient is not the full-batch gradient; it is kept for reproducing open_clip runs.

Batch norm (the ``tiny`` preset's conv tower) normalises with per-rank statistics under DDP, so such a model is
not equal to its 1-process run; on CUDA it is converted to SyncBatchNorm, which is (gloo/CPU has no SyncBatchNorm).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from clipcore.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place: rank in [0, world), local_rank on its node, and the device it computes on."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0


def init(device: str = "auto") -> Dist:
    """Join torchrun's process group when launched by torchrun (``WORLD_SIZE`` set), else a 1-process Dist.

    nccl on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. torchrun sets RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init_method="env://"`` reads them.
    """
    cuda = device == "cuda" or device.startswith("cuda:") or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        dev = torch.device("cuda" if cuda else "cpu") if device == "auto" else torch.device(device)
        return Dist(device=dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                device_id=dev if cuda else None)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, device=dev)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_rank() -> tuple[int, int]:
    """(world size, rank) of the current process group; (1, 0) without one."""
    return (dist.get_world_size(), dist.get_rank()) if active() else (1, 0)


def mean_across(x: Tensor) -> Tensor:
    """Mean of a tensor over ranks (a detached copy): the logged loss, the NaN guard's value on every rank."""
    x = x.detach().clone()
    if active():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def broadcast(obj):
    """Rank 0's Python object on every rank (e.g. the run folder, chosen once)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def has_batch_norm(model: torch.nn.Module) -> bool:
    """Whether a layer of ``model`` normalises with batch statistics (a row's output depends on the other rows)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DistributedDataParallel around a :class:`Runner` of ``model`` (the model itself when not distributed)."""
    if d.world == 1:
        return Runner(model)
    if has_batch_norm(model):
        if d.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif d.main:
            warnings.warn("the model has batch norm: under DDP on CPU each rank normalises with its own batch "
                          "statistics, so training differs from a 1-process run (use a model without batch norm, "
                          "e.g. --model tiny-vit, for an exact equivalence)", stacklevel=2)
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(Runner(model), device_ids=ids)


class Runner(torch.nn.Module):
    """Holds the model and runs any function of a batch inside the wrapper's forward.

    DDP synchronises gradients only for work done inside its ``forward`` (there it arms the reducer). A method's
    ``step`` calls its own model, not a DDP wrapper; wrapping this runner and calling ``ddp(task.step, batch)``
    puts that whole step inside DDP's forward, so every method's step runs data-parallel unchanged.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


# ----------------------------------------------------------------------------- gathering
class _AllGather(torch.autograd.Function):
    """Concatenate every rank's (B_r, ...) rows -> (N, ...). Backward: the sum over ranks of the gradient of
    the gathered tensor, this rank's rows of it (each rank's loss uses every rank's rows)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather(x: Tensor, *, with_grad: bool = True) -> Tensor:
    """(B_r, ...) on every rank -> (N, ...) in rank order; equal B_r on all ranks.

    with_grad=False is open_clip's ``gather_with_grad=False``: the other ranks' rows are constants and this
    rank's own rows stay in the graph.
    """
    if not active():
        return x
    if with_grad:
        return _AllGather.apply(x)
    with torch.no_grad():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


# ----------------------------------------------------------------------------- exact accumulation (GradCache)
def split_batch(batch, k: int) -> list:
    """A batch (tuple/list of tensors with a common leading dimension B, B divisible by k) -> k chunks."""
    if not isinstance(batch, (tuple, list)) or not all(isinstance(t, Tensor) for t in batch):
        raise ConfigError("--accum-freq needs batches that are tuples of tensors with a leading batch dimension; "
                         f"got {type(batch).__name__}")
    b = batch[0].shape[0]
    if b % k or any(t.shape[0] != b for t in batch):
        raise ConfigError(f"--accum-freq {k} must divide this rank's batch of {b} rows (every tensor of the batch "
                         "has that many rows); change --batch-size or --accum-freq")
    return list(zip(*(t.chunk(k) for t in batch)))


def _rng() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _surrogate(embed, chunk, g_image: Tensor, g_text: Tensor, g_scale: Tensor | None) -> Tensor:
    """sum <embedding, cached dLoss/dembedding>: its gradient w.r.t. the parameters is this chunk's share of the
    full-batch gradient (chain rule with the embedding gradient held fixed)."""
    image, text, scale, _ = embed(chunk)
    out = (image.to(g_image.dtype) * g_image).sum() + (text.to(g_text.dtype) * g_text).sum()
    return out + (scale * g_scale) if g_scale is not None else out


def grad_cache_step(runner: torch.nn.Module, embed, loss_from_embeddings, batch, k: int, autocast,
                    backward) -> tuple[Tensor, dict]:
    """One optimiser step's gradients for a contrastive loss over the whole batch, computed in k chunks.

    GradCache (Gao, Zhang, Han, Callan 2021): (1) embed the k chunks without a graph, (2) compute the loss of the
    full batch on those embeddings as leaves and backpropagate it to them only (``backward(loss)``, which also
    applies the loss scaling), (3) re-run each chunk with a graph and backpropagate its cached embedding
    gradient. The parameter gradients are those of the full batch, while activations are held for one chunk at
    a time. Each chunk's RNG state is replayed, so dropout masks match. Models whose output for a row depends on
    the other rows of its chunk (batch norm) are not exact this way; train.py refuses them.

    runner: the (DDP-wrapped) :class:`Runner`; chunk re-runs go through it, all but the last without gradient
    synchronisation. autocast: a context-manager factory. Returns (loss, info) of the full batch.
    """
    chunks = split_batch(batch, k)
    states, outs = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(_rng())
            with autocast():
                outs.append(embed(c))
    after = _rng()
    image = torch.cat([o[0] for o in outs]).requires_grad_()   # leaves: the loss backpropagates to them only
    text = torch.cat([o[1] for o in outs]).requires_grad_()
    scale = outs[0][2].detach().requires_grad_()
    labels = torch.cat([o[3] for o in outs]) if outs[0][3] is not None else None
    with autocast():
        loss, info = loss_from_embeddings(image, text, scale, labels)
    backward(loss)
    rows = [o[0].shape[0] for o in outs]
    g_image, g_text = image.grad.split(rows), text.grad.split(rows)
    for j, c in enumerate(chunks):
        _set_rng(states[j])
        last = j == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(runner, "no_sync") else runner.no_sync()
        with sync:
            with autocast():
                part = runner(_surrogate, embed, c, g_image[j], g_text[j], scale.grad if last else None)
            part.backward()
    _set_rng(after)
    return loss, info
