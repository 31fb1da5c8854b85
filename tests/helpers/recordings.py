"""Long recordings with a distinctive event at a known time, written by the tests (moments)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000


def event_sound(seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    """A warbling 880 Hz tone: nothing like the background noise."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * math.pi * 880 * t) * np.sin(2 * math.pi * 3 * t)).astype(np.float32)


def write_wav_with_event(path: Path, seconds: float, event_at: float | None, seed: int = 0, sr: int = SR) -> Path:
    """Quiet noise of ``seconds`` with ``event_sound()`` starting at ``event_at`` (None: no event)."""
    x = (0.05 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)
    if event_at is not None:
        ev = event_sound(sr=sr)
        a = int(round(event_at * sr))
        x[a: a + len(ev)] = ev[: len(x) - a]
    sf.write(path, x, sr)
    return path


def _scene_frame(size: tuple[int, int]) -> np.ndarray:
    """Bright diagonal stripes: the distinctive scene."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (((xx + yy) // 6) % 2).astype(np.uint8) * 255
    return np.stack([stripes, 255 - stripes, np.full_like(stripes, 40)], axis=-1)


def write_video_with_scene(path: Path, seconds: float, scene_at: float | None, *, audio: bool = True,
                           empty_audio: bool = False, fps: int = 8, size=(64, 48), seed: int = 0) -> Path:
    """Noise frames with 2 s of the striped scene from ``scene_at`` (None: none). Motion JPEG: every frame
    is coded on its own at one quality, so the same picture decodes the same wherever it sits in the file.
    ``audio``: a noise sound track with ``event_sound()`` under the scene; ``empty_audio``: an audio
    stream that holds no samples."""
    import av

    rng = np.random.default_rng(seed)
    scene = _scene_frame(size)
    with av.open(str(path), "w", format="avi") as c:
        vs = c.add_stream("mjpeg", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuvj420p"
        vs.codec_context.qscale = 3  # fixed quantiser: no rate control drifting from frame to frame
        as_ = c.add_stream("pcm_s16le", rate=SR) if audio or empty_audio else None
        for i in range(int(seconds * fps)):
            t = i / fps
            in_scene = scene_at is not None and scene_at <= t < scene_at + 2
            img = scene if in_scene else rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None and not empty_audio:
            x = (0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
            if scene_at is not None:
                ev = event_sound()
                a = int(scene_at * SR)
                x[a: a + len(ev)] = ev[: len(x) - a]
            pcm = (x * 32767).astype(np.int16)
            for start in range(0, len(pcm), 1024):
                frame = av.AudioFrame.from_ndarray(pcm[None, start: start + 1024], format="s16", layout="mono")
                frame.sample_rate = SR
                for p in as_.encode(frame):
                    c.mux(p)
        if as_ is not None:
            for p in as_.encode():
                c.mux(p)
    return path


def imu_pattern(seconds: float = 5.0, rate: int = 100) -> np.ndarray:
    """(n, 6) a strong, fast swing on every channel."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([4 * np.sin(2 * math.pi * 2.5 * t + p) * np.cos(2 * math.pi * 0.7 * t) for p in range(6)], axis=1)


def write_imu_with_pattern(path: Path, seconds: float, pattern_at: float | None, seed: int = 0, rate: int = 100) -> Path:
    """A CSV of small noise with ``imu_pattern()`` from ``pattern_at`` (whole samples of ``rate``)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    data = 0.05 * rng.standard_normal((n, 6))
    if pattern_at is not None:
        pat = imu_pattern(rate=rate)
        a = int(round(pattern_at * rate))
        data[a: a + len(pat)] = pat[: n - a]
    t = np.arange(n) / rate
    np.savetxt(path, np.column_stack([t, data]), delimiter=",", fmt="%.6f",
               header="timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z", comments="")
    return path
