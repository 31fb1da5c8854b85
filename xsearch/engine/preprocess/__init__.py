"""Per-modality decoding and preprocessing: one file (or text) -> the model's input tensor.

Every loader raises :class:`xsearch.errors.MediaError` naming the file and the
reason; none returns garbage for a corrupt file.

    load_image(path)   -> (3, 224, 224)          load_audio(path)   -> (3, 1, 128, 204)
    load_video(path)   -> (15, 3, 2, 224, 224)   load_video_audio(path) -> (3, 1, 128, 204) | None
    load_depth(path)   -> (1, 224, 224)          load_thermal(path) -> (1, 224, 224)
    load_imu(path)     -> (W, 6, 2000)           tokenize(texts)    -> (N, 77); load_text(path) -> str

The submodules are imported on first use, so a text query never imports the
audio and video decoders.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "load_image": "image",
    "load_audio": "audio",
    "decode_audio": "audio",
    "load_video": "video",
    "load_video_audio": "video",
    "load_depth": "depth",
    "load_thermal": "thermal",
    "load_imu": "imu",
    "tokenize": "text",
    "load_text": "text",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
