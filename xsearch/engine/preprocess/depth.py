"""Depth maps -> ImageBind's (1, 224, 224) standardised disparity input.

ImageBind publishes no depth loader; it was trained on disparity maps
(SUN RGB-D, Kinect-like cameras). The recipe, documented in
docs/preprocessing.md:

1. read metric depth: a 16-bit (or 32-bit integer) single-channel PNG/TIFF in
   millimetres (``depth_m = value * scale``), a float TIFF in metres, or a
   ``.npy``/``.npz`` array (float: metres; integer: millimetres like a PNG);
2. mask invalid pixels (0, negative, NaN, inf); a map with none valid is an error;
3. clamp valid depth to [DEPTH_MIN_M, DEPTH_MAX_M], convert to disparity
   ``baseline * focal_length / depth``; invalid pixels get disparity 0;
4. standardise ``(disparity - DISPARITY_MEAN) / DISPARITY_STD``
   (invalid pixels therefore become INVALID_VALUE);
5. resize the float map so the short side is 224 (PIL mode "F", bilinear,
   which low-pass filters when shrinking) and centre crop 224 with the same
   rounding as images.
"""
from __future__ import annotations

import math
import numbers
import os
import zipfile

import numpy as np
import torch
from PIL import Image

from xsearch.engine.preprocess.image import IMAGE_SIZE, MAX_PIXELS, open_image, resize_center_crop
from xsearch.errors import MediaError, UsageError

# Camera defaults: the Kinect-like stereo model used to turn SUN RGB-D depth into disparity.
DEFAULT_SCALE = 0.001  # 16-bit depth images store millimetres
DEFAULT_BASELINE_M = 0.075
DEFAULT_FOCAL_LENGTH_PX = 518.86

# Valid depth is clamped to this range (metres) before the conversion: closer than
# 0.5 m or farther than 10 m is outside what indoor depth sensors measure reliably.
DEPTH_MIN_M = 0.5
DEPTH_MAX_M = 10.0

# Standardisation of disparity (pixels, default camera). Mean and std of
# K / z for depth z uniform on [DEPTH_MIN_M, DEPTH_MAX_M], K = 0.075 * 518.86:
#   mean = K * ln(max/min) / (max - min),  E[d^2] = K^2 / (min * max).
# See disparity_stats() which recomputes them.
DISPARITY_MEAN = 12.2713
DISPARITY_STD = 12.3403
# What an invalid pixel becomes: disparity 0 (infinitely far), standardised.
INVALID_VALUE = (0.0 - DISPARITY_MEAN) / DISPARITY_STD

NUMPY_SUFFIXES = (".npy", ".npz")
NPZ_KEY = "depth"
# PIL modes that hold one integer channel of more than 8 bits (read as millimetres).
INT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def disparity_stats(
    depth_min: float = DEPTH_MIN_M,
    depth_max: float = DEPTH_MAX_M,
    baseline: float = DEFAULT_BASELINE_M,
    focal_length: float = DEFAULT_FOCAL_LENGTH_PX,
) -> tuple[float, float]:
    """Mean and std of disparity for depth uniform on [depth_min, depth_max] (how the constants were made)."""
    k = baseline * focal_length
    mean = k * math.log(depth_max / depth_min) / (depth_max - depth_min)
    second_moment = k * k / (depth_min * depth_max)
    return mean, math.sqrt(second_moment - mean * mean)


def load_depth(
    path: str | os.PathLike,
    *,
    scale: float = DEFAULT_SCALE,
    baseline: float = DEFAULT_BASELINE_M,
    focal_length: float = DEFAULT_FOCAL_LENGTH_PX,
) -> torch.Tensor:
    """A depth map file -> float32 tensor (1, 224, 224) of standardised disparity.

    ``scale`` converts integer pixel values (16-bit PNG/TIFF, integer arrays) to
    metres; float data (TIFF mode "F", float ``.npy``/``.npz``) is already metres.
    """
    for name, value in (("scale", scale), ("baseline", baseline), ("focal_length", focal_length)):
        _check_positive(name, value)
    depth_m = read_depth_metres(path, scale=scale)
    disparity = depth_to_disparity(path, depth_m, baseline=baseline, focal_length=focal_length)
    standardised = (disparity - DISPARITY_MEAN) / DISPARITY_STD
    return resize_crop_map(standardised, Image.BILINEAR)


