"""clipcore.evaluate: metrics on hand-made encoders whose answers are known exactly."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipcore.evaluate import (classification_metrics, encode_images, evaluate_model, linear_probe,
                               retrieval_metrics, zero_shot_classifier, zero_shot_metrics)
from clipcore.tokenizer import BPETokenizer, WordTokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


class StubCLIP(nn.Module):
    """encode_image: flatten (N, ...) -> (N, D) (identity on the pixels); encode_text: sum of fixed word
    vectors E[token] (pad/sot/eot rows are zero)."""

    def __init__(self, word_vectors: torch.Tensor):
        super().__init__()
        self.register_buffer("E", word_vectors)

    def encode_image(self, images, normalize=True):
        x = images.flatten(1).float()
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=True):
        x = self.E[tokens].sum(1)
        return F.normalize(x, dim=-1) if normalize else x


def word_stub(words: list[str], dim: int, vectors: dict[str, torch.Tensor]):
    tok = WordTokenizer(words, context_length=8)
    E = torch.zeros(tok.vocab_size, dim)
    for w, v in vectors.items():
        E[tok.word_to_id[w]] = v
    return StubCLIP(E), tok


def rank_row(true: int, rank: int, c: int) -> torch.Tensor:
    """Score vector over c classes in which class `true` has the given 1-based rank."""
    order = [k for k in range(c) if k != true]
    order.insert(rank - 1, true)
    s = torch.empty(c)
    s[order] = torch.arange(c, 0, -1).float()
    return s


# -------------------------------------------------------------------------------------- zero-shot
def test_perfect_classifier():
    eye = torch.eye(4)
    model, tok = word_stub(["cat", "dog", "cow", "pig"], 4, dict(zip(["cat", "dog", "cow", "pig"], eye)))
    clf = zero_shot_classifier(model, tok, ["cat", "dog", "cow", "pig"], ["a photo of a {c}", "the {}"])
    assert torch.allclose(clf, eye)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1])
    images = (eye[labels] + 0.1 * torch.rand(7, 4)).view(7, 1, 2, 2)
    m = zero_shot_metrics(encode_images(model, images, batch_size=3), labels, clf)
    assert m["acc1"] == 1.0 and m["mean_per_class_recall"] == 1.0 and "acc5" not in m  # top-5 of 4 classes is 1 by construction: not reported


def test_ensemble_is_mean_of_normalised_prompts():
    g = torch.Generator().manual_seed(0)
    vecs = {w: torch.randn(5, generator=g) for w in ["cat", "dog", "photo", "drawing"]}
    model, tok = word_stub(list(vecs), 5, vecs)
    clf = zero_shot_classifier(model, tok, ["cat", "dog"], ["photo {c}", "drawing {c}", "{c}"])
    for i, c in enumerate(["cat", "dog"]):
        prompts = [vecs["photo"] + vecs[c], vecs["drawing"] + vecs[c], vecs[c]]
        want = F.normalize(torch.stack([F.normalize(p, dim=0) for p in prompts]).mean(0), dim=0)
        assert torch.allclose(clf[i], want, atol=1e-6)
    clf_call = zero_shot_classifier(model, tok, ["cat", "dog"], [lambda c: f"photo {c}"])
    assert torch.allclose(clf_call[0], F.normalize(vecs["photo"] + vecs["cat"], dim=0), atol=1e-6)


def test_imbalanced_known_metrics():
    c = 6
    # (true class, rank of the true class) per image; classes 3..5 never occur as labels
    cases = [(0, 1)] * 6 + [(0, 2)] * 2 + [(1, 3), (1, 6)] + [(2, 1)] * 2
    feats = torch.stack([rank_row(t, r, c) for t, r in cases])
    labels = torch.tensor([t for t, _ in cases])
    m = zero_shot_metrics(feats, labels, torch.eye(c), ks=(1, 2, 5))
    assert m["acc1"] == pytest.approx(8 / 12)
    assert m["acc2"] == pytest.approx(10 / 12)
    assert m["acc5"] == pytest.approx(11 / 12)
    assert m["mean_per_class_recall"] == pytest.approx((6 / 8 + 0 / 2 + 2 / 2) / 3)
    assert m["mean_per_class_recall"] != pytest.approx(m["acc1"])


def test_mean_per_class_recall_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 7, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)  # classes 5, 6 absent from labels but predicted
    m = classification_metrics(logits, labels)
    with pytest.warns(UserWarning):
        want = sk.balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert m["mean_per_class_recall"] == pytest.approx(want, abs=1e-12)
    assert m["acc1"] == pytest.approx(sk.accuracy_score(labels.numpy(), logits.argmax(1).numpy()))
    assert m["acc5"] == pytest.approx(sk.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5,
                                                              labels=list(range(7))))


def test_top_k_only_below_the_number_of_classes():
    """acc@k with k >= C is 1 by construction: left out, never NaN (which json.dumps cannot write as JSON)."""
    g = torch.Generator().manual_seed(0)
    for c, has5 in ((4, False), (5, False), (6, True)):
        m = classification_metrics(torch.randn(20, c, generator=g), torch.arange(20) % c)
        assert ("acc5" in m) == has5 and "acc1" in m, c
    assert "acc5" not in linear_probe(torch.randn(40, 3, generator=g), torch.arange(40) % 5,
                                      torch.randn(10, 3, generator=g), torch.arange(10) % 5, epochs=5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="transpose"):
        zero_shot_metrics(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.randn(8, 3))
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]))


# -------------------------------------------------------------------------------------- retrieval
def brute_force_recall(img, txt, t2i, k):
    s = txt @ img.T
    i_hits = [t2i[t].item() in s[t].argsort(descending=True)[:k].tolist() for t in range(len(txt))]
    t_hits = []
    for i in range(len(img)):
        if (t2i == i).any():
            top = s[:, i].argsort(descending=True)[:k]
            t_hits.append(any(t2i[t].item() == i for t in top.tolist()))
    return sum(i_hits) / len(i_hits), sum(t_hits) / len(t_hits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    t2i = torch.cat([torch.arange(25), torch.randint(0, 25, (40,), generator=g)])  # images 25..29 have no text
    txt = F.normalize(img[t2i] + 0.9 * torch.randn(len(t2i), 8, generator=g), dim=-1)
    m = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        want_i, want_t = brute_force_recall(img, txt, t2i, k)
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(want_i)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(want_t)
    assert 0 < m["text_retrieval_recall@1"] < 1 and 0 < m["image_retrieval_recall@1"] < 1


def test_retrieval_any_positive_counts():
    img = torch.eye(3)
    # image 0 has two captions: one points at image 1, one at image 0
    txt = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    t2i = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(img, txt, t2i, ks=(1, 2, 5))
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)  # text 0 misses
    assert m["image_retrieval_recall@2"] == 1.0
    # image->text: img0's top text is text1 (its caption) -> hit; img1's top is text0 (score 1) -> miss; img2 hit
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@5"] == 1.0  # k > #texts: whole set


# ----------------------------------------------------------------------------------- linear probe
def blobs(n, c, d, sep, seed):
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(c, d, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


def test_linear_probe_separable():
    x, y = blobs(600, 5, 16, 3.0, 0)
    tx, ty = blobs(400, 5, 16, 3.0, 1)
    m = linear_probe(x, y, tx, ty, epochs=50)
    assert m["acc1"] > 0.95 and m["mean_per_class_recall"] > 0.95 and "acc5" not in m  # 5 classes: top-5 is 1 by construction
    assert m["wd"] in (1e-6, 1e-4, 1e-2, 1.0)
    vx, vy = blobs(200, 5, 16, 3.0, 2)
    m2 = linear_probe(x, y, tx, ty, val_x=vx, val_y=vy, wds=(1e-4, 1e-2), epochs=50)
    assert m2["acc1"] > 0.95 and m2["wd"] in (1e-4, 1e-2)


def test_linear_probe_random_labels_is_chance():
    g = torch.Generator().manual_seed(0)
    x, tx = torch.randn(400, 16, generator=g), torch.randn(2000, 16, generator=g)
    y, ty = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    m = linear_probe(x, y, tx, ty, epochs=50)
    assert abs(m["acc1"] - 0.25) < 0.05 and "acc5" not in m
    assert linear_probe(x, y, tx, ty, epochs=50) == m  # deterministic


def test_linear_probe_bad_input():
    with pytest.raises(ValueError, match="val_y"):
        linear_probe(torch.randn(4, 2), torch.zeros(4).long(), torch.randn(2, 2), torch.zeros(2).long(),
                     val_x=torch.randn(2, 2))


# ------------------------------------------------------------------------------------ whole dataset
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items, classnames=None):
        self.items, self.classnames = items, classnames

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_model_end_to_end():
    n, c = 7, 3
    names = [f"c{k}" for k in range(c)]
    ids = [f"w{i}" for i in range(n)]
    eye = torch.eye(c + n)
    model, tok = word_stub(names + ids, c + n, dict(zip(names + ids, eye)))
    labels = [i % c for i in range(n)]
    items = [((eye[labels[i]] + 0.5 * eye[c + i]).view(1, 1, -1), f"{names[labels[i]]} w{i}", labels[i])
             for i in range(n)]
    items.append(((eye[0] + 0.5 * eye[c]).view(1, 1, -1), "w0", -1))  # unlabelled: left out of zero-shot
    model.train()
    m = evaluate_model(model, tok, ListDataset(items, names), templates=["{c}"], batch_size=3)
    assert model.training  # mode restored
    assert m["acc1"] == 1.0 and m["mean_per_class_recall"] == 1.0 and "acc5" not in m
    assert m["image_retrieval_recall@1"] == pytest.approx(7 / 8)  # "w0" ties between items 0 and 7
    assert m["text_retrieval_recall@10"] == 1.0
    m2 = evaluate_model(model, tok, [(x, s) for x, s, _ in items], retrieval=True)
    assert "acc1" not in m2 and "image_retrieval_recall@5" in m2


def test_encode_images_tensor_and_loader_agree():
    x = torch.randn(10, 3, 2, 2)
    model = StubCLIP(torch.zeros(1, 12))
    a = encode_images(model, x, batch_size=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(10)), batch_size=3)
    assert torch.allclose(a, encode_images(model, loader)) and a.shape == (10, 12)
    assert torch.allclose(a.norm(dim=-1), torch.ones(10))


# ------------------------------------------------------------------------------- open_clip parity
def test_zero_shot_classifier_matches_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)).eval()
    classnames = ["dog", "cat", "golden retriever", "café", "traffic light", "x-ray"]
    templates = ["a photo of a {}.", "a blurry photo of the {}!", "{}"]
    theirs = build_zero_shot_classifier(model, open_clip.get_tokenizer("ViT-B-32"), classnames, templates,
                                        num_classes_per_batch=4)  # (D, C)
    ours = zero_shot_classifier(model, BPETokenizer(), classnames, [t.replace("{}", "{c}") for t in templates],
                                batch_size=5)
    assert ours.shape == (6, 32)
    torch.testing.assert_close(ours, theirs.T, atol=1e-5, rtol=0)
    images = torch.randn(8, 3, 32, 32)
    feats = encode_images(model, images, batch_size=3)
    with torch.no_grad():
        ref = model.encode_image(images, normalize=True)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=0)
