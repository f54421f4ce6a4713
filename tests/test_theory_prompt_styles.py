"""theory.world.World.prompts with given prompt styles (THY-5 averages zero-shot errors over fresh style draws)."""
import pytest
import torch

from theory.derivations import square_zero_shot_error
from theory.measures import topr_error
from theory.world import World, WorldConfig


def test_prompts_with_given_styles():
    w = World(WorldConfig(prompt_zeta=1.0, noise=0.0), 0)
    K, kz = w.cfg.K, w.cfg.k_zeta
    styles = torch.randn(K, kz, generator=torch.Generator().manual_seed(3))
    coords = w.prompts(styles) @ w.H                                            # back to [e_k; zeta_k]
    torch.testing.assert_close(coords[:, :K], torch.eye(K), atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[:, K:], styles, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.prompts(), w.prompts(w.prompt_zeta))          # default: the world's own styles
    with pytest.raises(ValueError, match="styles must be"):
        w.prompts(torch.zeros(K, kz + 1))


def test_bayes_error_averaged_over_style_draws_matches_theory():
    # the Bayes square predictor's zero-shot error, averaged over prompt-style draws, is the closed form's expectation
    m = 0.5
    w = World(WorldConfig(zeta_mean=m, prompt_zeta=1.0, noise=0.0), 0)
    s = w.sample(2000, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    errs = [topr_error(w.bayes_square_predictor(s.x), s.labels, w.prompts(torch.randn(w.cfg.K, w.cfg.k_zeta, generator=g)))
            for _ in range(200)]
    assert abs(sum(errs) / len(errs) - square_zero_shot_error(w.cfg.K, m)) < 0.04
