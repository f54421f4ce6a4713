"""Every model class of clipcore implements the one Encoder protocol (clipcore.encoder), so evaluation, memories
and the methods take any of them; the protocol's methods accept the ``normalize`` keyword everywhere."""
import importlib
import inspect

import pytest
import torch

from clipcore.encoder import Encoder
from clipcore.models import CLIP, get_config

MODELS = ("clipcore.models.CLIP", "clipcore.adapters.OpenCLIP", "clipcore.methods.reco.RECO",
          "clipcore.methods.grain.GrainModel", "clipcore.methods.arf.Finetuner")
MEMBERS = ("encode_image", "encode_text", "logit_scale_value", "input_size")


@pytest.mark.parametrize("path", MODELS)
def test_every_model_class_implements_the_encoder_protocol(path):
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    missing = [m for m in MEMBERS if not callable(getattr(cls, m, None))]
    assert not missing, f"{path} lacks {missing} of clipcore.encoder.Encoder"
    for m in ("encode_image", "encode_text"):
        assert "normalize" in inspect.signature(getattr(cls, m)).parameters, f"{path}.{m} takes no normalize"


def test_an_instance_is_an_encoder_and_a_plain_module_is_not():
    model = CLIP(get_config("tiny"))
    assert isinstance(model, Encoder) and not isinstance(torch.nn.Linear(2, 2), Encoder)
    assert model.input_size() == (32, 3) and model.logit_scale_value().item() == pytest.approx(1 / 0.07, rel=1e-5)
