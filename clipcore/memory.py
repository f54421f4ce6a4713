"""A memory of image-text pair embeddings and exact k-nearest-neighbour search: the ONE retrieval path of clipcore.

RECO (``clipcore.methods.reco``) refines embeddings with items fetched from it; ARF draws its candidate pool
from it. Embeddings are computed once with frozen towers and stored L2-normalised, so inner product = cosine.

    bank = build_memory(model, dataset, tokenizer)          # (N, D) image and text embeddings, batched, no grad
    bank.save("memory.safetensors"); bank = MemoryBank.load("memory.safetensors")
    scores, idx = bank.search(queries, k=10, by="image")    # (Q, k) each, best first; idx are rows of the bank
    scores, idx = bank.search(v, 10, by="image", exclude_ids=own_ids)   # never return a query's own pair
    bank, removed = bank.dedup_against(eval_image_embeddings, threshold=0.95)

Search is exact: a chunked matmul ``Q x N_chunk`` followed by top-k, merged across chunks, so memory use is
O(Q_chunk * N_chunk) whatever N is (CPU or GPU, following the bank's device). ``backend="faiss"`` runs the same
exact search with faiss ``IndexFlatIP`` (faiss-cpu; it must return the same neighbours). Rows carry ``ids``
(the pair's identity, e.g. its dataset index) so that a query's own pair can be excluded by id, and optional
``labels`` (-1 unknown) for diagnostics such as precision@k. Files: ``.safetensors`` (default) or ``.npz``,
metadata (encoder, size, anything JSON) stored beside the tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clipcore.errors import ConfigError, MissingFileError

BY = ("image", "text")
BACKENDS = ("exact", "faiss")
_META_KEY = "clipcore_memory"


# ----------------------------------------------------------------------------- exact k-NN
@torch.no_grad()
def exact_knn(queries: Tensor, keys: Tensor, k: int, *, query_chunk: int = 1024, key_chunk: int = 32768,
              max_score: float | None = None) -> tuple[Tensor, Tensor]:
    """Top-k inner products of every query against every key, exactly.

    queries (Q, D), keys (N, D) on the same device -> (scores (Q, k), indices (Q, k) int64), best first.
    For each block of queries, keys are scanned in chunks of ``key_chunk``: top-k inside the chunk, then a
    merge with the running top-k (a top-k of 2k candidates), so peak memory is query_chunk x key_chunk scores.
    ``max_score``: keys scoring strictly above it are skipped (near-duplicate exclusion at query time); a
    query with fewer than k eligible keys gets score -inf and index -1 in the missing slots.
    """
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (Q, D) and keys (N, D) must share D; got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_all, n = queries.to(device=keys.device, dtype=keys.dtype), keys.shape[0]
    out_s, out_i = [], []
    for q in q_all.split(query_chunk):
        best_s = torch.full((len(q), k), -torch.inf, device=keys.device, dtype=torch.float32)
        best_i = torch.full((len(q), k), -1, device=keys.device, dtype=torch.long)
        for start in range(0, n, key_chunk):
            s = (q @ keys[start:start + key_chunk].T).float()                 # (q, chunk)
            if max_score is not None:
                s = s.masked_fill(s > max_score, -torch.inf)
            top = s.topk(min(k, s.shape[1]), dim=1)
            cand_s = torch.cat([best_s, top.values], 1)
            cand_i = torch.cat([best_i, top.indices + start], 1)
            merged = cand_s.topk(k, dim=1)                                     # ties: earlier (lower) rows first
            best_s, best_i = merged.values, cand_i.gather(1, merged.indices)
        best_i = best_i.masked_fill(torch.isinf(best_s), -1)
        out_s.append(best_s); out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


def _unit(x: Tensor) -> Tensor:
    """L2-normalise rows, leaving already-unit rows bit-identical (so save -> load round-trips exactly)."""
    norms = x.float().norm(dim=-1)
    return x if len(x) == 0 or bool(((norms - 1).abs() < 1e-5).all()) else F.normalize(x, dim=-1)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu); "
                          "backend='exact' needs nothing") from e
    return faiss


# ----------------------------------------------------------------------------- the bank
@dataclass
class MemoryBank:
    """N image-text pairs as embeddings.

    image, text (N, D) float, L2-normalised (normalised again on construction); ids (N,) int64, unique: the
    identity of each pair (own-pair exclusion is by id); labels (N,) int64, -1 where unknown; meta: JSON-able
    dict (encoder, source, ...) saved with the tensors.
    """
    image: Tensor
    text: Tensor
    ids: Tensor | None = None
    labels: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.dim() != 2 or self.image.shape != self.text.shape:
            raise ValueError(f"image and text embeddings must both be (N, D); got {tuple(self.image.shape)} and {tuple(self.text.shape)}")
        n = len(self.image)
        self.image, self.text = _unit(self.image), _unit(self.text)
        dev = self.image.device
        self.ids = torch.arange(n, device=dev) if self.ids is None else torch.as_tensor(self.ids, dtype=torch.long).to(dev)
        self.labels = (torch.full((n,), -1, dtype=torch.long, device=dev) if self.labels is None
                       else torch.as_tensor(self.labels, dtype=torch.long).to(dev))
        if self.ids.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(f"ids and labels must be ({n},); got {tuple(self.ids.shape)} and {tuple(self.labels.shape)}")
        if len(torch.unique(self.ids)) != n:
            raise ValueError("memory ids must be unique (own-pair exclusion is by id); pass e.g. ids=torch.arange(N)")
        self.meta = {**self.meta, "size": n, "dim": self.dim}
        self._faiss_index: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.image)

    @property
    def dim(self) -> int:
        return self.image.shape[1]

    @property
    def device(self) -> torch.device:
        return self.image.device

    def embeddings(self, by: str) -> Tensor:
        """(N, D) image or text embeddings."""
        if by not in BY:
            raise ValueError(f"by must be 'image' or 'text', got {by!r}")
        return self.image if by == "image" else self.text

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MemoryBank":
        """A copy on ``device`` (search runs there) and, optionally, in ``dtype`` (e.g. fp16 on a GPU)."""
        dt = dtype or self.image.dtype
        return MemoryBank(self.image.to(device, dt), self.text.to(device, dt), self.ids.to(device),
                          self.labels.to(device), dict(self.meta))

    def subset(self, rows: Tensor | Sequence[int]) -> "MemoryBank":
        """The bank restricted to ``rows`` (indices or a boolean mask); ids are kept."""
        rows = torch.as_tensor(rows, device=self.device)
        return MemoryBank(self.image[rows], self.text[rows], self.ids[rows], self.labels[rows], dict(self.meta))

    def sample(self, fraction: float, seed: int = 0) -> "MemoryBank":
        """A random ``fraction`` of the rows (at least one), drawn with ``seed``: e.g. RECO's 1 % training memory."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        m = max(1, round(fraction * len(self)))
        rows = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:m].sort().values
        out = self.subset(rows.to(self.device))
        out.meta["fraction"] = fraction
        return out

    # ------------------------------------------------------------------------- search
    @torch.no_grad()
    def search(self, queries: Tensor, k: int, by: str = "image", *, exclude_ids: Tensor | None = None,
               backend: str = "exact", max_score: float | None = None,
               key_chunk: int = 32768) -> tuple[Tensor, Tensor]:
        """k nearest memory rows of each query by inner product with the bank's ``by`` embeddings.

        queries (Q, D) (normalise them for cosine). exclude_ids: (Q,) or (Q, m) ids that must not be returned
        for that query (its own pair); excluded rows are skipped, so the result still holds k other rows.
        max_score: skip rows scoring above it (exact backend only). Returns scores (Q, k) float32 and rows
        (Q, k) int64 into this bank, best first, on the queries' device; -1 / -inf when fewer than k rows qualify.
        Both backends compute exact inner products and agree up to ties and float rounding.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        keys = self.embeddings(by)
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, D={self.dim}), got {tuple(queries.shape)}")
        if exclude_ids is not None:
            exclude_ids = torch.as_tensor(exclude_ids, device=self.device).long()
            exclude_ids = exclude_ids[:, None] if exclude_ids.dim() == 1 else exclude_ids
            if exclude_ids.shape[0] != len(queries):
                raise ValueError(f"exclude_ids must have one row per query ({len(queries)}), got {tuple(exclude_ids.shape)}")
        extra = 0 if exclude_ids is None else exclude_ids.shape[1]   # each excluded id removes at most one row
        kk = min(k + extra, len(self))
        if backend == "exact":
            scores, rows = exact_knn(queries, keys, kk, key_chunk=key_chunk, max_score=max_score)
        else:
            if max_score is not None:
                raise ValueError("max_score is supported by backend='exact' only")
            scores, rows = self._faiss_search(queries, kk, by)
        if exclude_ids is not None:
            hit = (self.ids[rows.clamp(min=0)][:, :, None] == exclude_ids[:, None, :]).any(2) & (rows >= 0)
            scores = scores.masked_fill(hit, -torch.inf)
            order = scores.topk(kk, dim=1).indices                         # survivors first, best first
            scores, rows = scores.gather(1, order), rows.gather(1, order)
            rows = rows.masked_fill(torch.isinf(scores), -1)
        if scores.shape[1] < k:                                            # bank smaller than k
            pad = k - scores.shape[1]
            scores = F.pad(scores, (0, pad), value=-torch.inf)
            rows = F.pad(rows, (0, pad), value=-1)
        return scores[:, :k].to(queries.device), rows[:, :k].to(queries.device)

    def _faiss_search(self, queries: Tensor, k: int, by: str) -> tuple[Tensor, Tensor]:
        faiss = _faiss()
        if by not in self._faiss_index:
            index = faiss.IndexFlatIP(self.dim)
            index.add(np.ascontiguousarray(self.embeddings(by).float().cpu().numpy()))
            self._faiss_index[by] = index
        s, i = self._faiss_index[by].search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        s, i = torch.from_numpy(s), torch.from_numpy(i).long()
        s = s.masked_fill(i < 0, -torch.inf)
        return s.to(self.device), i.to(self.device)

    def gather(self, rows: Tensor, modality: str) -> Tensor:
        """rows (Q, k) from :meth:`search` -> (Q, k, D) embeddings of that modality (zeros where a row is -1)."""
        emb = self.embeddings(modality)[rows.clamp(min=0).to(self.device)]
        return emb.masked_fill((rows < 0).to(self.device)[..., None], 0.0)

    # ------------------------------------------------------------------------- de-duplication
    def dedup_against(self, eval_images: Tensor, threshold: float, *, backend: str = "exact") -> tuple["MemoryBank", int]:
        """Remove memory pairs whose image is a near-duplicate of an evaluation image.

        eval_images (M, D) normalised embeddings of the evaluation images; a memory pair is removed when the
        cosine of its image to ANY of them exceeds ``threshold``. Returns (pruned bank, number removed); the
        bank's meta records threshold and count (RECO reports the count)."""
        if len(eval_images) == 0:
            return self, 0
        ev = MemoryBank(eval_images, eval_images).to(self.device, self.image.dtype)
        nearest, _ = ev.search(self.image, 1, by="image", backend=backend)   # (N, 1): best cosine to the eval set
        keep = nearest[:, 0].to(self.device) <= threshold
        out = self.subset(keep.nonzero()[:, 0])
        removed = int((~keep).sum())
        out.meta.update(dedup_threshold=threshold, dedup_removed=removed, dedup_eval_images=len(eval_images))
        return out, removed

    # ------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write ``.safetensors`` (default) or ``.npz``: image, text, ids, labels + meta as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"image": self.image.float().cpu().contiguous(), "text": self.text.float().cpu().contiguous(),
                   "ids": self.ids.cpu().contiguous(), "labels": self.labels.cpu().contiguous()}
        meta = json.dumps(self.meta)
        if path.suffix == ".npz":
            np.savez(path, **{k: v.numpy() for k, v in tensors.items()}, meta=np.array(meta))
        else:
            from safetensors.torch import save_file
            save_file(tensors, str(path), metadata={_META_KEY: meta})
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "MemoryBank":
        """Read a bank written by :meth:`save` (the format follows the suffix)."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"memory file {str(path)!r} does not exist; build one with "
                                   "clipcore.memory.build_memory(...).save(path)")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                t = {k: torch.from_numpy(z[k]) for k in ("image", "text", "ids", "labels")}
                meta = json.loads(str(z["meta"]))
        else:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
                meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
        missing = {"image", "text", "ids", "labels"} - set(t)
        if missing:
            raise ConfigError(f"{path}: not a clipcore memory file (missing tensors {sorted(missing)})")
        return cls(t["image"].to(device), t["text"].to(device), t["ids"], t["labels"], meta)


# ----------------------------------------------------------------------------- building
def encode_pairs(model, images: Tensor, texts: Tensor, *, batch_size: int = 512,
                 device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Frozen-tower embeddings of pairs, in batches (:func:`clipcore.evaluate.encode`): images (N, ...) and texts
    (N, ...) tensors (token ids or vectors, whatever ``model.encode_text`` takes) -> image (N, D), text (N, D),
    normalised, float32, CPU."""
    from clipcore.evaluate import encode
    return (encode(model, "image", images.split(batch_size), device=device),
            encode(model, "text", texts.split(batch_size), device=device))


