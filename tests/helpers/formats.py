"""Real files of every image format Pillow writes and of the audio and video containers FFmpeg (PyAV)
writes, named with odd or missing extensions; and files that decoders complain about."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

# Pillow formats that cannot be written here or not read back as pixels (stubs, save-only, Ghostscript),
# SPIDER, which has neither an extension nor a signature to be found by, and IM (deprecated by Pillow).
UNWRITABLE = {"BUFR", "GRIB", "HDF5", "WMF", "EPS", "PDF", "PALM", "SPIDER", "IM"}
# Formats without a reliable signature: found by their extension (written here in upper case).
NEEDS_EXTENSION = {"TGA": ".TGA", "XBM": ".XBM", "MSP": ".MSP", "DIB": ".DIB"}
# Modes a format can save a small RGB picture in.
_MODE = {"XBM": "1", "MSP": "1", "BLP": "P", "PCX": "RGB", "SGI": "RGB", "ICO": "RGBA",
         "ICNS": "RGBA"}


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BILINEAR)


def write_every_image_format(folder: Path) -> dict[str, Path]:
    """One file per format Pillow can write (plus APNG), named without an extension where content alone
    must identify it. Returns {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.init()
    out: dict[str, Path] = {}
    for i, fmt in enumerate(sorted(set(Image.SAVE) - UNWRITABLE)):
        if fmt not in Image.OPEN and fmt != "MPO":
            continue
        img = picture(i, (64, 64) if fmt in ("ICNS", "ICO", "DDS") else (64, 48))
        mode = _MODE.get(fmt)
        if mode == "P":
            img = img.convert("P", palette=Image.ADAPTIVE)
        elif mode:
            img = img.convert(mode)
        path = folder / (f"{fmt.lower()}_sample" + NEEDS_EXTENSION.get(fmt, ""))
        if fmt == "MPO":
            img.save(path, "MPO", save_all=True, append_images=[picture(99)])
        else:
            img.save(path, fmt)
        out[fmt] = path
    apng = folder / "apng_sample"
    picture(50).save(apng, "PNG", save_all=True, append_images=[picture(51)], duration=100)
    out["APNG"] = apng
    return out


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write_audio_av(path: Path, fmt: str, codec: str, rate: int = 16000, seconds: float = 2.0,
                   options: dict | None = None) -> Path:
    """A mono tone through an FFmpeg encoder and muxer."""
    import av

    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        s.bit_rate = 64000  # WMA's encoder has no default
        frame_size = s.codec_context.frame_size or 1024
        x = _tone(seconds, rate)
        fmt_name = s.codec_context.format.name if s.codec_context.format else "fltp"
        for start in range(0, len(x), frame_size):
            chunk = x[start:start + frame_size]
            if len(chunk) < frame_size and s.codec_context.frame_size:
                chunk = np.pad(chunk, (0, frame_size - len(chunk)))
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            if fmt_name != "fltp":
                frame = av.AudioResampler(format=fmt_name, layout="mono", rate=rate).resample(frame)[0]
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_video_av(path: Path, fmt: str, codec: str, size: tuple[int, int] = (176, 144), fps: int = 8,
                   seconds: float = 1.5, options: dict | None = None) -> Path:
    import av

    rng = np.random.default_rng(len(str(path)))
    base = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# name -> (muxer, encoder, sample rate): audio FFmpeg reads that libsndfile does not, odd names included.
# (AMR is read but cannot be written here: FFmpeg's AMR encoders are external libraries.)
AUDIO_CONTAINERS = {
    "tone.m4a": ("ipod", "aac", 16000),
    "tone.wma": ("asf", "wmav2", 44100),
    "tone.mka": ("matroska", "opus", 48000),
    "tone.ac3": ("ac3", "ac3", 48000),
    "tone_mp3_without_extension": ("mp3", "mp3", 44100),
    "tone_m4a_without_extension": ("ipod", "aac", 16000),
}
VIDEO_CONTAINERS = {
    "clip.mts": ("mpegts", "mpeg2video", None),
    "clip.m2ts": ("mpegts", "mpeg2video", {"mpegts_m2ts_mode": "1"}),
    "clip.ts": ("mpegts", "mpeg4", None),
    "clip.3gp": ("3gp", "h263", None),
    "clip.wmv": ("asf", "wmv2", None),
    "clip.flv": ("flv", "flv", None),
    "clip_mkv_without_extension": ("matroska", "mpeg4", None),
    "clip_flv_without_extension": ("flv", "flv", None),
}


def write_corrupt_mp3(path: Path, seconds: float = 4.0) -> Path:
    """A valid MP3 made by FFmpeg, then 3,000 bytes of garbage written over its middle."""
    write_audio_av(path, "mp3", "mp3", rate=44100, seconds=seconds)
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _tiff_entry(data: bytearray, ifd: int, tag: int, typ: int, count: int, value: int) -> None:
    """Overwrite the IFD entry for ``tag`` (little-endian TIFF)."""
    n = struct.unpack("<H", data[ifd:ifd + 2])[0]
    for k in range(n):
        e = ifd + 2 + 12 * k
        if struct.unpack("<H", data[e:e + 2])[0] == tag:
            data[e:e + 12] = struct.pack("<HHII", tag, typ, count, value)
            return
    raise AssertionError(f"tag {tag} not in the IFD")


def write_tiff_with_bad_tag(path: Path, tag: int, typ: int, count: int, value: int) -> Path:
    """A deflate-compressed TIFF (decoded by libtiff) with one IFD entry replaced."""
    picture(7, (50, 40)).save(path, "TIFF", compression="tiff_deflate", tiffinfo={305: "abc"})
    data = bytearray(path.read_bytes())
    _tiff_entry(data, struct.unpack("<I", data[4:8])[0], tag, typ, count, value)
    path.write_bytes(bytes(data))
    return path


def write_tiff_libtiff_rejects(path: Path) -> Path:
    """PlanarConfiguration 7: libtiff prints an error on fd 2 and the file cannot be decoded."""
    return write_tiff_with_bad_tag(path, 284, 3, 1, 7)


def write_tiff_pillow_warns(path: Path) -> Path:
    """The Software tag points past the end of the file: Pillow warns ("Truncated File Read") and decodes."""
    return write_tiff_with_bad_tag(path, 305, 2, 1000, 10**8)


def write_heic(path: Path, seed: int = 60) -> Path:
    """An HEIC photo (pillow-heif's encoder)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    picture(seed).save(path, "HEIF")
    return path


def write_linear_dng(path: Path, size: tuple[int, int] = (256, 192), seed: int = 61) -> Path:
    """A minimal camera RAW file: an uncompressed 16-bit LinearRaw DNG (what LibRaw reads), written by hand."""
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 65535, (h, w, 3)).astype("<u2").tobytes()
    model = b"xsearch test\x00"
    n = 14
    bps_at = 8 + 2 + 12 * n + 4
    model_at = bps_at + 6
    strip_at = model_at + len(model) + (model_at + len(model)) % 2
    entries = sorted([
        (254, 4, 1, 0), (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bps_at), (259, 3, 1, 1),
        (262, 3, 1, 34892),  # PhotometricInterpretation: LinearRaw
        (273, 4, 1, strip_at), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(pixels)), (284, 3, 1, 1),
        (50706, 1, 4, struct.unpack("<I", bytes([1, 4, 0, 0]))[0]),  # DNGVersion 1.4
        (50708, 2, len(model), model_at), (50717, 3, 1, 65535),  # UniqueCameraModel, WhiteLevel
    ])
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, n))
    for tag, typ, count, value in entries:
        out += struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 and count == 1 \
            else struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + model
    out += b"\x00" * (strip_at - len(out)) + pixels
    path.write_bytes(bytes(out))
    return path


def write_layered_psd(path: Path, size: tuple[int, int] = (32, 24), layers: int = 2) -> Path:
    """A Photoshop file with ``layers`` RGB layers and its merged image, uncompressed, written by hand
    (Pillow reads PSD but does not write it). PIL opens it on the merged image; its layers count from 1."""
    w, h = size
    rng = np.random.default_rng(62)
    planes = [rng.integers(0, 255, (3, h, w), dtype=np.uint8) for _ in range(layers + 1)]
    records, channel_data = b"", b""
    for i in range(layers):
        name = f"layer{i}".encode()
        pascal = bytes([len(name)]) + name
        pascal += b"\x00" * (-len(pascal) % 4)
        extra = struct.pack(">II", 0, 0) + pascal  # no mask, no blending ranges, the name
        records += struct.pack(">iiiiH", 0, 0, h, w, 3)
        records += b"".join(struct.pack(">hI", c, 2 + w * h) for c in range(3))
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", len(extra)) + extra
        channel_data += b"".join(struct.pack(">H", 0) + planes[i][c].tobytes() for c in range(3))
    layer_info = struct.pack(">h", layers) + records + channel_data
    layer_info += b"\x00" * (len(layer_info) % 2)
    layer_and_mask = struct.pack(">I", len(layer_info)) + layer_info + struct.pack(">I", 0)
    out = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)  # version 1, 3 channels, 8 bits, RGB
    out += struct.pack(">I", 0) + struct.pack(">I", 0)  # no colour mode data, no image resources
    out += struct.pack(">I", len(layer_and_mask)) + layer_and_mask
    out += struct.pack(">H", 0) + planes[-1].tobytes()  # the merged image, raw
    path.write_bytes(out)
    return path


def write_tiff_pillow_logs_an_error(path: Path) -> Path:
    """SamplesPerPixel 65535: Pillow's TIFF plugin logs an error (Python logging) and cannot identify it."""
    return write_tiff_with_bad_tag(path, 277, 3, 1, 65535)
