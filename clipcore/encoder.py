"""The one interface every model of clipcore is used through: :class:`Encoder`.

clipcore's :class:`~clipcore.models.CLIP`, the open_clip adapter (:class:`~clipcore.adapters.OpenCLIP`) and the
method wrappers (RECO's refined encoder, GRAIN's global image query, ARF's finetuner) implement it, so evaluation,
memories, the training loop and the methods' frozen bases take any of them; none of them reads a model's ``.cfg``
or a checkpoint's ``model_config`` unless it built that model itself. Checked structurally (``isinstance(model,
Encoder)`` tests that the methods exist); ``tests/test_imports.py`` checks every model class of the package.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Encoder(Protocol):
    def encode_image(self, images: Tensor, normalize: bool | None = True) -> Tensor:
        """(B, C, H, W) images (or (B, input_dim) vectors for vector towers) -> (B, D) embeddings."""

    def encode_text(self, text: Tensor, normalize: bool | None = True) -> Tensor:
        """(B, L) token ids (or (B, input_dim) vectors) -> (B, D) embeddings."""

    def logit_scale_value(self) -> Tensor:
        """The scalar 1/tau its scores are multiplied by (exp of the learned log-scale, clamped)."""

    def input_size(self) -> tuple[int, int]:
        """(image_size, in_channels) the image tower expects: what the data pipeline resizes to (the rest of the
        preprocessing is the checkpoint's record, clipcore.checkpoint.preprocess_of)."""
