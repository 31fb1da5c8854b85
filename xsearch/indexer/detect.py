"""Deciding a file's modality from its content and its extension.

Content wins over the extension (a PNG named ``.jpg`` is an image, a WAV named
``.jpg`` is audio). Depth and thermal frames look like ordinary images and IMU
recordings like ordinary CSVs, so those come from a folder's ``--modality``
override (remembered per folder), except IMU CSVs whose header names both
accelerometer and gyroscope columns.
"""
from __future__ import annotations

import os

from xsearch.errors import UsageError

EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}),
    "audio": frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff"}),
    "video": frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"}),
    "text": frozenset({".txt", ".md"}),
}
# Which files a folder-level --modality override claims; others in that folder are detected as usual.
OVERRIDE_EXTENSIONS: dict[str, frozenset[str]] = {
    "depth": frozenset({".png", ".tif", ".tiff", ".npy", ".npz"}),
    "thermal": frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}),
    "imu": frozenset({".csv", ".npy"}),
}
OVERRIDE_MODALITIES = tuple(OVERRIDE_EXTENSIONS)


# The --modality value that clears a folder's remembered override: each file's modality is detected again.
AUTO = "auto"


def check_override(modality: str | None) -> str | None:
    choices = OVERRIDE_MODALITIES + tuple(EXTENSIONS) + (AUTO,)
    if modality is not None and modality not in choices:
        raise UsageError(f"modality must be one of {', '.join(choices)}, not {modality!r}")
    return modality


def sniff(head: bytes) -> str | None:
    """The modality that a file's first bytes announce, if they announce one."""
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head.startswith((b"fLaC", b"OggS", b"ID3", b"FORM")) or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    if head[4:8] == b"ftyp":
        return "audio" if head[8:12] in (b"M4A ", b"M4B ") else "video"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    return None


def _read_head(path: str, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""  # unreadable: the loader will say why


def detect_modality(path: str, override: str | None = None) -> str | None:
    """The modality to index ``path`` as, or None when xsearch does not handle such files."""
    ext = os.path.splitext(path)[1].lower()
    if override is not None:
        claimed = OVERRIDE_EXTENSIONS.get(override, EXTENSIONS.get(override, frozenset()))
        if ext in claimed:
            return override
    if ext == ".csv":
        from xsearch.engine.preprocess.imu import looks_like_imu_csv

        return "imu" if looks_like_imu_csv(path) else None
    by_ext = next((m for m, exts in EXTENSIONS.items() if ext in exts), None)
    if by_ext is None or by_ext == "text":
        return by_ext
    # A media extension: trust the content when it names another media kind.
    return sniff(_read_head(path)) or by_ext