@torch.no_grad()
def build_memory(model, dataset, tokenizer=None, *, batch_size: int = 512, device: str | torch.device = "cpu",
                 ids: Tensor | None = None, meta: dict | None = None) -> MemoryBank:
    """Embed every (image, caption, label) item of ``dataset`` with the frozen towers of ``model``.

    dataset: a clipcore ImageTextDataset (captions are the ones of its current epoch; template captions are
    hashed from (seed, epoch, index)), or any sequence of (image, caption[, label]) items. Captions go through
    ``tokenizer``. ids default to the item index (0..N-1), so a training split used both as memory and as
    training queries can exclude each query's own pair. meta is merged into the bank's metadata."""
    from clipcore.evaluate import _collate
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    img, txt, labels = [], [], []
    for images, captions, labs in loader:
        tokens = tokenizer(list(captions)) if tokenizer is not None else torch.stack(list(captions))
        v, t = encode_pairs(model, images, tokens, batch_size=batch_size, device=device)
        img.append(v); txt.append(t)
        labels.append(labs if labs is not None else torch.full((len(v),), -1))
    if not img:
        raise ValueError("build_memory got an empty dataset")
    info = {"encoder": type(model).__name__, "source": type(dataset).__name__, **(meta or {})}
    return MemoryBank(torch.cat(img), torch.cat(txt), ids, torch.cat(labels), info)


