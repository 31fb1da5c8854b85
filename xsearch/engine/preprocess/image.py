"""Images: the original ImageBind/CLIP pipeline, plus the PIL helpers other 2-D loaders share.

``load_image`` is exact (the original's pixels) unless fast decoding is asked for,
with ``load_image(path, fast=True)`` or, for the calling thread only, inside
``with fast_decode():`` (the indexer's decode workers do this). Fast decoding lets
libjpeg decode a large JPEG straight at 1/2, 1/4 or 1/8 of its size (PIL's
``Image.draft``, scaling in the DCT domain) as long as the decoded short side
stays at least ``DRAFT_MIN_SHORT_SIDE`` (336) pixels; the bicubic resize then
starts from that. It changes pixels, not geometry: embeddings stay within cosine
0.999 of the exact pipeline (``tests/test_fast_decode.py``; HUGE-model figures in
``bench/README.md``), and it makes loading a 1024x768 photo about 2.5x faster
(12 MP: far more). Other formats and smaller JPEGs decode exactly either way.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from xsearch.errors import MediaError

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decoded pixels we accept before calling a file a decompression bomb (about 16k x 16k).
MAX_PIXELS = 256_000_000
# Fast decoding: a JPEG is decoded at a reduced scale only while its short side stays at least this
# long, so the bicubic resize after it still reduces by 1.5x or more and its antialiasing filter, not
# the DCT-domain scaling, shapes the result. (At 1x, down to 224 px, agreement was as good on large
# photos, but 640-px photos moved by up to 2e-4 in cosine, enough to show in query-by-file scores.)
# 1024x768 decodes at 1/2 (512x384), 12 MP at 1/8 (504x378); a 640x480 photo decodes exactly.
DRAFT_MIN_SHORT_SIDE = IMAGE_SIZE * 3 // 2
# float32 constants, as torch.tensor(CLIP_MEAN) holds them: the numpy arithmetic below is bit-identical.
_MEAN32 = np.asarray(CLIP_MEAN, dtype=np.float32)
_STD32 = np.asarray(CLIP_STD, dtype=np.float32)

_policy = threading.local()


@contextlib.contextmanager
def fast_decode(enabled: bool = True) -> Iterator[None]:
    """Within this block, ``load_image`` calls of THIS thread default to ``fast=enabled``."""
    old = getattr(_policy, "fast", False)
    _policy.fast = enabled
    try:
        yield
    finally:
        _policy.fast = old


def fast_decode_enabled() -> bool:
    """Whether ``load_image(path)`` decodes fast in the calling thread (see :func:`fast_decode`)."""
    return getattr(_policy, "fast", False)


def _draft(img: Image.Image, min_short_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale, keeping the short side >= ``min_short_side``."""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = min(w, h) // max(1, min_short_side)
    if scale >= 2:
        # PIL picks the largest of 8, 4, 2 that is <= min(w // rw, h // rh), i.e. <= scale here.
        img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))


_plugins_lock = threading.Lock()
_plugins_done = False


def register_plugins() -> None:
    """Let PIL open HEIC/HEIF photos when pillow-heif (the ``heif`` extra) is installed; once per process."""
    global _plugins_done
    if _plugins_done:
        return
    with _plugins_lock:
        if not _plugins_done:
            try:
                import pillow_heif
            except ImportError:
                pass
            else:
                pillow_heif.register_heif_opener()
            _plugins_done = True


# Formats PIL opens only through an optional extra: what to install, for the error message.
_EXTRA_FOR = {".heic": "heif", ".heif": "heif", ".hif": "heif"}


def _missing_extra(path: str | os.PathLike) -> str | None:
    ext = os.path.splitext(os.fsdecode(path))[1].lower()
    extra = _EXTRA_FOR.get(ext)
    if extra == "heif":
        try:
            import pillow_heif  # noqa: F401
        except ImportError:
            return extra
    return None


def _check_pixels(path: str | os.PathLike, img: Image.Image) -> None:
    # Checked here rather than by turning DecompressionBombWarning into an error with
    # warnings.catch_warnings, which is not thread-safe: decoding runs in worker threads.
    limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)
    if img.width * img.height > limit:
        raise MediaError(path, f"image is {img.width}x{img.height} pixels, larger than the {limit:,}-pixel limit")


