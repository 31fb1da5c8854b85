"""An awkward corpus: every kind of broken, odd or hostile input, written by the tests themselves.

``build_awkward(root)`` writes the files and returns ``{folder: {path: Expect}}``: for each file whether
xsearch must embed it or record it as failed, and words its failure reason must contain. Folders:
``media`` (indexed without ``--modality``), ``depth``, ``thermal`` and ``imu`` (indexed with it).
Paths are the real file-system paths (``bytes`` for the name that is not valid UTF-8).
"""
from __future__ import annotations

import io
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from tests.corpus import write_audio, write_image, write_imu_csv, write_video

BAD_NAME = b"caf\xe9.png"  # Latin-1 "café.png": not valid UTF-8


@dataclass
class Expect:
    ok: bool
    words: tuple[str, ...] = ()  # the failure reason must contain one of these (lower case)
    copy_of: str | None = None  # an ok file whose content another file already has (stored as a copy)
    notes: list[str] = field(default_factory=list)


def ok() -> Expect:
    return Expect(True)


def bad(*words: str) -> Expect:
    return Expect(False, tuple(w.lower() for w in words))


# ------------------------------------------------------------------ writers


def _noise_rgb(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BILINEAR)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A valid one-colour 1-bit PNG of width x height pixels, a few tens of kB on disk (streamed out)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    block = row * 1000
    parts = []
    for start in range(0, height, 1000):
        n = min(1000, height - start)
        parts.append(z.compress(block if n == 1000 else row * n))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))
    return path


def _truncate(src: bytes, fraction: float = 0.55) -> bytes:
    return src[: max(1, int(len(src) * fraction))]


