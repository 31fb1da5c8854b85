"""Images: the original ImageBind/CLIP pipeline, plus the PIL helpers other 2-D loaders share."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from xsearch.errors import MediaError

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decoded pixels we accept before calling a file a decompression bomb (about 16k x 16k).
MAX_PIXELS = 256_000_000


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, or raise MediaError saying why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise MediaError(path, f"image is {img.width}x{img.height} pixels, larger than the {MAX_PIXELS:,}-pixel limit")
            img.load()
        return img
    except MediaError:
        raise
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except UnidentifiedImageError as e:
        raise MediaError(path, "not a readable image (unknown or corrupt format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(path, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(path, f"corrupt or truncated image ({e})") from e


def resize_short_side(img: Image.Image, size: int = IMAGE_SIZE, resample: int = Image.BICUBIC) -> Image.Image:
    """Scale so the short side is ``size`` (long side ``int(size * long / short)``, as torchvision does)."""
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, resample)


def center_crop(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Centre crop to ``size`` x ``size`` with torchvision's rounding of the offsets."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image of any size -> the model's normalised (3, 224, 224) tensor."""
    img = center_crop(resize_short_side(img))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as the original does: RGB (alpha dropped), bicubic, centre crop, CLIP normalisation."""
    img = open_image(path)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated: the first frame stands for the file
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert("RGB") would clip 16-bit grey to white; scale it to 8 bits instead.
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(np.nanmax(a)), 1.0)
        img = Image.fromarray(np.clip(np.nan_to_num(a) / hi * 255.0, 0, 255).astype(np.uint8), "L")
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise MediaError(path, f"cannot convert image to RGB ({e})") from e
    return image_to_tensor(rgb)
