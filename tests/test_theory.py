"""Unit tests of theory/: the generator's statistics, ground truth and margins, the estimators, the fitting
loop, and every sympy derivation checked numerically (against autograd of clipcore's losses or sampling)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from clipcore.losses import contrastive_loss, make_loss, pair_penalty
from theory import derivations as D
from theory.fit import (batch_loss, fit, fixed_batches, fresh_batches, linear_clip, population_loss, train_protocol,
                        weights)
from theory.measures import (class_alignment, completeness, ground_truth_embed, margins, prompt_margins, suppression,
                             topr_error, tv_gaussian_scale)
from theory.world import World, WorldConfig

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- generator
def test_sample_shapes_and_orthonormality():
    cfg = WorldConfig(K=5, k_xi=3, k_zeta=4, dx=12, dy=10)
    w = World(cfg, seed=1)
    s = w.sample(7, gen())
    assert s.x.shape == (7, 12) and s.y.shape == (7, 10) and s.z.shape == (7, 5)
    assert s.xi.shape == (7, 3) and s.zeta.shape == (7, 4) and s.labels.shape == (7,)
    torch.testing.assert_close(w.G.T @ w.G, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.H.T @ w.H, torch.eye(9), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.z, F.one_hot(s.labels, 5).float())
    assert w.prompts().shape == (5, 10)


def test_sample_is_deterministic_and_noise_free_model_is_exact():
    cfg = WorldConfig(noise=0.0)
    w = World(cfg, 3)
    a, b = w.sample(50, gen(4)), w.sample(50, gen(4))
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.x, torch.cat([a.z, a.xi], 1) @ w.G.T)
    torch.testing.assert_close(a.y, torch.cat([a.z, a.zeta], 1) @ w.H.T)
    torch.testing.assert_close(World(cfg, 3).G, w.G)


def test_generator_statistics():
    cfg = WorldConfig(sigma_xi=2.0, sigma_zeta=0.5, zeta_mean=1.5, zeta_mean_kind="class", noise=0.0)
    w = World(cfg, 0)
    s = w.sample(40_000, gen(1))
    assert s.xi.mean().abs() < 0.02 and abs(s.xi.var().item() - 4.0) < 0.1
    counts = torch.bincount(s.labels, minlength=cfg.K).float() / len(s.labels)
    assert (counts - 0.1).abs().max() < 0.01                                   # uniform topics
    for c in (0, 7):                                                           # E[zeta | z = e_c] = m M e_c
        torch.testing.assert_close(s.zeta[s.labels == c].mean(0), 1.5 * w.M[:, c], atol=0.03, rtol=0)
    shared = World(cfg.replace(zeta_mean_kind="shared"), 0).sample(20_000, gen(2))
    torch.testing.assert_close(shared.zeta.mean(0), 1.5 * World(cfg, 0).u, atol=0.03, rtol=0)


def test_sparse_z_has_s_unit_norm_topics():
    w = World(WorldConfig(sparsity=3), 0)
    s = w.sample(500, gen())
    assert ((s.z > 0).sum(1) == 3).all()
    torch.testing.assert_close(s.z.norm(dim=1), torch.ones(500))
    assert (s.z[torch.arange(500), s.labels] > 0).all()
    one = w.sample(10, gen(), sparsity=1)
    assert ((one.z > 0).sum(1) == 1).all()


def test_prompts_and_class_probs_and_xi_scale():
    w = World(WorldConfig(prompt_zeta=1.0, noise=0.0), 0)
    K = w.cfg.K
    coords = w.prompts() @ w.H                                                 # back to [z; zeta]
    torch.testing.assert_close(coords[:, :K], torch.eye(K), atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[:, K:], w.prompt_zeta, atol=1e-5, rtol=0)
    p = torch.zeros(K); p[2] = 1.0
    assert (w.sample(20, gen(), class_probs=p).labels == 2).all()
    big = w.sample(4000, gen(), xi_scale=3.0)
    assert abs(big.xi.std().item() - 3.0) < 0.1


def test_bad_config_errors():
    with pytest.raises(ValueError, match="dx >= K"):
        World(WorldConfig(dx=5))
    with pytest.raises(ValueError, match="sparsity"):
        World(WorldConfig(sparsity=0))
    with pytest.raises(ValueError, match="zeta_mean_kind"):
        World(WorldConfig(zeta_mean_kind="other"))


# ----------------------------------------------------------------------------- ground truth, margins
def test_ground_truth_margin_gamma():
    w = World(WorldConfig(noise=0.0), 0)
    s = w.sample(500, gen())
    img, txt = ground_truth_embed(w, s)
    m = margins(img, txt, s.z)
    torch.testing.assert_close(m, torch.ones(500), atol=1e-5, rtol=0)         # cos 1 vs 0: gamma* = 1
    w2 = World(WorldConfig(noise=0.0, sparsity=2), 0)
    s2 = w2.sample(500, gen())
    m2 = margins(*ground_truth_embed(w2, s2), s2.z)
    assert m2.min() >= 0.5 - 1e-5 and m2.median() == pytest.approx(0.5, abs=1e-5)   # shares one of 2 topics
    noisy = World(WorldConfig(), 0)
    c = completeness(*ground_truth_embed(noisy, noisy.sample(1000, gen())), noisy.sample(1000, gen()).z)
    assert 0.8 < c["gamma"] < 1.0 and c["frac_nonpositive"] == 0.0


def test_margin_matches_brute_force():
    g = gen(5)
    img, txt = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    z = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]), 3).float()
    expect = torch.tensor([float(img[i] @ txt[i] - max(img[i] @ txt[j] for j in range(9) if not torch.equal(z[i], z[j])))
                           for i in range(9)])
    torch.testing.assert_close(margins(img, txt, z), expect)
    torch.testing.assert_close(margins(img, txt, z, chunk=2), expect)
    assert torch.isinf(margins(img[:1], txt[:1], z[:1])).all()


def test_completeness_estimator():
    g = gen(6)
    img = F.normalize(torch.randn(300, 8, generator=g), dim=-1)
    z = F.one_hot(torch.randint(0, 4, (300,), generator=g), 4).float()
    m = margins(img, img, z)
    c = completeness(img, img, z, alpha=0.1, gamma=0.2)
    assert c["gamma"] == pytest.approx(torch.quantile(m, 0.1).item())
    assert c["alpha_at_gamma"] == pytest.approx((m < 0.2).double().mean().item())
    assert c["beta"] == pytest.approx((img @ img.T).std().item())


def test_topr_error_matches_brute_force():
    g = gen(7)
    feats, cls = torch.randn(50, 6, generator=g), torch.randn(5, 6, generator=g)
    labels = torch.randint(0, 5, (50,), generator=g)
    rank = (feats @ cls.T).argsort(1, descending=True)
    for r in (1, 2, 3):
        expect = 1 - (rank[:, :r] == labels[:, None]).any(1).double().mean().item()
        assert topr_error(feats, labels, cls, r) == pytest.approx(expect)
    errs = topr_error(feats, labels, cls, (1, 3))
    assert errs[1] >= errs[3]


def test_suppression_and_alignment():
    w = World(WorldConfig(), 0)
    b = w.blocks(*w.ground_truth())
    assert suppression(b)["ratio_img"] < 1e-5 and suppression(b)["ratio_txt"] < 1e-5
    torch.testing.assert_close(class_alignment(b), torch.ones(w.cfg.K), atol=1e-5, rtol=0)
    rnd = suppression(w.blocks(torch.randn(64, 32, generator=gen()), torch.randn(64, 32, generator=gen(1))))
    assert 0.8 < rnd["ratio_img"] < 1.25 and 0.8 < rnd["ratio_txt"] < 1.25


def test_tv_gaussian_scale():
    from scipy import integrate
    from scipy.stats import norm
    exact, _ = integrate.quad(lambda x: abs(norm.pdf(x) - norm.pdf(x, scale=3.0)) / 2, -40, 40, points=[-2, 2])
    assert tv_gaussian_scale(1, 3.0) == pytest.approx(exact, abs=1e-6)
    assert 0 < tv_gaussian_scale(10, 1.2) < tv_gaussian_scale(10, 4.0) < 1


# ----------------------------------------------------------------------------- fitting
def test_fixed_batch_loss_is_mean_of_batch_losses():
    w = World(WorldConfig(), 0)
    s = w.sample(64, gen())
    model = linear_clip(w.cfg, 8, tau=0.1)
    fn = make_loss("reg", reg_lambda=0.3)
    got = batch_loss(model, fn, *fixed_batches(s.x, s.y, 16)(0))
    with torch.no_grad():
        img, txt = model.encode_image(s.x), model.encode_text(s.y)
    expect = torch.stack([fn(img[i:i + 16], txt[i:i + 16], torch.tensor(10.0)) for i in range(0, 64, 16)]).mean()
    torch.testing.assert_close(got.detach(), expect)
    assert model.logit_scale_value().item() == pytest.approx(10.0) and not model.logit_scale.requires_grad
    assert linear_clip(w.cfg, 8, tau=0.01).logit_scale_value().item() == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        fixed_batches(s.x, s.y, 10)


def test_prompt_margins_brute_force_and_ground_truth():
    g = gen(4)
    img, prompts = F.normalize(torch.randn(50, 6, generator=g), dim=-1), F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    labels = torch.randint(0, 4, (50,), generator=g)
    sc = img @ prompts.T
    brute = torch.stack([sc[i, labels[i]] - max(sc[i, k] for k in range(4) if k != labels[i]) for i in range(50)])
    m = prompt_margins(img, prompts, labels)
    torch.testing.assert_close(m, brute)
    assert ((m > 0) == (sc.argmax(1) == labels)).all()                         # m > 0 iff zero-shot top-1 is right
    w = World(WorldConfig(noise=0.0), 0)                                         # ground truth: cos 1 vs 0 -> gamma* = 1
    s = w.sample(200, gen())
    gp = F.normalize(w.prompts() @ w.ground_truth()[1].T, dim=-1)
    torch.testing.assert_close(prompt_margins(ground_truth_embed(w, s)[0], gp, s.labels), torch.ones(200), atol=1e-5, rtol=0)


def test_fit_cosine_schedule_ends_at_zero_lr():
    w = World(WorldConfig(), 0)
    model = linear_clip(w.cfg, 8, tau=0.1, seed=0)
    x, y = w.sample(64, gen()).x, w.sample(64, gen()).y
    hist = fit(model, make_loss("clip"), fixed_batches(x, y, 16), steps=60, lr=0.05, opt="adam", schedule="cosine")
    before = weights(model)[0].clone()
    fit(model, make_loss("clip"), fixed_batches(x, y, 16), steps=1, lr=0.05, opt="adam", schedule="cosine")
    assert not torch.equal(before, weights(model)[0])                          # a 1-step cosine run steps at lr
    assert abs(hist[-1] - hist[-2]) < abs(hist[1] - hist[0])                   # the last steps barely move
    with pytest.raises(ValueError, match="schedule"):
        fit(model, make_loss("clip"), fixed_batches(x, y, 16), steps=1, lr=0.1, schedule="step")


def test_fit_reduces_loss_and_calls_back():
    w = World(WorldConfig(), 0)
    model = linear_clip(w.cfg, 16, tau=0.1, seed=0)
    seen = []
    hist = fit(model, make_loss("clip"), fresh_batches(w, 32, seed=1), steps=150, lr=0.1,
               callback=lambda step, m: seen.append(step), every=50)
    assert seen == [0, 50, 100, 150]
    assert np.mean(hist[-20:]) < 0.7 * np.mean(hist[:5])
    W, V = weights(model)
    assert W.shape == (16, 32) and V.shape == (16, 32)
    pop = population_loss(model, make_loss("clip"), w, 32, 2048, seed=2)
    assert abs(pop - np.mean(hist[-20:])) < 0.5
    with pytest.raises(ValueError, match="opt"):
        fit(model, make_loss("clip"), fresh_batches(w, 8, 0), steps=1, lr=0.1, opt="lbfgs")


def test_train_protocol_is_deterministic_and_tracks():
    cfg = WorldConfig()
    w1, m1, traj = train_protocol(cfg, 0.1, seed=3, steps=40, track_points=4)
    _, m2, _ = train_protocol(cfg, 0.1, seed=3, steps=40, track_points=4)
    assert [t["step"] for t in traj] == [0, 10, 20, 30, 40]
    assert {"ratio_img", "ratio_txt", "align"} <= traj[0].keys()
    torch.testing.assert_close(weights(m1)[0], weights(m2)[0])                 # CPU runs are reproducible
    assert m1.logit_scale_value().item() == pytest.approx(10.0) and w1.cfg == cfg
    w3, m3, _ = train_protocol(cfg, 0.1, seed=3, steps=40, track_points=4, rep=1)   # a replicate: same world, other run
    torch.testing.assert_close(w3.G, w1.G)
    assert not torch.allclose(weights(m3)[0], weights(m1)[0])


# ----------------------------------------------------------------------------- derivations
def _gap_config(B: int, s_neg: float, gap: torch.Tensor):
    """Embeddings with scores s_ij = s_neg + gap * [i == j]: img = I_B, txt = s_neg 1 1^T + gap I."""
    img = torch.eye(B, dtype=torch.float64)
    txt = s_neg * torch.ones(B, B, dtype=torch.float64) + gap * torch.eye(B, dtype=torch.float64)
    return img, txt


@pytest.mark.parametrize("B,tau_v,gap_v", [(2, 0.1, 0.3), (8, 0.05, 0.2), (32, 0.01, 0.05), (16, 0.2, 1.0)])
def test_gap_gradient_matches_autograd(B, tau_v, gap_v):
    d = D.gap_gradient()
    gap = torch.tensor(gap_v, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(*_gap_config(B, -0.3, gap), 1 / tau_v)         # symmetric average; both directions equal
    (grad,) = torch.autograd.grad(loss, gap)
    subs = {D.B: B, D.tau: tau_v, D.gap: gap_v}
    assert loss.item() == pytest.approx(float(d["loss"].subs(subs)), rel=1e-10)
    assert grad.item() == pytest.approx(float(d["dloss"].subs(subs)), rel=1e-8)
    assert abs(grad.item()) <= float(d["envelope"].subs(subs)) * (1 + 1e-12)


def test_gap_gradient_decay_and_stall():
    d = D.gap_gradient()
    assert d["ratio_limit"] == 1                                               # |grad| ~ (B-1) e^{-gap/tau} / tau
    assert sp.simplify(d["stall_gap"] - d["stall_gap_closed"]) == 0 or all(
        abs(float((d["stall_gap"] - d["stall_gap_closed"]).subs({D.B: b, D.tau: tv, D.eps: e}))) < 1e-9
        for b, tv, e in [(32, 0.01, 0.1), (8, 0.2, 0.5)])
    for tv in (0.01, 0.05, 0.2):                                               # at the stall gap, |grad| = eps
        subs = {D.B: 32, D.tau: tv, D.eps: 0.01}
        g_stall = float(d["stall_gap"].subs(subs))
        assert float(-d["dloss"].subs({**subs, D.gap: g_stall})) == pytest.approx(0.01, rel=1e-8)
    # stall gap / tau is nearly tau-independent: linear in tau up to the log factor
    f = sp.lambdify((D.B, D.tau, D.eps), d["stall_gap"])
    assert f(32, 0.2, 1e-3) / f(32, 0.01, 1e-3) == pytest.approx(20 * math.log(31 / 2e-4) / math.log(31 / 1e-5), rel=1e-3)


def test_pos_penalty_stationary_set():
    d = D.pos_penalty_stationary()
    a, b, c, e, mu, sx, sz = d["symbols"]
    assert d["stationary"] == [{a: c, b: 0, e: 0}]
    # closed-form R against clipcore's pair_penalty on a large sample of 1-d embeddings
    g = gen(8)
    n, vals = 200_000, {a: 0.7, b: 0.4, c: 0.2, e: -0.5, mu: 1.3, sx: 1.5, sz: 0.8}
    z = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    xi, zeta0 = 1.5 * torch.randn(n, generator=g).double(), 0.8 * torch.randn(n, generator=g).double()
    f = 0.7 * z + 0.4 * xi
    gg = 0.2 * z - 0.5 * (1.3 * z + zeta0)
    assert pair_penalty(f[:, None], gg[:, None]).item() == pytest.approx(float(d["R"].subs(vals)), rel=0.01)


@pytest.mark.parametrize("over_tau", [False, True])
def test_neg_penalty_stationary_margin_matches_optimisation(over_tau):
    d = D.neg_penalty_margin(over_tau)
    tau_v, lam_v = 0.05, (0.5 if not over_tau else 0.05)
    subs = {D.tau: tau_v, D.lam: lam_v}
    a = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    def objective(pairs):
        emb = torch.stack([a, -a])[:, None]                                    # f = g = a z, z = +-1
        return contrastive_loss(emb, emb, 1 / tau_v, reg_lambda=lam_v, reg_pairs=pairs, reg_over_tau=over_tau)
    assert objective("neg_pull").item() == pytest.approx(float(d["objective_neg"].subs({**subs, D.a: 0.6})), rel=1e-10)
    (grad,) = torch.autograd.grad(objective("neg_pull"), a)
    assert grad.item() == pytest.approx(float(d["d_neg"].subs({**subs, D.a: 0.6})), rel=1e-8)
    opt = torch.optim.LBFGS([a], lr=0.5, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)
    def closure():
        opt.zero_grad(); loss = objective("neg_pull"); loss.backward(); return loss
    opt.step(closure)
    assert 2 * a.item() ** 2 == pytest.approx(float(d["margin"].subs(subs)), rel=1e-5)   # margin s+ - s- = 2a^2
    both = objective("both_pull")                                                   # pos penalty is 0 here: same objective
    assert both.item() == pytest.approx(objective("neg_pull").item(), rel=1e-12)
    # the positive-only penalty is 0 on this family: its derivative is CLIP's, negative for every a > 0
    assert all(float(d["d_pos"].subs({**subs, D.a: v})) < 0 for v in (0.1, 0.5, 2.0))


def test_suppression_gradients_match_clipcore():
    d = D.suppression_gradients()
    tau_v, lam_v, t_v = 0.05, 0.2, 0.7
    t = torch.tensor(t_v, dtype=torch.float64, requires_grad=True)
    e = torch.eye(5, dtype=torch.float64)
    img = F.normalize(torch.stack([e[0] + t * e[1], -e[0] + t * e[2]]), dim=-1)
    txt = F.normalize(torch.stack([e[0] + t * e[3], -e[0] + t * e[4]]), dim=-1)
    loss = contrastive_loss(img, txt, 1 / tau_v, reg_lambda=lam_v, reg_pairs="pos", reg_over_tau=True)
    (grad,) = torch.autograd.grad(loss, t)
    subs = {D.tau: tau_v, D.lam: lam_v, D.t: t_v}
    assert loss.item() == pytest.approx(float(d["objective"].subs(subs)), rel=1e-10)
    assert grad.item() == pytest.approx(float((d["d_clip"] + d["d_pen"]).subs(subs)), rel=1e-8)
    assert d["ratio_limit_tau0"] == 0                                          # CLIP's pull on t vanishes vs Reg's


def test_bayes_square_predictor_symbolic_and_sampled():
    d = D.bayes_square_predictor()
    assert sp.simplify(d["argmin"] - d["expected"]) == sp.zeros(2, 1)
    # sampled: least squares x -> y approaches H [z; E(zeta|z)] (linear in x for one-hot z, noise-free)
    w = World(WorldConfig(zeta_mean=2.0, zeta_mean_kind="class", noise=0.0), 0)
    tr, te = w.sample(20_000, gen(1)), w.sample(500, gen(2))
    W = torch.linalg.lstsq(tr.x.double(), tr.y.double()).solution
    pred = (te.x.double() @ W).float()
    bayes = w.bayes_square_predictor(te.x)
    assert (pred - bayes).norm(dim=1).mean() < 0.1 * bayes.norm(dim=1).mean()


def test_square_zero_shot_condition_and_error():
    d = D.square_zero_shot()
    assert sp.simplify(d["score_diff"] - d["score_diff_expected"]) == 0
    thr = float(d["m_sigma_threshold"])
    assert thr == pytest.approx(1.6418, abs=1e-3)
    m, s = d["symbols"]
    assert float(d["p_lose"].subs({m: thr, s: 1})) == pytest.approx(1 / 3, abs=1e-10)
    # the exact integral vs Monte Carlo over prompt draws, and >= 1/3 >= 1/(3K) above the threshold
    g = np.random.default_rng(0)
    K, ms = 10, 2.0
    u = g.standard_normal((20_000, K))                                         # <u, zeta_k> / sigma_p
    mc = np.mean(np.max(np.delete(u, 0, axis=1), axis=1) - u[:, 0] > 1 / ms)
    assert D.square_zero_shot_error(K, ms) == pytest.approx(mc, abs=0.01)
    assert D.square_zero_shot_error(2, thr) == pytest.approx(1 / 3, abs=1e-6)
    assert D.square_zero_shot_error(K, thr) >= 1 / 3 >= 1 / (3 * K)


def test_bayes_predictor_error_matches_condition_per_world():
    """Noise-free world: class c is misclassified by H[z; m u] iff max_{k != c} <m u, zeta_k - zeta_c> > 1."""
    cfg = WorldConfig(zeta_mean=2.0, prompt_zeta=1.0, noise=0.0)
    for seed in range(3):
        w = World(cfg, seed)
        proj = 2.0 * w.prompt_zeta @ w.u                                       # (K,) <m u, zeta_k>
        wrong = torch.tensor([bool((torch.cat([proj[:c], proj[c + 1:]]) - proj[c] > 1).any()) for c in range(cfg.K)])
        s = w.sample(2000, gen(seed))
        err = topr_error(w.bayes_square_predictor(s.x), s.labels, w.prompts())
        assert err == pytest.approx(wrong.double()[s.labels].mean().item(), abs=1e-9)


# ----------------------------------------------------------------------------- experiments/common.py
def _common():
    path = Path(__file__).resolve().parents[1] / "experiments" / "common.py"
    spec = importlib.util.spec_from_file_location("experiments_common_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_ci_verdicts_and_results_table(tmp_path):
    c = _common()
    ci = c.mean_ci([1.0, 1.1, 1.2])
    assert ci["mean"] == pytest.approx(1.1) and ci["half"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert c.verdict_from_ci(ci, lower=0.0) == "holds" and c.verdict_from_ci(ci, 0.5, 2.0) == "holds"
    assert c.verdict_from_ci(ci, lower=1.0) == "inconclusive"
    assert c.verdict_from_ci(ci, upper=0.5) == "fails" and c.verdict_from_ci(ci, lower=2.0) == "fails"
    assert c.verdict_from_ci(c.mean_ci([0.0, 0.0, 0.0]), lower=0.0) == "inconclusive"  # 0 +- 0 on the bound never fails
    assert c.verdict_from_ci(c.mean_ci([0.0, 0.0, 0.0]), lower=0.8) == "fails"         # 0 +- 0 against "> 0.8" does
    assert c.verdict_from_ci(c.mean_ci([3.0, 3.0, 3.0]), lower=0.0) == "holds"
    for cid, v in (("THY-10", "holds"), ("THY-2", "fails")):
        (tmp_path / f"{cid}.json").write_text(json.dumps({"id": cid, "claim": "c|x", "prediction": "p", "threshold": "t",
                                                          "measured_text": "1 ± 0", "verdict": v, "tier": "quick"}))
    (tmp_path / "other.json").write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "THY-2.json").write_text(json.dumps({"id": "THY-2", "claim": "c", "prediction": "p",
                                                               "measured_text": "2 ± 0", "verdict": "holds", "tier": "full"}))
    out = c.write_results_md(tmp_path, tmp_path / "R.md")
    text = out.read_text()
    assert text.index("THY-2 ") < text.index("2 ± 0") < text.index("THY-10 ") and "c\\|x" in text
    assert "| controls |" in text and "not yet on the calibrated protocol" in text and "## What changed" in text
    assert "2 claims at the quick tier: 1 holds, 1 fails" in text and "1 claims at the full tier: 1 holds" in text
    assert c.write_results_md(tmp_path / "none", tmp_path / "S.md") is None


def test_protocol_controls_headroom_bounds_and_history(tmp_path, monkeypatch):
    c = _common()
    # paired vs unpaired: a shared per-seed offset cancels
    a, b = [10.0, 20.0, 30.0], [9.0, 19.1, 28.9]
    assert c.verdict_from_ci(c.paired_ci(a, b), lower=0.0) == "holds"
    assert c.verdict_from_ci(c.mean_ci(a), lower=c.mean_ci(b)["hi"]) != "holds"
    with pytest.raises(ValueError, match="share their seeds"):
        c.paired_ci([1.0], [1.0, 2.0])
    assert c.family_conf(5) == pytest.approx(0.99)
    # controls: the cell's exact prefix, and the final verdict
    ok = c.controls("holds", "inconclusive")
    assert ok["text"].startswith("pos: detected; neg: clean")
    assert c.controls("inconclusive", "inconclusive")["text"].startswith("pos: missed; neg: clean")
    assert c.controls("holds", "holds")["text"].startswith("pos: detected; neg: flagged")
    assert c.controls("holds", "fails", neg_clean=("inconclusive", "fails"))["neg_clean"]
    room = c.headroom("err", [0.3, 0.4], floor=0.0, ceiling=0.9, margin=0.05)
    floor = c.headroom("err", [0.0, 0.01], floor=0.0, margin=0.05)
    assert room["ok"] and not floor["ok"] and "at its floor" in floor["text"]
    assert c.final_verdict("fails", ok, [room]) == "fails"
    assert c.final_verdict("fails", ok, [floor]) == "untestable here"          # a floor never refutes
    assert c.final_verdict("holds", c.controls("inconclusive", "inconclusive")) == "untestable here"
    assert c.final_verdict("holds", c.controls("holds", "holds")) == "untestable here"
    assert c.all_of("holds", "untestable here") == "untestable here" and c.all_of("holds", "fails") == "fails"
    # a bound is tested as a bound: a gap far under its envelope holds whatever its rate
    gaps = [[0.1, 0.11, 0.09], [0.01, 0.012, 0.011]]           # falls like n^-1 (faster than the envelope)
    env = [[0.3, 0.3, 0.3], [0.1, 0.1, 0.1]]
    assert c.bound_verdict(gaps, env)[0] == "holds"
    assert c.bound_verdict([[0.5, 0.52, 0.51]], [[0.3, 0.3, 0.3]])[0] == "fails"
    # pilot seeds never decide; holds is refused when a check says untestable
    monkeypatch.setattr(c, "RESULTS", tmp_path)
    kw = dict(claim="c", prediction="p", threshold="t", measured=c.mean_ci([1.0, 2.0]))
    with pytest.raises(ValueError, match="pilot"):
        c.save_result("X-1", verdict="holds", seeds=c.pilot_seeds(2), **kw)
    with pytest.raises(ValueError, match="untestable"):
        c.save_result("X-1", verdict="holds", controls=ok, checks=[floor], **kw)
    rec = c.save_result("THY-2", verdict="untestable here", controls=ok, checks=[floor], changed="floor", **kw)
    assert rec["protocol"] == 2 and rec["preregistered"]["file"] == Path(__file__).name
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps({"verdicts": {"THY-2": {"quick": {"verdict": "fails", "measured": "0 ± 0"}}}}))
    assert c.what_changed([rec], hist) == ["- **THY-2** (quick): fails → **untestable here** (was: 0 ± 0). floor"]
    assert "pos: detected; neg: clean; headroom: err" in c.controls_cell(rec)