# ----------------------------------------------------------------------------- CLI
CLI_DOC = """Build or inspect a memory bank file (RECO's --reco-memory).

    python -m clipcore.memory build --checkpoint base.pt --data pairs.csv --out mem.safetensors
    python -m clipcore.memory build --checkpoint base.pt --out mem.safetensors     # the embedded data's train split
    python -m clipcore.memory info mem.safetensors

build embeds every (image, caption) pair of --data with the checkpoint's frozen towers, on its image size and
channels, and saves the bank (.safetensors, or .npz by suffix); info prints its size, width, labels and metadata.
RECO excludes a training query's own pair only from its default memory (the base's embeddings of --train-data): a
bank built here from the training pairs themselves would let each query retrieve its own pair, so build it from
other pairs."""


def _build_cli(a) -> MemoryBank:
    from types import SimpleNamespace

    from clipcore.data import load_dataset
    from clipcore.methods import load_init
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    model, tokenizer, _, data_kw = load_init(SimpleNamespace(init=a.checkpoint, seed=a.seed, skip_bad=a.skip_bad),
                                             device, "--checkpoint is required")
    ds = load_dataset(a.data, a.split, **data_kw)
    source = a.data or f"animal-mnist {a.split}"
    bank = build_memory(model, ds, tokenizer, batch_size=a.batch_size, device=device,
                        meta={"encoder": str(a.checkpoint), "source": str(source), "seed": a.seed})
    return bank


