"""Viewable PNG renderings of the modalities a browser cannot show: depth, thermal, IMU.

Depth and thermal become false-colour images (a small colormap in numpy, no
matplotlib); IMU recordings become a two-panel line plot drawn with PIL. Videos
get a poster frame, since browsers play only some codecs (no MPEG-4 part 2, say).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from xsearch.errors import MediaError, UsageError

PREVIEW_MODALITIES = ("depth", "thermal", "imu", "video")
MAX_SIDE = 320  # previews are thumbnails: the longest side in pixels
PLOT_SIZE = (320, 180)
AXIS_H = 12  # pixels below the panels for the time axis labels

# Colormaps as a few RGB control points, linearly interpolated (close to matplotlib's
# "turbo" for depth, where near/far must read at a glance, and "inferno" for thermal,
# the usual "ironbow"-like look of thermal cameras).
_TURBO = [(48, 18, 59), (70, 107, 227), (41, 187, 236), (49, 242, 153), (163, 253, 61),
          (237, 208, 58), (251, 128, 34), (208, 47, 5), (122, 4, 3)]
_INFERNO = [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
            (245, 125, 21), (250, 193, 39), (252, 255, 164)]
INVALID_RGB = (24, 24, 24)

CHANNEL_COLOURS = ((220, 50, 47), (40, 160, 60), (38, 110, 210))  # x, y, z


def colormap(values: np.ndarray, points: list[tuple[int, int, int]]) -> np.ndarray:
    """Map values in [0, 1] (NaN: invalid) to uint8 RGB through piecewise-linear control points."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(points))
    pts = np.asarray(points, dtype=np.float32)
    rgb = np.stack([np.interp(v, stops, pts[:, c]) for c in range(3)], axis=-1)
    rgb = rgb.round().astype(np.uint8)
    rgb[np.isnan(values)] = INVALID_RGB
    return rgb


def _thumbnail(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb, "RGB")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
    return img


def _shrink(arr: np.ndarray) -> np.ndarray:
    """Subsample a big map before colouring it (a preview never needs full resolution)."""
    step = max(1, int(np.ceil(max(arr.shape[:2]) / (2 * MAX_SIDE))))
    return arr[::step, ::step]


def render_depth(path: str | os.PathLike) -> Image.Image:
    """Near is warm, far is cool; invalid pixels (holes) are dark grey."""
    from xsearch.engine.preprocess.depth import read_depth_metres

    depth = _shrink(read_depth_metres(path))
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise MediaError(path, "depth map has no valid pixels (every value is 0, negative, NaN or infinite)")
    # Percentiles, not min/max: one stray far pixel would otherwise flatten the whole map.
    lo, hi = np.percentile(depth[valid], [2, 98])
    scaled = np.full(depth.shape, np.nan, dtype=np.float32)
    scaled[valid] = 1.0 - (depth[valid] - lo) / max(hi - lo, 1e-6)
    return _thumbnail(colormap(scaled, _TURBO))


def render_thermal(path: str | os.PathLike) -> Image.Image:
    """Hot is bright; 8-bit frames keep their absolute scale, deeper ones use their own range."""
    from xsearch.engine.preprocess.image import open_image
    from xsearch.engine.preprocess.thermal import WIDE_MODES, min_max_scale

    img = open_image(path)
    if img.mode in WIDE_MODES:
        values = min_max_scale(_shrink(np.asarray(img)))
    else:
        if img.mode != "L":
            img = img.convert("L")
        values = _shrink(np.asarray(img, dtype=np.float32)) / 255.0
    return _thumbnail(colormap(values, _INFERNO))


def render_imu(path: str | os.PathLike, size: tuple[int, int] = PLOT_SIZE) -> Image.Image:
    """Accelerometer (top) and gyroscope (bottom) x/y/z traces over the recording's own time axis (its
    duration written below), each panel scaled to its own range."""
    from xsearch.engine.preprocess.imu import read_imu

    # The samples as recorded: the model's 5-second windows overlap (a 7.5 s recording is 0-5 s and
    # 2.5-7.5 s), so drawing them end to end would show 10 s with a jump in the middle.
    data, times, step = read_imu(path)
    t = times - times[0]
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    panel_h = (h - AXIS_H) // 2
    for panel, label in enumerate(("accel", "gyro")):
        top = panel * panel_h
        box = (34, top + 6, w - 6, top + panel_h - 6)
        _plot_panel(draw, data[3 * panel : 3 * panel + 3], t, box)
        draw.text((4, top + panel_h // 2 - 6), label, fill=(90, 90, 90))
    duration = f"{float(t[-1]) + step:.3g} s"
    draw.text((34, h - AXIS_H), "0 s", fill=(90, 90, 90))
    draw.text((w - 6 - draw.textlength(duration), h - AXIS_H), duration, fill=(90, 90, 90))
    return img


def _plot_panel(draw: ImageDraw.ImageDraw, channels: np.ndarray, t: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(210, 210, 210))
    width = x1 - x0
    n = channels.shape[1]
    # At most two points per pixel column: a long recording stays a light drawing.
    idx = np.linspace(0, n - 1, num=min(n, 2 * width)).round().astype(int)
    ys = channels[:, idx]
    lo, hi = float(ys.min()), float(ys.max())
    span = hi - lo if hi > lo else 1.0
    end = float(t[-1]) if t[-1] > 0 else 1.0
    xs = x0 + t[idx] / end * width  # timestamps may be uneven: place each sample at its own time
    for c, colour in enumerate(CHANNEL_COLOURS):
        py = y1 - (ys[c] - lo) / span * (y1 - y0)
        draw.line(list(zip(xs.tolist(), py.tolist(), strict=True)), fill=colour, width=1)


def render_video_poster(path: str | os.PathLike) -> Image.Image:
    """The first decodable frame of the first video stream."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream in this file")
            for frame in container.decode(video=0):
                img = frame.to_image()
                img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
                return img.convert("RGB")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"not a readable video ({e})") from e
    raise MediaError(path, "the video stream has no decodable frame")


_RENDERERS = {"depth": render_depth, "thermal": render_thermal, "imu": render_imu, "video": render_video_poster}


def render_preview(modality: str, path: str | os.PathLike) -> bytes:
    """PNG bytes of ``path`` rendered as ``modality``. Raises MediaError when the file cannot be read."""
    render = _RENDERERS.get(modality)
    if render is None:
        raise UsageError(f"no preview for {modality} items; previews exist for {', '.join(PREVIEW_MODALITIES)}")
    img = render(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
