"""clipcore.memory: k-NN against brute force, own-pair exclusion, faiss agreement, save/load, de-duplication."""
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipcore.memory import MemoryBank, build_memory, exact_knn


pytestmark = pytest.mark.usefixtures("one_thread")


def _bank(n=500, d=16, seed=0, **kw) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    return MemoryBank(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), **kw)


def _brute(q, keys, k):
    s = q @ keys.T
    return s.topk(k, dim=1)


@pytest.mark.parametrize("key_chunk", [7, 64, 10_000])
def test_exact_knn_matches_brute_force(key_chunk):
    """Chunked matmul + running top-k equals one full top-k, for chunks smaller than k, uneven and larger than N."""
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(37, 8, generator=g), torch.randn(301, 8, generator=g)
    s, i = exact_knn(q, keys, 10, query_chunk=16, key_chunk=key_chunk)
    ref = _brute(q, keys, 10)
    assert torch.equal(i, ref.indices)
    torch.testing.assert_close(s, ref.values)


def test_search_by_modality_and_normalisation():
    bank = _bank()
    assert torch.allclose(bank.image.norm(dim=1), torch.ones(len(bank)), atol=1e-5)
    q = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    for by, keys in (("image", bank.image), ("text", bank.text)):
        s, i = bank.search(q, 4, by=by)
        assert torch.equal(i, _brute(q, keys, 4).indices)
    s_img, _ = bank.search(q, 4, by="image")
    s_txt, _ = bank.search(q, 4, by="text")
    assert not torch.allclose(s_img, s_txt)


def test_exclusion_of_own_pair():
    """Querying with the memory's own images: without exclusion each row finds itself first (cos 1); with
    exclude_ids it never does, and the k returned rows are exactly ranks 2..k+1 of the unexcluded search."""
    bank = _bank(n=200, ids=torch.arange(200) * 3 + 1000)           # ids differ from row numbers
    s, i = bank.search(bank.image, 6, by="image")
    assert torch.equal(i[:, 0], torch.arange(200))
    s_ex, i_ex = bank.search(bank.image, 5, by="image", exclude_ids=bank.ids)
    assert not (i_ex == torch.arange(200)[:, None]).any()
    assert torch.equal(i_ex, i[:, 1:])
    torch.testing.assert_close(s_ex, s[:, 1:])
    # several ids per query; ids that are not in the bank exclude nothing
    ex = torch.stack([bank.ids[i[:, 0]], bank.ids[i[:, 2]], torch.full((200,), -5)], 1)
    _, i2 = bank.search(bank.image, 3, by="image", exclude_ids=ex)
    assert torch.equal(i2, i[:, [1, 3, 4]])


def test_faiss_backend_agrees_with_exact():
    pytest.importorskip("faiss")
    bank = _bank(n=2000, d=32)
    q = F.normalize(torch.randn(50, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    for by in ("image", "text"):
        s1, i1 = bank.search(q, 10, by=by)
        s2, i2 = bank.search(q, 10, by=by, backend="faiss", exclude_ids=torch.zeros(50, dtype=torch.long) - 1)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=0)
    _, i3 = bank.search(bank.text[:20], 4, by="text", backend="faiss", exclude_ids=bank.ids[:20])
    assert not (i3 == torch.arange(20)[:, None]).any()


def test_small_bank_pads_and_max_score():
    bank = _bank(n=3)
    s, i = bank.search(bank.image, 5, by="image", exclude_ids=bank.ids)
    assert (i[:, :2] >= 0).all() and (i[:, 2:] == -1).all() and torch.isinf(s[:, 2:]).all()
    s, i = bank.search(bank.image, 2, by="image", max_score=0.999)
    assert not (i[:, 0] == torch.arange(3)).any()                    # the self-match (cos 1) is skipped
    g = bank.gather(i, "text")
    assert g.shape == (3, 2, 16)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_roundtrip(tmp_path, suffix):
    bank = _bank(n=50, labels=torch.arange(50) % 7, ids=torch.arange(50) + 100, meta={"encoder": "toy", "split": "train"})
    path = bank.save(tmp_path / f"mem{suffix}")
    back = MemoryBank.load(path)
    assert torch.equal(back.image, bank.image) and torch.equal(back.text, bank.text)
    assert torch.equal(back.ids, bank.ids) and torch.equal(back.labels, bank.labels)
    assert back.meta["encoder"] == "toy" and back.meta["size"] == 50 and back.meta["dim"] == 16
    with pytest.raises(FileNotFoundError, match="build_memory"):
        MemoryBank.load(tmp_path / "missing.safetensors")


def test_dedup_against_removes_near_duplicates():
    bank = _bank(n=100)
    g = torch.Generator().manual_seed(4)
    dup = F.normalize(bank.image[:10] + 0.01 * torch.randn(10, 16, generator=g), dim=-1)   # 10 near-copies
    pruned, removed = bank.dedup_against(dup, threshold=0.95)
    assert removed == 10 and len(pruned) == 90
    assert set(pruned.ids.tolist()) == set(range(10, 100))
    assert pruned.meta["dedup_removed"] == 10
    same, none = bank.dedup_against(dup, threshold=1.01)
    assert none == 0 and len(same) == 100


def test_validation_errors():
    with pytest.raises(ValueError, match="unique"):
        _bank(n=4, ids=torch.tensor([0, 1, 1, 2]))
    with pytest.raises(ValueError, match="both be"):
        MemoryBank(torch.randn(4, 3), torch.randn(4, 2))
    bank = _bank(n=4)
    with pytest.raises(ValueError, match="'image' or 'text'"):
        bank.search(bank.image, 1, by="audio")
    with pytest.raises(ValueError, match="one row per query"):
        bank.search(bank.image, 1, exclude_ids=torch.tensor([0, 1]))


def test_build_memory_from_dataset_and_subsets():
    """Frozen linear towers over a list of (image, caption-vector, label) items: the bank holds their
    normalised embeddings, labels and item ids; sample() keeps ids."""
    torch.manual_seed(0)
    img_tower, txt_tower = torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(5, 4, bias=False)

    class Towers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.i, self.t = img_tower, txt_tower

        def encode_image(self, x, normalize=True):
            return F.normalize(self.i(x), dim=-1)

        def encode_text(self, y, normalize=True):
            return F.normalize(self.t(y), dim=-1)

    x, y = torch.randn(30, 6), torch.randn(30, 5)
    items = [(x[i], y[i], i % 3) for i in range(30)]
    bank = build_memory(Towers(), items, batch_size=8, meta={"note": "toy"})
    with torch.no_grad():
        torch.testing.assert_close(bank.image, F.normalize(img_tower(x), dim=-1))
        torch.testing.assert_close(bank.text, F.normalize(txt_tower(y), dim=-1))
    assert torch.equal(bank.labels, torch.arange(30) % 3) and torch.equal(bank.ids, torch.arange(30))
    assert bank.meta["encoder"] == "Towers" and bank.meta["note"] == "toy"
    sub = bank.sample(0.1, seed=1)
    assert len(sub) == 3 and torch.equal(sub.image, bank.image[sub.ids])