def read_depth_metres(path: str | os.PathLike, *, scale: float = DEFAULT_SCALE) -> np.ndarray:
    """The file's depth as a float32 (H, W) array in metres; invalid pixels are left as they are."""
    if os.fspath(path).lower().endswith(NUMPY_SUFFIXES):
        arr = _read_depth_array(path)
    else:
        arr = _read_depth_image(path)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) * np.float32(scale)
    return arr.astype(np.float32, copy=False)


def depth_to_disparity(
    path: str | os.PathLike | None, depth_m: np.ndarray, *, baseline: float, focal_length: float
) -> np.ndarray:
    """Metric depth -> disparity (pixels), clamped; invalid pixels (<= 0, NaN, inf) -> 0."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth_m) & (depth_m > 0)
    if not valid.any():
        raise MediaError(path, "depth map has no valid pixels (every value is 0, negative, NaN or infinite)")
    clamped = np.clip(np.where(valid, depth_m, 1.0), DEPTH_MIN_M, DEPTH_MAX_M)
    return np.where(valid, np.float32(baseline * focal_length) / clamped, 0.0).astype(np.float32)


def resize_crop_map(arr: np.ndarray, resample: int) -> torch.Tensor:
    """A 2-D float map -> (1, 224, 224) float32: short side 224 with PIL mode "F", then centre crop."""
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    img = resize_center_crop(img, IMAGE_SIZE, resample)
    return torch.from_numpy(np.array(img, dtype=np.float32))[None]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise UsageError(f"depth option {name} must be a positive number, got {value!r}")


def _read_depth_image(path: str | os.PathLike) -> np.ndarray:
    img = open_image(path)  # bounds decoded size, maps decode errors to MediaError
    if img.mode in INT_DEPTH_MODES or img.mode == "F":
        return np.asarray(img)
    bands = len(img.getbands())
    if img.mode in ("L", "P", "1"):
        raise MediaError(
            path,
            f"depth image is 8-bit (mode {img.mode}), which has no metric meaning; "
            "save depth as a 16-bit single-channel PNG/TIFF in millimetres or a float .npy in metres",
        )
    if bands == 1:
        raise MediaError(path, f"unsupported depth image mode {img.mode}; save a 16-bit PNG/TIFF in millimetres")
    raise MediaError(
        path,
        f"depth image has {bands} channels (mode {img.mode}); a depth map must be a single-channel "
        "16-bit PNG/TIFF in millimetres or a float .npy/.npz in metres (is this a colour image?)",
    )


def _read_depth_array(path: str | os.PathLike) -> np.ndarray:
    try:
        if os.fspath(path).lower().endswith(".npz"):
            arr = _read_npz(path)
        else:
            # mmap: only the header is read until the size has been checked
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        _check_array(path, arr.shape, arr.dtype)
        return np.array(arr)
    except MediaError:
        raise
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MediaError(path, f"not a readable NumPy file ({e})") from e


def _read_npz(path: str | os.PathLike) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        names = list(npz.files)
        if len(names) == 1:
            key = names[0]
        elif NPZ_KEY in names:
            key = NPZ_KEY
        else:
            raise MediaError(
                path, f".npz holds arrays {names}; store a single array or name the depth map {NPZ_KEY!r}"
            )
        shape, dtype = _npz_member_header(npz.zip, key)
        _check_array(path, shape, dtype)  # before decompressing a possibly huge member
        return npz[key]


def _npz_member_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = reader(f)
    return shape, dtype


def _check_array(path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 2:
        raise MediaError(
            path, f"depth array has shape {tuple(shape)}; expected a 2-D (height, width) array of depths"
        )
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or dtype == np.bool_:
        raise MediaError(path, f"depth array has dtype {dtype}; expected float metres (or integer millimetres)")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise MediaError(path, f"depth array is {shape[1]}x{shape[0]}, larger than the {MAX_PIXELS:,}-pixel limit")
    if 0 in shape:
        raise MediaError(path, f"depth array is empty (shape {tuple(shape)})")
