"""Per-modality decoding and preprocessing: one file (or text) -> the model's input tensor.

Every loader raises :class:`xsearch.errors.MediaError` naming the file and the
reason; none returns garbage for a corrupt file.
"""
from __future__ import annotations

from xsearch.engine.preprocess.image import load_image

__all__ = ["load_image"]
