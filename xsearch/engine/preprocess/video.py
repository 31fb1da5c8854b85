"""Video: the original ImageBind ``load_and_transform_video_data``, decoded with PyAV.

Five 2-second clips placed like pytorchvideo's ConstantClipsPerVideoSampler over the
video's duration (frame count / average fps, as the original's decord reader
computes it); per clip the frames whose timestamps fall in [start, end), of which
UniformTemporalSubsample keeps 2 (the first and the last); /255; short side to 224
(bilinear, no antialias); CLIP normalisation; three 224 crops along the long side
(left/top, centre, right/bottom). Output (15, 3, 2, 224, 224), clip-major.

Decoding walks the file once in time order, seeking over long gaps between clips,
and keeps only a handful of frames alive.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from xsearch.engine.preprocess.audio import check_readable_file, clip_timepoints, load_audio_track
from xsearch.engine.preprocess.image import CLIP_MEAN, CLIP_STD, IMAGE_SIZE
from xsearch.errors import MediaError

CLIP_DURATION = 2  # seconds
CLIPS_PER_VIDEO = 5
FRAMES_PER_CLIP = 2
NUM_CROPS = 3
# Seek instead of decoding through a gap longer than this between clip windows (seconds).
SEEK_GAP_SECONDS = 3.0


def _av():
    import av  # imported lazily: only video needs it

    from xsearch.engine.preprocess.noise import watch_av

    watch_av()
    return av


def _open(path: str) -> Any:
    av = _av()
    check_readable_file(path)
    try:
        return av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"not a readable video (unknown format, corrupt or truncated: {e})") from e


def _video_stream(container: Any, path: str) -> Any:
    if not container.streams.video:
        raise MediaError(path, "no video stream in this file")
    return container.streams.video[0]


def _fps(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _duration(container: Any, stream: Any) -> float | None:
    """Seconds: frames / average fps where the container counts frames (as decord does), else
    the stream's or container's duration."""
    fps = _fps(stream)
    if stream.frames and fps:
        return float(stream.frames) / float(fps)
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def probe_video(path: str | os.PathLike) -> dict:
    """Header metadata, nothing decoded: {"duration", "width", "height", "fps", "has_audio"}."""
    path = os.fsdecode(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        fps = _fps(stream)
        return {
            "duration": _duration(container, stream),
            "width": int(stream.codec_context.width),
            "height": int(stream.codec_context.height),
            "fps": float(fps) if fps else None,
            "has_audio": bool(container.streams.audio),
        }
    finally:
        container.close()


# ---------------------------------------------------------------- frame selection


@dataclass
class _Window:
    """What one clip needs from the frame stream: its first and last frame in [start, end), and
    the nearest frames outside it for the case where it holds none."""

    start: Fraction
    end: Fraction
    count: int = 0
    first: Any = None
    last: Any = None
    before: Any = None  # latest frame with t < start
    before_t: Fraction | None = None
    after: Any = None  # earliest frame with t >= end
    after_t: Fraction | None = None

    def offer(self, t: Fraction, frame: Any) -> None:
        if t < self.start:
            if self.before_t is None or t >= self.before_t:
                self.before, self.before_t = frame, t
        elif t < self.end:
            if self.first is None:
                self.first = frame
            self.last = frame
            self.count += 1
        elif self.after_t is None or t < self.after_t:
            self.after, self.after_t = frame, t

    def pick(self, n: int) -> list[Any]:
        """UniformTemporalSubsample: indices linspace(0, T-1, n).long(); for n <= 2 only the first
        and last frame can be chosen. An empty window takes the nearest frame outside it."""
        if n > 2:
            raise ValueError("only 1 or 2 frames per clip are supported (ImageBind uses 2)")
        if self.count == 0:
            nearest = self._nearest()
            return [nearest] * n
        idx = torch.linspace(0, self.count - 1, n).clamp(0, self.count - 1).long().tolist()
        return [self.first if i == 0 else self.last for i in idx]

    def _nearest(self) -> Any:
        if self.before is None:
            return self.after
        if self.after is None:
            return self.before
        return self.before if self.start - self.before_t <= self.after_t - self.end else self.after


@dataclass
class _Cursor:
    """Timestamps of decoded frames relative to the stream start, in seconds (exact fractions)."""

    time_base: Fraction
    start_pts: int
    fps: Fraction | None
    last_t: Fraction | None = None
    max_t: Fraction | None = None
    seen: int = field(default=0)
    eof: bool = False  # decoding ran to the end of the stream

    def time_of(self, frame: Any) -> Fraction:
        if frame.pts is not None:
            t = (frame.pts - self.start_pts) * self.time_base
        elif self.last_t is not None and self.fps:
            t = self.last_t + 1 / self.fps  # no timestamps (raw streams): assume constant rate
        else:
            t = Fraction(self.seen, 1) / (self.fps or 1)
        self.last_t = t
        self.max_t = t if self.max_t is None else max(self.max_t, t)
        self.seen += 1
        return t


def _collect(container: Any, stream: Any, windows: list[_Window], path: str) -> _Cursor:
    """Decode in time order, offering each frame to every window; seek across long gaps."""
    av = _av()
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1000)
    start_pts = stream.start_time or 0
    cursor = _Cursor(time_base, start_pts, _fps(stream))
    last_end = max(w.end for w in windows)
    sought = Fraction(-1)
    resume_after: Fraction | None = None
    frames = container.decode(stream)
    try:
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                cursor.eof = True
                break
            t = cursor.time_of(frame)
            if resume_after is not None and t <= resume_after:
                continue  # a seek landed on a keyframe before frames we already offered
            for w in windows:
                w.offer(t, frame)
            if t >= last_end:
                break
            target = _next_seek(windows, t, sought)
            if target is not None:
                sought, resume_after = target, t
                container.seek(start_pts + int(target / time_base), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"corrupt or truncated video ({e})") from e
    return cursor


def _next_seek(windows: list[_Window], t: Fraction, sought: Fraction) -> Fraction | None:
    """Start of the next window when it lies far ahead of t (and was not sought already)."""
    if any(w.start <= t < w.end for w in windows):
        return None
    upcoming = [w.start for w in windows if w.start > t]
    if not upcoming:
        return None
    nxt = min(upcoming)
    if nxt - t > SEEK_GAP_SECONDS and nxt > sought:
        return nxt
    return None


def _looks_truncated(cursor: _Cursor, windows: list[_Window], duration: float) -> bool:
    """Frames ran out well before the header's duration and before the last clip even began.
    (A slightly short video is tolerated: its empty clips take the nearest frame.)"""
    if not cursor.eof or cursor.max_t is None:
        return False
    return cursor.max_t < windows[-1].start and float(cursor.max_t) < 0.9 * duration - 1.0


# ---------------------------------------------------------------- pixel transforms


def _short_side_scale(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """pytorchvideo short_side_scale on (C, T, H, W): long side floor(long / short * size)."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    return torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _uniform_crop(x: torch.Tensor, size: int, spatial_idx: int) -> torch.Tensor:
    """pytorchvideo uniform_crop on (C, T, H, W): 0 = left/top, 1 = centre, 2 = right/bottom."""
    h, w = x.shape[2], x.shape[3]
    y = int(math.ceil((h - size) / 2))
    xo = int(math.ceil((w - size) / 2))
    if h > w:
        if spatial_idx == 0:
            y = 0
        elif spatial_idx == 2:
            y = h - size
    else:
        if spatial_idx == 0:
            xo = 0
        elif spatial_idx == 2:
            xo = w - size
    return x[:, :, y : y + size, xo : xo + size]