def open_image(path: str | os.PathLike, draft_short_side: int | None = None) -> Image.Image:
    """Open and fully decode an image file, or raise MediaError saying why not.

    ``draft_short_side``: decode a large JPEG at a reduced scale whose short side is
    still at least this many pixels (approximate pixels; see :func:`load_image`).
    Camera RAW files go through rawpy (:func:`open_raw`); HEIC/HEIF through pillow-heif.
    """
    register_plugins()
    if is_raw(path):
        return open_raw(path)
    try:
        img = Image.open(path)
        _check_pixels(path, img)
        if draft_short_side:
            _draft(img, draft_short_side)
        img.load()
        return img
    except MediaError:
        raise
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except UnidentifiedImageError as e:
        extra = _missing_extra(path)
        if extra:
            raise MediaError(path, f"cannot read this format without the {extra} extra: "
                                   f'pip install "xsearch[{extra}]"') from e
        raise MediaError(path, "not a readable image (unknown or corrupt format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(path, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(path, f"corrupt or truncated image ({e})") from e


def is_raw(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as a camera RAW file (read with rawpy)."""
    from xsearch.indexer.detect import RAW_EXTENSIONS

    return os.path.splitext(os.fsdecode(path))[1].lower() in RAW_EXTENSIONS


def open_raw(path: str | os.PathLike) -> Image.Image:
    """A camera RAW file as an RGB image: its embedded preview when that is at least ``IMAGE_SIZE`` on
    the short side (what the camera rendered, and fast), else a half-size development by LibRaw
    (camera white balance, 8 bits). Needs rawpy, the ``raw`` extra."""
    try:
        import rawpy
    except ImportError:
        raise MediaError(path, 'camera RAW file: reading it needs the raw extra: pip install "xsearch[raw]"') from None
    import io

    try:
        with rawpy.imread(os.fsdecode(path)) as raw:
            w, h = raw.sizes.raw_width, raw.sizes.raw_height
            if w * h > MAX_PIXELS:
                raise MediaError(path, f"RAW image is {w}x{h} pixels, larger than the {MAX_PIXELS:,}-pixel limit")
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            preview = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                try:
                    preview = Image.open(io.BytesIO(thumb.data))
                    _check_pixels(path, preview)
                    preview.load()
                except (OSError, SyntaxError, ValueError):
                    preview = None  # a damaged preview: develop the raw data instead
            elif thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
                preview = Image.fromarray(thumb.data)
            if preview is not None and min(preview.size) >= IMAGE_SIZE:
                return preview
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        return Image.fromarray(rgb)
    except MediaError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as e:
        raise MediaError(path, f"not a readable camera RAW file ({type(e).__name__}: {e})") from e


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


# An image whose long side would exceed this many times the short side after resizing (a 6000 x 3
# strip would become 448000 x 224: 300 MB of RGB) has only its centre crop's region resized.
MAX_RESIZED_ASPECT = 16


def resize_center_crop(img: Image.Image, size: int = IMAGE_SIZE, resample: int = Image.BICUBIC) -> Image.Image:
    """``center_crop(resize_short_side(img, size, resample), size)`` in memory bounded by ``size``.

    Ordinary images (aspect ratio up to MAX_RESIZED_ASPECT) take exactly that path. Beyond it, PIL
    resizes only the source region that the crop keeps (``resize(box=...)``), at the same scale and
    with the same filter, so the result matches the whole-image resize up to rounding. (A tall image
    first gets its horizontal pass over the whole height, as PIL's full resize does: a box alone
    changes PIL's pass order there and moves pixels by up to ~15/255.)
    """
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if max(nw, nh) <= MAX_RESIZED_ASPECT * size:
        return center_crop(resize_short_side(img, size, resample), size)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    sx, sy = w / nw, h / nh
    if w <= h and nw * h <= _MAX_TALL_PASS_PIXELS:
        img, sx = (img if nw == w else img.resize((nw, h), resample)), 1.0
    return img.resize((size, size), resample, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


_MAX_TALL_PASS_PIXELS = 1 << 24  # the horizontal pass of a tall image (224 x height) above this: box alone


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image of any size -> the model's normalised (3, 224, 224) tensor."""
    img = resize_center_crop(img)
    # The original's ToTensor + Normalize, (x / 255 - mean) / std in float32, done in numpy: the same
    # correctly rounded operations (bit-identical results), without torch's intra-op thread pool,
    # which costs more than the arithmetic for one small image and fights the model for the cores.
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - _MEAN32) / _STD32
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def load_image(path: str | os.PathLike, fast: bool | None = None) -> torch.Tensor:
    """Read an image file as the original does: RGB (alpha dropped), bicubic, centre crop, CLIP normalisation.

    ``fast=True`` decodes a large JPEG at a reduced scale first (see the module
    docstring); ``None`` (default) follows :func:`fast_decode` for this thread,
    which is off unless turned on: plain ``load_image(path)`` is exact.
    """
    if fast is None:
        fast = fast_decode_enabled()
    img = open_image(path, DRAFT_MIN_SHORT_SIDE if fast else None)
    # Animated or layered: the frame PIL opens on stands for the file (the first frame; a PSD's merged
    # image), as in the original. No seek(0): PSD layers count from 1, and seeking to 0 fails.
    # Exactly the original's convert("RGB"), also for 16-bit and float grey, where PIL clips values
    # above 255 (a 16-bit photo comes out nearly white): the official embeddings are defined by it.
    # Such frames belong to the thermal loader (scaled by their own range): `--modality thermal`.
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise MediaError(path, f"cannot convert image to RGB ({e})") from e
    return image_to_tensor(rgb)
