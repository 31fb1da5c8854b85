"""Near-duplicate media for the tag and duplicate tests: the same content re-encoded, resized, cropped,
a video and the sound and a still taken from it (with PyAV), and distinct files."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from tests.corpus import mux_mono


def image_variants(src: Path, folder: Path) -> list[Path]:
    """``src`` copied, re-encoded as JPEG q60, resized to 3/4 (PNG), cropped by 4 pixels a side."""
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(src).convert("RGB")
    out = [Path(shutil.copy(src, folder / src.name))]
    im.save(folder / f"{src.stem}_q60.jpg", quality=60)
    im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.BICUBIC).save(folder / f"{src.stem}_small.png")
    im.crop((4, 4, im.width - 4, im.height - 4)).save(folder / f"{src.stem}_crop.jpg", quality=92)
    return out + [folder / f"{src.stem}_q60.jpg", folder / f"{src.stem}_small.png", folder / f"{src.stem}_crop.jpg"]


def reencoded_wav(src: Path, dest: Path) -> Path:
    """The same recording as 16-bit FLAC."""
    data, sr = sf.read(src)
    sf.write(dest, data, sr, subtype="PCM_16")
    return dest


def static_video(path: Path, frame: np.ndarray, seconds: float = 3.0, fps: int = 8, freq: float = 330.0) -> Path:
    """An MPEG-4 video showing one still ``frame`` (H, W, 3 uint8) with a mono AAC tone of ``freq`` Hz."""
    import av

    h, w = frame.shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=16000)
        aus.layout = "mono"
        for _ in range(int(seconds * fps)):
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        t = np.arange(int(seconds * 16000)) / 16000
        samples = (0.3 * np.sin(2 * math.pi * freq * t) * (1 + 0.5 * np.sin(2 * math.pi * 3 * t))).astype(np.float32)
        mux_mono(c, aus, samples)
    return path


def extract_wav(video: Path, dest: Path) -> Path:
    """The video's sound track decoded with PyAV and written as a 16 kHz mono WAV."""
    import av

    chunks = []
    with av.open(str(video)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in c.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    sf.write(dest, np.concatenate(chunks), 16000)
    return dest


def extract_still(video: Path, dest: Path) -> Path:
    """The video's middle frame as a PNG."""
    import av

    with av.open(str(video)) as c:
        frames = [f.to_image() for f in c.decode(video=0)]
    frames[len(frames) // 2].save(dest)
    return dest


def photo_frame(seed: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A smooth random picture (H, W, 3) for a video frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize(size, Image.BILINEAR))
