import open_clip
import pytest
import torch

from clipcore.losses import contrastive_loss, make_loss, pair_penalty, positive_targets, square_loss


def _inputs(b=24, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    scale = torch.tensor(1 / 0.07, dtype=dtype, requires_grad=True)
    return img, txt, scale


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("scale_value", [1.0, 14.3, 100.0])
def test_clip_matches_open_clip_fp64(scale_value):
    img, txt, scale = _inputs()
    scale = torch.tensor(scale_value, dtype=torch.float64, requires_grad=True)
    ours = contrastive_loss(img, txt, scale)
    ref = open_clip.ClipLoss()(img, txt, scale)
    assert abs(ours.item() - ref.item()) < 1e-8
    for a, b in zip(_grads(ours, img, txt, scale), _grads(ref, img, txt, scale)):
        assert (a - b).abs().max().item() < 1e-8


def test_clip_with_bias_matches_formula():
    img, txt, scale = _inputs(b=8)
    bias = torch.tensor(-3.0, dtype=torch.float64)
    lg = scale * img @ txt.T + bias
    ref = 0.5 * (-lg.log_softmax(1).diag().mean() - lg.log_softmax(0).diag().mean())
    torch.testing.assert_close(contrastive_loss(img, txt, scale, logit_bias=bias), ref)


def test_multipos_reduces_to_clip_with_unique_labels():
    img, txt, scale = _inputs()
    torch.testing.assert_close(contrastive_loss(img, txt, scale, labels=torch.arange(24)), contrastive_loss(img, txt, scale))


def test_multipos_soft_targets_by_hand():
    img, txt, scale = _inputs(b=6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    lg = scale * img @ txt.T
    same = (labels[:, None] == labels[None]).double()
    p = same / same.sum(1, keepdim=True)
    ref = 0.5 * (-(p * lg.log_softmax(1)).sum(1).mean() - (p * lg.T.log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(contrastive_loss(img, txt, scale, labels=labels), ref)
    assert torch.allclose(positive_targets(labels).sum(1), torch.ones(6))


def test_multipos_prefers_classes_clip_prefers_instances():
    """Same-label pairs with different captions: CLIP's optimum is instance discrimination, multi-positive's
    is one direction per class (the reason the default data use multipos)."""
    labels = torch.tensor([0, 0, 1, 1])
    scale = torch.tensor(100.0, dtype=torch.float64)
    per_class = torch.eye(4, dtype=torch.float64)[labels]      # same-class pairs collapse together
    per_pair = torch.eye(4, dtype=torch.float64)               # every pair its own direction
    log2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    # multi-positive: the class solution reaches its minimum, the entropy of its targets (log 2)
    torch.testing.assert_close(contrastive_loss(per_class, per_class, scale, labels=labels), log2)
    assert contrastive_loss(per_pair, per_pair, scale, labels=labels) > 10
    # plain CLIP: the instance solution is ~0, the class solution is stuck at log 2
    assert contrastive_loss(per_pair, per_pair, scale) < 1e-6
    torch.testing.assert_close(contrastive_loss(per_class, per_class, scale), log2)


def test_identical_captions_make_clip_and_multipos_equal():
    """Rows with byte-identical captions share a text embedding; then both losses coincide exactly."""
    img, txt, scale = _inputs(b=6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    txt = txt.detach()[labels]
    torch.testing.assert_close(contrastive_loss(img, txt, scale, labels=labels), contrastive_loss(img, txt, scale))


@pytest.mark.parametrize("pairs", ["pos", "neg", "both", "neg_pull", "both_pull"])
def test_pair_penalty_matches_brute_force(pairs):
    img, txt, _ = _inputs(b=7)
    d2 = torch.cdist(img, txt).pow(2)
    pos, neg = d2.diag().mean(), d2[~torch.eye(7, dtype=bool)].mean()
    expected = {"pos": pos, "neg": -neg, "both": pos - neg, "neg_pull": neg, "both_pull": pos + neg}[pairs]
    torch.testing.assert_close(pair_penalty(img, txt, pairs), expected)


def test_neg_penalty_pushes_negatives_apart_matched_to_pos():
    """`neg` pushes negative pairs apart (its gradient lowers every negative cosine, the old `neg_pull` raises
    them), and on unit-norm embeddings it moves its cosines with the same total weight as `pos` (2 per term)."""
    img, txt, _ = _inputs(b=6)
    cos = (img @ txt.T).detach().requires_grad_()            # the penalties as functions of the cosines
    eye = torch.eye(6, dtype=torch.bool)
    as_cos = {"pos": lambda c: (2 - 2 * c[eye]).mean(), "neg": lambda c: -(2 - 2 * c[~eye]).mean()}
    for pairs, f in as_cos.items():                          # the closed forms agree with pair_penalty
        torch.testing.assert_close(f(img @ txt.T), pair_penalty(img, txt, pairs))
    g_pos, g_neg = (torch.autograd.grad(as_cos[p](cos), cos)[0] for p in ("pos", "neg"))
    assert (g_neg[~eye] > 0).all() and (g_neg[eye] == 0).all()     # descent lowers negative cosines: pushes apart
    assert (g_pos[eye] < 0).all() and (g_pos[~eye] == 0).all()     # descent raises positive cosines: pulls together
    assert g_pos.abs().sum().item() == pytest.approx(2.0) and g_neg.abs().sum().item() == pytest.approx(2.0)
    # through the embeddings: a small gradient step on `neg` lowers the mean negative cosine, on `neg_pull` raises it
    for pairs, sign in (("neg", -1), ("neg_pull", 1)):
        f, g = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
        gf, gg = torch.autograd.grad(pair_penalty(f, g, pairs), (f, g))
        step = lambda e, ge: torch.nn.functional.normalize(e - 0.01 * ge, dim=-1)  # noqa: E731
        before = (f @ g.T)[~eye].mean()
        after = (step(f, gf) @ step(g, gg).T)[~eye].mean()
        assert sign * (after - before).item() > 1e-6


def test_reg_loss_and_options():
    img, txt, scale = _inputs()
    base = contrastive_loss(img, txt, scale)
    pen = (img - txt).pow(2).sum(1).mean()
    torch.testing.assert_close(contrastive_loss(img, txt, scale, reg_lambda=0.5), base + 0.5 * pen)
    torch.testing.assert_close(contrastive_loss(img, txt, scale, reg_lambda=0.5, reg_over_tau=True), base + 0.5 * pen * scale)
    # unit-norm embeddings: ||f - g||^2 = 2 - 2 cos
    torch.testing.assert_close(pen, (2 - 2 * (img * txt).sum(1)).mean())
    with pytest.raises(ValueError, match="reg_pairs"):
        contrastive_loss(img, txt, scale, reg_lambda=1.0, reg_pairs="all")
    # only the chosen pair term changes: the positive-pair penalty is the same under every name that includes it
    for pairs, extra in (("both", -pair_penalty(img, txt, "neg_pull")), ("both_pull", pair_penalty(img, txt, "neg_pull"))):
        torch.testing.assert_close(contrastive_loss(img, txt, scale, reg_lambda=0.5, reg_pairs=pairs),
                                   base + 0.5 * (pen + extra))


def test_square_loss_and_make_loss():
    img, txt, scale = _inputs(b=5)
    torch.testing.assert_close(square_loss(img, txt), (img - txt).pow(2).sum(1).mean())
    labels = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(make_loss("multipos")(img, txt, scale, labels=labels), contrastive_loss(img, txt, scale, labels=labels))
    torch.testing.assert_close(make_loss("clip")(img, txt, scale, labels=labels), contrastive_loss(img, txt, scale))
    torch.testing.assert_close(make_loss("reg", reg_lambda=0.3)(img, txt, scale), contrastive_loss(img, txt, scale, reg_lambda=0.3))
    torch.testing.assert_close(make_loss("reg", reg_lambda=0.3)(img, txt, scale, labels=labels),
                               make_loss("multipos")(img, txt, scale, labels=labels) + 0.3 * pair_penalty(img, txt))
    torch.testing.assert_close(make_loss("square")(img, txt, scale), square_loss(img, txt))
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        make_loss("triplet")
    with pytest.raises(ValueError, match="must both be"):
        contrastive_loss(img, txt[:3], scale)
