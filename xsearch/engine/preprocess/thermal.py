"""Thermal images -> ImageBind's (1, 224, 224) input in [0, 1].

ImageBind publishes no thermal loader; it was trained on 8-bit greyscale
thermal frames (LLVIP). The recipe, documented in docs/preprocessing.md:

- 8-bit single channel: resize (PIL bicubic, short side 224), centre crop,
  divide by 255 (what torchvision's Resize + CenterCrop + ToTensor give);
- 16-bit (or 32-bit integer / float) single channel: scaled to [0, 1] by the
  image's own min..max (a constant image becomes all zeros), then resized
  bicubic as a float map, centre cropped and clipped to [0, 1] (bicubic
  overshoots at edges);
- colour or palette images (e.g. a greyscale JPEG saved as RGB): converted
  to luminance with PIL's ``convert("L")`` (ITU-R 601-2: 0.299 R + 0.587 G +
  0.114 B), alpha dropped, then as 8-bit;
- no mean/std normalisation.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from xsearch.engine.preprocess.depth import resize_crop_map
from xsearch.engine.preprocess.image import IMAGE_SIZE, open_image, resize_center_crop
from xsearch.errors import MediaError

EIGHT_BIT_MAX = 255.0
# Single-channel modes deeper than 8 bits: scaled by the image's own range.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def load_thermal(path: str | os.PathLike) -> torch.Tensor:
    """A thermal image file -> float32 tensor (1, 224, 224) with values in [0, 1]."""
    img = open_image(path)  # bounds decoded size, maps decode errors to MediaError
    if img.mode in WIDE_MODES:
        return resize_crop_map(min_max_scale(np.asarray(img)), Image.BICUBIC).clamp_(0.0, 1.0)
    if img.mode != "L":
        img = _to_luminance(path, img)
    img = resize_center_crop(img, IMAGE_SIZE, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / EIGHT_BIT_MAX)[None]


def min_max_scale(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite values' min..max; constant (or non-finite-only) maps -> zeros."""
    a = arr.astype(np.float32)  # exact for 16-bit values, half the memory of float64
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.float32)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return np.where(finite, (a - np.float32(lo)) / np.float32(hi - lo), np.float32(0.0)).astype(np.float32)


def _to_luminance(path: str | os.PathLike, img: Image.Image) -> Image.Image:
    try:
        return img.convert("L")
    except (OSError, ValueError) as e:
        raise MediaError(path, f"cannot read mode {img.mode} image as a greyscale thermal image ({e})") from e
