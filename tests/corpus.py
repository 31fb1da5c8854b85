"""Real media files of every modality, written by the tests (no binary fixtures needed)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image


def write_image(path: Path, seed: int, size=(96, 64)) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.BILINEAR)
    img.save(path)
    return path


def write_audio(path: Path, freq: float, seconds: float = 2.5, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32), sr)
    return path


def write_video(path: Path, seed: int, seconds: float = 2.0, fps: int = 8, size=(64, 48), audio: bool = True) -> Path:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        as_ = c.add_stream("aac", rate=16000) if audio else None
        base = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i * 3, axis=1), format="rgb24")
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            samples = (0.2 * np.sin(2 * math.pi * (300 + 50 * seed) * t)).astype(np.float32)
            mux_mono(c, as_, samples)
    return path


def mux_mono(container, stream, samples, rate: int = 16000) -> None:
    """Encode mono float32 ``samples`` into an open PyAV audio ``stream`` of ``container``, flushed."""
    import av

    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
        frame.sample_rate = rate
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def write_depth_png(path: Path, seed: int, size=(80, 60)) -> Path:
    rng = np.random.default_rng(seed)
    d = (rng.uniform(500, 4000, size=(4, 4))).astype(np.float32)
    d = np.asarray(Image.fromarray(d, "F").resize(size, Image.BILINEAR))
    mm = d.astype(np.uint16)
    mm[:3, :3] = 0  # a hole
    Image.fromarray(mm).save(path)  # uint16 -> a 16-bit PNG
    return path


def write_thermal_png(path: Path, seed: int, size=(80, 60)) -> Path:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 255, size=(4, 4), dtype=np.uint8)
    Image.fromarray(t, "L").resize(size, Image.BILINEAR).save(path)
    return path


def write_imu_csv(path: Path, seed: int, seconds: float = 6.0, rate: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f = 0.5 + seed
    rows = np.stack([t] + [np.sin(2 * math.pi * f * t + p) + 0.05 * rng.standard_normal(n) for p in range(6)], axis=1)
    header = "timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.6f")
    return path


def build_corpus(root: Path, golden: Path) -> dict[str, list[Path]]:
    """A small corpus of every modality; depth/thermal/imu folders need --modality."""
    files: dict[str, list[Path]] = {m: [] for m in ("image", "audio", "video", "text", "depth", "thermal", "imu")}
    media = root / "media"
    (media / "photos").mkdir(parents=True)
    (media / "sounds").mkdir()
    (media / "clips").mkdir()
    (media / "notes").mkdir()
    for p in sorted((golden / "media" / "images").iterdir()):
        files["image"].append(Path(shutil.copy(p, media / "photos" / p.name)))
    files["image"].append(write_image(media / "photos" / "gen.png", 1))
    for p in sorted((golden / "media" / "audio").iterdir()):
        files["audio"].append(Path(shutil.copy(p, media / "sounds" / p.name)))
    files["audio"].append(write_audio(media / "sounds" / "tone.flac", 440.0))
    files["video"].append(write_video(media / "clips" / "a.mp4", 1))
    files["video"].append(write_video(media / "clips" / "b.mp4", 2, audio=False))
    for i, text in enumerate(["a dog barking at the mailman", "rain on a tin roof", "a red sports car"]):
        p = media / "notes" / f"note{i}.txt"
        p.write_text(text + "\n", encoding="utf-8")
        files["text"].append(p)
    for m, writer in (("depth", write_depth_png), ("thermal", write_thermal_png)):
        d = root / m
        d.mkdir()
        for i in range(2):
            files[m].append(writer(d / f"{m}{i}.png", i + 3))
    d = root / "imu"
    d.mkdir()
    for i in range(2):
        files["imu"].append(write_imu_csv(d / f"walk{i}.csv", i))
    return files