def _jpeg_bytes(seed: int, size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    _noise_rgb(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _wav(path: Path, data: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    sf.write(path, data, sr, subtype=subtype)
    return path


def write_long_wav(path: Path, seconds: float, sr: int = 16_000, channels: int = 1, freq: float = 220.0) -> Path:
    """A long 16-bit WAV written block by block (never held in memory whole)."""
    block = sr * 10
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, subtype="PCM_16") as f:
        done = 0
        total = int(seconds * sr)
        while done < total:
            n = min(block, total - done)
            t = (done + np.arange(n)) / sr
            x = (0.2 * np.sin(2 * math.pi * freq * t) * (1 + 0.5 * np.sin(2 * math.pi * 0.01 * t))).astype(np.float32)
            f.write(np.repeat(x[:, None], channels, axis=1) if channels > 1 else x)
            done += n
    return path


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------ the corpus


def build_awkward(root: Path) -> dict[str, dict[str | bytes, Expect]]:
    media, depth, thermal, imu = (root / n for n in ("media", "depth", "thermal", "imu"))
    folders = {"media": media, "depth": depth, "thermal": thermal, "imu": imu}
    for d in (media / "images", media / "audio", media / "video", media / "text", media / "links", depth, thermal, imu):
        d.mkdir(parents=True)
    exp: dict[str, dict[str | bytes, Expect]] = {k: {} for k in folders}
    m = exp["media"]

    # ---- images
    im = media / "images"
    for i in range(3):
        m[str(write_image(im / f"normal{i}.png", 100 + i))] = ok()
    (im / "empty.jpg").write_bytes(b"")
    m[str(im / "empty.jpg")] = bad("empty")
    (im / "empty.png").write_bytes(b"")
    m[str(im / "empty.png")] = bad("empty")
    (im / "truncated.jpg").write_bytes(_truncate(_jpeg_bytes(1)))
    m[str(im / "truncated.jpg")] = bad("truncated")
    (im / "truncated.png").write_bytes(_truncate(_png_bytes(_noise_rgb(2, (96, 64)))))
    m[str(im / "truncated.png")] = bad("truncated", "corrupt")
    (im / "signature_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    m[str(im / "signature_only.png")] = bad("truncated", "corrupt", "not a readable image")
    (im / "text.jpg").write_text("this is a shopping list, not a photo\n" * 20, encoding="utf-8")
    m[str(im / "text.jpg")] = bad("not a readable image")
    write_png_bomb(im / "bomb.png")
    m[str(im / "bomb.png")] = bad("too large", "larger than", "decompression bomb")
    _noise_rgb(3, (1, 1)).save(im / "one_pixel.png")
    m[str(im / "one_pixel.png")] = ok()
    _noise_rgb(4, (6000, 3)).save(im / "strip_6000x3.png")
    m[str(im / "strip_6000x3.png")] = ok()
    _noise_rgb(5, (3, 6000)).save(im / "strip_3x6000.png")
    m[str(im / "strip_3x6000.png")] = ok()
    _noise_rgb(6, (80, 60)).convert("CMYK").save(im / "cmyk.jpg", "JPEG")
    m[str(im / "cmyk.jpg")] = ok()
    g16 = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    Image.fromarray(g16).save(im / "gray16.png")
    m[str(im / "gray16.png")] = ok()
    pal = _noise_rgb(7, (80, 60)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(im / "palette.png", transparency=0)
    m[str(im / "palette.png")] = ok()
    frames = [_noise_rgb(8 + k, (64, 48)).convert("P", palette=Image.ADAPTIVE) for k in range(3)]
    frames[0].save(im / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    m[str(im / "animated.gif")] = ok()
    _noise_rgb(11, (64, 48)).convert("RGBA").save(im / "rgba.png")
    m[str(im / "rgba.png")] = ok()
    (im / "png_named.jpg").write_bytes(_png_bytes(_noise_rgb(12, (64, 48))))
    m[str(im / "png_named.jpg")] = ok()
    bad_name = os.path.join(os.fsencode(im), BAD_NAME)
    with open(bad_name, "wb") as f:
        f.write(_png_bytes(_noise_rgb(13, (64, 48))))
    m[bad_name] = ok()

    # ---- audio
    au = media / "audio"
    m[str(write_audio(au / "normal.wav", 330.0))] = ok()
    m[str(_wav(au / "silent.wav", np.zeros(3 * 16000, np.float32), 16000))] = ok()
    m[str(_wav(au / "blip_10ms.wav", _tone(0.010, 16000), 16000))] = ok()
    m[str(write_long_wav(au / "long_10min.wav", 600.0))] = ok()
    six = np.stack([_tone(2.0, 16000, 200.0 + 100 * c) for c in range(6)], axis=1)
    m[str(_wav(au / "six_channel.wav", six, 16000))] = ok()
    m[str(_wav(au / "low_8khz.wav", _tone(2.5, 8000, 300.0), 8000))] = ok()
    nan = _tone(2.0, 16000)
    nan[5000:5100] = np.nan
    m[str(_wav(au / "nan.wav", nan, 16000, subtype="FLOAT"))] = bad("nan")
    whole = io.BytesIO()
    sf.write(whole, _tone(3.0, 16000, 500.0), 16000, format="WAV", subtype="PCM_16")
    (au / "truncated.wav").write_bytes(_truncate(whole.getvalue()))
    m[str(au / "truncated.wav")] = bad("truncated")
    (au / "empty.wav").write_bytes(b"")
    m[str(au / "empty.wav")] = bad("empty")
    (au / "text.wav").write_text("la la la, I am a song\n" * 30, encoding="utf-8")
    m[str(au / "text.wav")] = bad("not a readable audio")
    m[str(_wav(au / "no_samples.wav", np.zeros(0, np.float32), 16000))] = bad("no samples")

    # ---- video
    vi = media / "video"
    m[str(write_video(vi / "normal.mp4", 3))] = ok()
    data = write_video(vi / "whole.mp4", 4).read_bytes()
    (vi / "whole.mp4").unlink()
    (vi / "truncated.mp4").write_bytes(_truncate(data, 0.5))
    m[str(vi / "truncated.mp4")] = bad("truncated", "corrupt")
    (vi / "empty.mp4").write_bytes(b"")
    m[str(vi / "empty.mp4")] = bad("empty")
    (vi / "text.mp4").write_text("a film script, not a film\n" * 30, encoding="utf-8")
    m[str(vi / "text.mp4")] = bad("not a readable video")

    # ---- text
    tx = media / "text"
    (tx / "normal.txt").write_text("a lighthouse on a rocky shore at dusk\n", encoding="utf-8")
    m[str(tx / "normal.txt")] = ok()
    (tx / "binary.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    m[str(tx / "binary.txt")] = bad("binary")
    (tx / "empty.txt").write_bytes(b"")
    m[str(tx / "empty.txt")] = bad("empty")
    (tx / "spaces.txt").write_text(" \n\t\n   \n", encoding="utf-8")
    m[str(tx / "spaces.txt")] = bad("whitespace")
    (tx / "latin1.txt").write_bytes("crème brûlée au café, très bon\n".encode("latin-1"))
    m[str(tx / "latin1.txt")] = ok()
    (tx / "utf16.md").write_text("# notes\nsnow falling on a quiet street\n", encoding="utf-16")
    m[str(tx / "utf16.md")] = ok()
    (tx / "huge.txt").write_text("the quick brown fox jumps over the lazy dog. " * 70_000, encoding="utf-8")
    m[str(tx / "huge.txt")] = ok()

    # ---- links
    ln = media / "links"
    os.symlink(ln / "no_such_target.png", ln / "dangling.png")
    m[str(ln / "dangling.png")] = bad("dangling symlink")
    os.symlink(ln / "loop_b.png", ln / "loop_a.png")
    os.symlink(ln / "loop_a.png", ln / "loop_b.png")
    m[str(ln / "loop_a.png")] = bad("symlink loop")
    m[str(ln / "loop_b.png")] = bad("symlink loop")
    os.symlink(im / "normal0.png", ln / "good_link.png")
    m[str(ln / "good_link.png")] = Expect(True, copy_of=str(im / "normal0.png"))
    os.symlink(media, ln / "folder_loop")  # a folder link back up: walked once, not forever

    # ---- depth (indexed with --modality depth)
    d = exp["depth"]
    rng = np.random.default_rng(1)
    holes = rng.uniform(0.6, 6.0, size=(60, 80)).astype(np.float32)
    holes[:5, :5] = np.nan
    holes[10:14, 20:30] = np.inf
    holes[30:40, 40:50] = 0.0
    holes[50, :] = -1.0
    np.save(depth / "holes.npy", holes)
    d[str(depth / "holes.npy")] = ok()
    mm = (rng.uniform(500, 4000, size=(60, 80))).astype(np.uint16)
    mm[:20, :20] = 0
    Image.fromarray(mm).save(depth / "holes16.png")
    d[str(depth / "holes16.png")] = ok()
    np.save(depth / "all_nan.npy", np.full((60, 80), np.nan, np.float32))
    d[str(depth / "all_nan.npy")] = bad("no valid pixels")
    Image.fromarray(np.zeros((60, 80), np.uint16)).save(depth / "all_zero.png")
    d[str(depth / "all_zero.png")] = bad("no valid pixels")
    Image.fromarray(np.full((60, 80), 128, np.uint8), "L").save(depth / "eight_bit.png")
    d[str(depth / "eight_bit.png")] = bad("8-bit")
    (depth / "truncated.png").write_bytes(_truncate(_png_bytes(Image.fromarray(mm))))
    d[str(depth / "truncated.png")] = bad("truncated", "corrupt")
    np.save(depth / "strip.npy", rng.uniform(0.6, 6.0, size=(3, 6000)).astype(np.float32))
    d[str(depth / "strip.npy")] = ok()
    (depth / "empty.npy").write_bytes(b"")
    d[str(depth / "empty.npy")] = bad("empty")

    # ---- thermal (indexed with --modality thermal)
    t = exp["thermal"]
    Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8), "L").save(thermal / "frame8.png")
    t[str(thermal / "frame8.png")] = ok()
    Image.fromarray(rng.integers(20000, 30000, (60, 80)).astype(np.uint16)).save(thermal / "frame16.png")
    t[str(thermal / "frame16.png")] = ok()
    (thermal / "truncated.png").write_bytes(
        _truncate(_png_bytes(Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8), "L"))))
    t[str(thermal / "truncated.png")] = bad("truncated", "corrupt")
    Image.fromarray(rng.integers(0, 255, (3, 6000), dtype=np.uint8), "L").save(thermal / "strip.png")
    t[str(thermal / "strip.png")] = ok()

    # ---- IMU (indexed with --modality imu)
    u = exp["imu"]
    u[str(write_imu_csv(imu / "walk.csv", 1))] = ok()
    u[str(write_imu_csv(imu / "seven_rows.csv", 2, seconds=0.07, rate=100))] = ok()
    u[str(write_imu_csv(imu / "long_30min.csv", 3, seconds=1800, rate=50))] = ok()
    (imu / "no_gyro.csv").write_text("timestamp,acc_x,acc_y,acc_z\n" + "".join(f"{i / 100},0.1,0.2,9.8\n" for i in range(300)))
    u[str(imu / "no_gyro.csv")] = bad("missing gyroscope")
    (imu / "words.csv").write_text("timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n"
                                   + "".join(f"{i / 100},one,two,three,four,five,six\n" for i in range(50)))
    u[str(imu / "words.csv")] = bad("not a number")
    (imu / "empty.csv").write_bytes(b"")
    u[str(imu / "empty.csv")] = bad("empty")
    return exp


def display_path(path: str | bytes) -> str:
    """How xsearch shows (and stores) a path: names that are not valid UTF-8 have their bytes escaped."""
    from xsearch.pathnames import store_path

    return store_path(os.fsdecode(path))


# ------------------------------------------------------------------ running the real command


def xsearch_cmd() -> list[str]:
    """The installed `xsearch` entry point, as a user runs it (else the module)."""
    import shutil
    import sys

    exe = shutil.which("xsearch")
    return [exe] if exe else [sys.executable, "-m", "xsearch.cli.main"]


def cli_env(**extra: str) -> dict[str, str]:
    """The test session's environment (XSEARCH_HOME...), with a strict UTF-8 stdout as on most desktops."""
    env = dict(os.environ)
    env.update({"PYTHONIOENCODING": "utf-8:strict", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def run_cli(*args, timeout: float = 300, **kw):
    """Run `xsearch ARGS...` as a separate process; returns the CompletedProcess (text mode)."""
    import subprocess

    cmd = xsearch_cmd() + [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", None) or cli_env(),
                          errors="surrogateescape", **kw)
