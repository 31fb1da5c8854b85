"""Models (ImageBind; OpenCLIP for image and text), weights, per-modality decoding: media -> unit vectors."""
from __future__ import annotations

import importlib

_WHERE = {
    "Embedder": "embedder",
    "OpenCLIPEmbedder": "openclip",
    "ImageBindConfig": "imagebind",
    "ImageBindModel": "imagebind",
    "load_imagebind": "weights",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    # Lazy: importing xsearch.engine must not pull in torch until a model is needed.
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
