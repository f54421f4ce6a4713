"""clipcore: contrastive vision-language training from scratch.

The Python front door is named as open_clip's (clipcore.api): ``create_model_and_transforms``, ``create_model``,
``get_tokenizer``, ``build_zero_shot_classifier``, ``list_models``; ``PreprocessCfg`` and ``ImageTransform`` are
clipcore.images'. They are imported on first use, so ``import clipcore`` itself loads nothing heavy.
"""
__version__ = "0.1.0"

_API = ("create_model_and_transforms", "create_model", "get_tokenizer", "build_zero_shot_classifier", "list_models")
_IMAGES = ("PreprocessCfg", "ImageTransform")
__all__ = [*_API, *_IMAGES]


def __getattr__(name: str):
    if name in _API:
        from clipcore import api
        return getattr(api, name)
    if name in _IMAGES:
        from clipcore import images
        return getattr(images, name)
    raise AttributeError(f"module 'clipcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
