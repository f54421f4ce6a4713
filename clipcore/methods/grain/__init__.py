"""GRAIN in one place: the method (:mod:`.method`: Config, the region-query model, its losses, ``build``,
``load``), its region-annotation format and loader (:mod:`.annotations`), PartWorld, the part-based synthetic world
with known parts and boxes (:mod:`.partworld`, also ``python -m clipcore.methods.grain.partworld``), the zero-shot
modes (:mod:`.zeroshot`), box matching (:mod:`.boxes`) and training to a plateau (:mod:`.plateau`).

``clipcore.methods.grain.X`` reads ``X`` of :mod:`.method` (``grain.Config``, ``grain.image_outputs``, ...); the
package imports nothing until then, so ``python -m clipcore.methods.grain.partworld`` runs without the model code.
"""
from __future__ import annotations


def __getattr__(name: str):
    import importlib
    if name.startswith("__") or name in _SUBMODULES:   # a submodule not imported yet: the import system loads it
        raise AttributeError(name)
    return getattr(importlib.import_module("clipcore.methods.grain.method"), name)


_SUBMODULES = ("method", "annotations", "partworld", "zeroshot", "boxes", "plateau")