def _info(bank: MemoryBank, path: str) -> str:
    known = int((bank.labels >= 0).sum())
    classes = len(torch.unique(bank.labels[bank.labels >= 0]))
    lines = [f"{path}: {len(bank)} pairs x {bank.dim} dims (image and text embeddings, unit norm), "
             f"{known} labelled ({classes} classes)" if known else f"{path}: {len(bank)} pairs x {bank.dim} dims, no labels"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in bank.meta.items() if k not in ("size", "dim")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from clipcore.errors import cli
    from clipcore.flags import Parser

    @cli
    def run(argv):
        import argparse
        p = Parser(prog="python -m clipcore.memory", description=CLI_DOC,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
        b = sub.add_parser("build", help="embed image-text pairs with a checkpoint's frozen towers and save the bank")
        b.add_argument("--checkpoint", required=True, help="the CLIP whose towers embed the pairs (RECO: its --init)")
        b.add_argument("--data", default=None, help="CSV/TSV or image folder (default: the embedded animal-mnist)")
        b.add_argument("--split", default="train", choices=("train", "val", "test", "all"),
                       help="split of the embedded data (files and folders are used whole) (default: train)")
        b.add_argument("--out", required=True, help="the bank file: .safetensors, or .npz")
        b.add_argument("--batch-size", type=int, default=512, help="pairs embedded at once (default: 512)")
        b.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda (default: auto)")
        b.add_argument("--seed", type=int, default=0, help="draws template captions of labelled data (default: 0)")
        b.add_argument("--skip-bad", action="store_true", help="skip unreadable rows instead of stopping")
        i = sub.add_parser("info", help="print a bank's size, width, labels and metadata")
        i.add_argument("path")
        a = p.parse_args(argv)
        if a.command == "info":
            print(_info(MemoryBank.load(a.path), a.path))
            return
        if a.batch_size < 1:
            raise ConfigError(f"--batch-size {a.batch_size}: must be at least 1")
        if Path(a.out).suffix not in (".safetensors", ".npz"):
            raise ConfigError(f"--out {a.out}: name it .safetensors (or .npz)")
        path = _build_cli(a).save(a.out)
        print(_info(MemoryBank.load(path), str(path)))

    run(argv)


if __name__ == "__main__":
    main()
