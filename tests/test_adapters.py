"""open_clip towers behind clipcore's CLIP interface; --pretrained from .pt/.bin/.safetensors with key errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipcore import checkpoint as ckpt_io
from clipcore.adapters import OpenCLIP, load_pretrained
from clipcore.models import CLIP, get_config
from clipcore.train import TrainConfig, train

NAME = "ViT-S-32"   # the smallest open_clip ViT config: builds in about a second


@pytest.fixture(scope="module")
def oc():
    torch.manual_seed(0)
    return OpenCLIP(NAME).eval()


def test_interface_matches_clipcore(oc):
    tokens = oc.tokenizer(["a photo of a cat.", "a dog."])
    images = torch.randn(2, 3, *[oc.input_size()[0]] * 2)
    with torch.no_grad():
        img, txt, scale = oc(images, tokens)
        raw = oc.encode_image(images, normalize=False)
    assert img.shape == txt.shape == (2, oc.model.text_projection.shape[1]) and oc.input_size() == (224, 3)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), img)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_open_clip_weights_from_a_pt_file_with_ddp_prefix(oc, tmp_path):
    sd = {"module." + k: v + 1 for k, v in oc.model.state_dict().items()}   # open_clip's training checkpoint form
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "w.pt")
    fresh = OpenCLIP(NAME)
    load_pretrained(fresh, tmp_path / "w.pt")
    for k, v in oc.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[k], v + 1), k


def test_missing_and_unexpected_keys_are_listed(oc, tmp_path):
    sd = dict(oc.model.state_dict())
    sd.pop("logit_scale")
    sd["visual.extra_head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.bin")
    with pytest.raises(ValueError, match=r"missing keys 1 \(logit_scale\); unexpected keys 1 \(visual.extra_head.weight\)"):
        load_pretrained(OpenCLIP(NAME), tmp_path / "w.bin")
    with pytest.raises(ValueError, match="does not fit the model CLIP: missing keys"):
        load_pretrained(CLIP(get_config("tiny")), tmp_path / "w.bin")


def test_clipcore_safetensors(tmp_path):
    torch.manual_seed(1)
    src = CLIP(get_config("tiny-vit"))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(2)
    dst = CLIP(get_config("tiny-vit"))
    load_pretrained(dst, tmp_path / "m.safetensors")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_train_an_open_clip_model_and_load_it_back(tmp_path):
    """--model open_clip:NAME trains in the loop; its checkpoint loads as a model a method can take as base."""
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 80 * k + 20 * i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    out = train(TrainConfig(logs=str(tmp_path), name="oc", model=f"open_clip:{NAME}", train_data=str(tmp_path / "data"),
                            batch_size=4, max_steps=1, warmup=1, log_every=1))
    assert len(out["losses"]) == 1 and out["losses"][0] > 0
    model, tokenizer, ckpt = ckpt_io.load_model(tmp_path / "oc" / "checkpoints" / "latest.pt")
    assert isinstance(model, OpenCLIP) and ckpt["open_clip_model"] == NAME
    assert model.encode_text(tokenizer(["a cat."])).shape[-1] == model.encode_image(torch.zeros(1, 3, 224, 224)).shape[-1]
