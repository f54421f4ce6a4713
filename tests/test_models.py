import dataclasses
import math

import pytest
import torch

from clipcore.models import CLIP, PRESETS, build_model, config_from_dict, get_config, num_params, register


@pytest.mark.parametrize("name", ["tiny", "tiny-vit"])
def test_presets_encode_normalised(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    cfg = model.cfg
    images = torch.randn(3, cfg.vision.in_channels, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(1, cfg.text.vocab_size, (3, cfg.text.context_length))
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (3, cfg.embed_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.encode_image(images, normalize=False).norm(dim=-1).sub(1).abs().max() > 1e-3


def test_base_matches_vit_b32_size():
    # open_clip's ViT-B-32 has 151,277,313 parameters; clipcore's base preset has the same sizes.
    assert num_params(build_model("base")) == 151_277_313


def test_text_pools_at_eot_causally():
    """The EOT embedding depends only on tokens up to EOT: padding after it changes nothing."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    a = torch.tensor([[5, 6, 7, 9, 0, 0, 0, 0]])
    b = a.clone()
    b[0, 5:] = 0  # identical padding, different length of the pad tail is irrelevant
    c = torch.tensor([[5, 6, 7, 9, 0, 0]])
    torch.testing.assert_close(model.encode_text(a), model.encode_text(c))
    d = a.clone(); d[0, 1] = 8  # changing a token before EOT changes the embedding
    assert (model.encode_text(a) - model.encode_text(d)).abs().max() > 1e-4


def test_logit_scale_clamped_at_100():
    model = build_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    s = model.logit_scale_value()
    assert s.item() == pytest.approx(100.0)
    s.backward()
    assert model.logit_scale.grad.item() == 0.0


def test_vector_towers_and_linear_map():
    cfg = get_config("tiny", embed_dim=8, normalize=False, tokenizer="none",
                     vision__kind="linear", vision__input_dim=12, text__kind="mlp", text__input_dim=10, text__width=16, text__layers=2)
    model = CLIP(cfg)
    x, y = torch.randn(4, 12), torch.randn(4, 10)
    w = model.visual.net.weight
    torch.testing.assert_close(model.encode_image(x), x @ w.T)  # f(x) = W x, no bias
    assert model.encode_text(y).shape == (4, 8)


def test_overrides_registry_and_roundtrip():
    cfg = get_config("tiny-vit", vision__pool="mean", embed_dim=64)
    assert cfg.vision.pool == "mean" and cfg.embed_dim == 64 and get_config("tiny-vit").vision.pool == "cls"
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        get_config("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("tiny")(lambda: cfg)
    assert {"tiny", "small", "base"} <= set(PRESETS)


def test_bad_shapes_and_options():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_model(get_config("tiny-vit", vision__image_size=30))
    with pytest.raises(ValueError, match="vision.kind"):
        build_model(get_config("tiny", vision__kind="resnet"))
    model = build_model("tiny")
    with pytest.raises(ValueError, match="text tokens must be"):
        model.encode_text(torch.zeros(2, 40, dtype=torch.long))
