"""open_clip towers behind clipcore's CLIP interface; --pretrained from .pt/.bin/.safetensors with key errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipcore.adapters import OpenCLIP, load_pretrained
from clipcore.methods import load_model
from clipcore.models import CLIP, get_config
from clipcore.train import TrainConfig, train

NAME = "ViT-S-32"   # the smallest open_clip ViT config: builds in about a second
SMALL = "ViT-S-32-alt"   # ViT-S-32 with a narrower text tower (43 M parameters, not 63 M): end-to-end runs


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


def test_train_an_open_clip_model_then_eval_reco_and_arf_on_it(tmp_path, capsys):
    """--model open_clip:NAME trains in the loop; its checkpoint loads back, is evaluated by clipcore.eval, and is
    the frozen base of RECO and theta0 of ARF (each a step), whose checkpoints evaluate too (these read a
    CLIP's .cfg / model_config before, an AttributeError / KeyError for an open_clip tower)."""
    import clipcore
    from clipcore.eval import main as eval_main
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 80 * k + 20 * i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    data = str(tmp_path / "data")
    out = train(TrainConfig(logs=str(tmp_path), name="oc", model=f"open_clip:{SMALL}", train_data=data,
                            batch_size=4, max_steps=1, warmup=1, log_every=1))
    assert len(out["losses"]) == 1 and out["losses"][0] > 0
    base = tmp_path / "oc" / "checkpoints" / "latest.pt"
    model, tokenizer, ckpt = load_model(base)
    assert isinstance(model, OpenCLIP) and ckpt["open_clip_model"] == SMALL
    assert ckpt["tokenizer"] == {"kind": "open_clip", "name": SMALL, "context_length": 77}
    assert ckpt["preprocess"]["image_size"] == 224 and ckpt["preprocess"]["interpolation"] == "bicubic"
    assert model.encode_text(tokenizer(["a cat."])).shape[-1] == model.encode_image(torch.zeros(1, 3, 224, 224)).shape[-1]
    assert torch.equal(clipcore.get_tokenizer(str(base))(["a cat."]), tokenizer(["a cat."]))
    for method, extra in (("reco", dict(options={"k": 2, "heads": 2})), ("arf", dict(options={"mode": "flyp"}))):
        r = train(TrainConfig(logs=str(tmp_path), name=method, method=method, init=str(base), train_data=data,
                              batch_size=4, max_steps=1, warmup=1, log_every=1, **extra))
        assert len(r["losses"]) == 1 and np.isfinite(r["losses"][0])
    for run in ("oc", "reco", "arf"):
        eval_main(["--checkpoint", str(tmp_path / run / "checkpoints" / "latest.pt"), "--data", data, "--batch-size", "4"])
        printed = capsys.readouterr().out
        m = json.loads(printed[printed.index("{"):])
        assert 0 <= m["acc1"] <= 1 and "acc5" not in m, run                 # 2 classes: no top-5
        assert run != "reco" or 0 <= m["base/acc1"] <= 1                     # RECO: refined and frozen base


def test_arf_head_modes_train_the_image_tower_of_an_open_clip_base(oc):
    """ARF's ft/lpft train the image tower and the head only, on any encoder (was: model.clip.text, an
    AttributeError for the open_clip adapter)."""
    from clipcore.methods.arf import Finetuner, set_trainable
    model = Finetuner(oc, torch.zeros(3, 8))
    set_trainable(model, "ft")
    trainable = {n.split(".")[0] if n == "head" else ".".join(n.split(".")[:3]) for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"head", "clip.model.visual"}, trainable
    set_trainable(model, "flyp")
    assert all(p.requires_grad for p in model.clip.parameters())