def frames_to_clip(frames: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) frames of one clip -> normalised (3, T, h, w) with the short side 224."""
    scaled = []
    for f in frames:
        x = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).unsqueeze(1).to(torch.float32) / 255.0
        scaled.append(_short_side_scale(x))  # per frame: same numbers, half the peak memory
    clip = torch.cat(scaled, dim=1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1, 1)
    return clip.sub_(mean).div_(std)


def clip_crops(clip: torch.Tensor, size: int = IMAGE_SIZE, num_crops: int = NUM_CROPS) -> list[torch.Tensor]:
    """SpatialCrop(size, num_crops=3): the three crops of one (3, T, h, w) clip."""
    if num_crops != 3:
        raise ValueError("only three spatial crops are defined by the original")
    return [_uniform_crop(clip, size, i).contiguous() for i in range(num_crops)]


# ---------------------------------------------------------------- public API


def load_video(path: str | os.PathLike) -> torch.Tensor:
    """A video file -> (15, 3, 2, 224, 224): 5 clips x 3 crops, each (C, T, H, W)."""
    path = os.fsdecode(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        if duration is None:
            raise MediaError(path, "video has no duration in its header")
        windows = [_Window(s, e) for s, e in clip_timepoints(duration, CLIP_DURATION, CLIPS_PER_VIDEO)]
        cursor = _collect(container, stream, windows, path)
        if cursor.seen == 0:
            raise MediaError(path, "no decodable video frames")
        if _looks_truncated(cursor, windows, duration):
            raise MediaError(path, f"truncated video: frames stop at {float(cursor.max_t):.1f} s of {duration:.1f} s")
        out = []
        for w in windows:
            frames = [f.to_ndarray(format="rgb24") for f in w.pick(FRAMES_PER_CLIP)]
            out.extend(clip_crops(frames_to_clip(frames)))
        return torch.stack(out, dim=0)
    except MediaError:
        raise
    except (_av().FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"corrupt or truncated video ({e})") from e
    finally:
        container.close()


def load_video_audio(path: str | os.PathLike) -> torch.Tensor | None:
    """The video's (first) audio track through the audio pipeline: (3, 1, 128, 204), or None
    when the file has no audio stream."""
    return load_audio_track(path)
