"""Deciding a file's modality from its content and its extension.

Content wins over the extension (a PNG named ``.jpg`` is an image, a WAV named
``.jpg`` is audio), and content alone is enough where it is unmistakable (a PSD,
a QOI or a Matroska file without an extension is still found). Formats whose
first bytes say little (TGA, ICO, PCX, SGI, XBM, PPM, BMP...) are taken when
Pillow's own header parser accepts them, given their extension or a matching
signature: the walk reads at most ``HEAD_BYTES`` of a file and never decodes
pixels or samples, and text, CSV or random bytes are never taken for media.

Depth and thermal frames look like ordinary images and IMU recordings like
ordinary CSVs, so those come from a folder's ``--modality`` override (remembered
per folder), except IMU CSVs whose header names both accelerometer and gyroscope
columns.
"""
from __future__ import annotations

import functools
import os

from xsearch.errors import UsageError

EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif",
                        ".heic", ".heif", ".hif", ".avif"}),
    "audio": frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".m4b", ".aac", ".aif", ".aiff",
                        ".aifc", ".wma", ".amr", ".awb", ".mka", ".weba", ".ac3", ".mp2", ".caf", ".au", ".w64",
                        ".wv", ".ape"}),
    "video": frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".mts", ".m2ts", ".3gp",
                        ".3g2", ".wmv", ".asf", ".flv", ".f4v", ".ogv", ".vob", ".m2v", ".mxf", ".dv"}),
    "text": frozenset({".txt", ".md"}),
}
# Camera RAW files: decoded with rawpy (the `raw` extra), embedded preview or a half-size development.
# (".raw" alone is left out: it names raw PCM and disk images as often as photos.)
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                            ".rw2", ".rwl", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mrw", ".x3f", ".iiq",
                            ".mef", ".mos"})
# Extensions whose owner is ambiguous (".ts": TypeScript or MPEG transport stream): media only by content.
CONTENT_ONLY_EXTENSIONS = frozenset({".ts"})
# Which files a folder-level --modality override claims; others in that folder are detected as usual.
OVERRIDE_EXTENSIONS: dict[str, frozenset[str]] = {
    "depth": frozenset({".png", ".tif", ".tiff", ".npy", ".npz"}),
    "thermal": frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}),
    "imu": frozenset({".csv", ".npy"}),
}
OVERRIDE_MODALITIES = tuple(OVERRIDE_EXTENSIONS)
# Bytes read from each file to decide (enough for three MPEG-TS packets or two MP3 frames).
HEAD_BYTES = 4096
# Pillow formats that open a header but cannot decode pixels here (stubs needing a handler, Windows-only
# metafiles, MPEG's header-only reader: .mpg is video).
_PIL_UNDECODABLE = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "IPTC"})


# The --modality value that clears a folder's remembered override: each file's modality is detected again.
AUTO = "auto"


def check_override(modality: str | None) -> str | None:
    choices = OVERRIDE_MODALITIES + tuple(EXTENSIONS) + (AUTO,)
    if modality is not None and modality not in choices:
        raise UsageError(f"modality must be one of {', '.join(choices)}, not {modality!r}")
    return modality


_FTYP_IMAGE = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_FTYP_AUDIO = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
    b"8BPS", b"qoif", b"DDS ", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ", b"icns", b"SIMPLE  =",
    b"/* XPM */", b"BLP1", b"BLP2", b"\x59\xa6\x6a\x95", b"\xb1\x68\xde\x3a", b"FTEX", b"P7 332",
)  # (camera RAW files are known by their extension: only rawpy reads them)


def _sniff(head: bytes) -> tuple[str | None, bool]:
    """(modality, ambiguous): what the first bytes announce; ambiguous for containers that may hold
    audio alone (Matroska, ASF, MP4 boxes), where an audio extension decides."""
    if head.startswith(_IMAGE_MAGIC):
        return "image", False
    riff = head[8:12] if head[:4] == b"RIFF" else b""
    if riff == b"WEBP":
        return "image", False
    if riff == b"WAVE" or head[:4] == b"RF64":
        return "audio", False
    if riff == b"AVI ":
        return "video", False
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_IMAGE:
            return "image", False
        if brand == b"crx ":
            return None, False  # Canon CR3: camera RAW, known by its extension
        return ("audio", False) if brand in _FTYP_AUDIO else ("video", True)
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "video", True
    if head.startswith(_ASF_GUID):
        return "video", True
    if head.startswith(b"OggS"):
        return ("video", False) if b"\x80theora" in head[:256] else ("audio", False)
    if head.startswith((b"fLaC", b"ID3", b"#!AMR", b".snd", b"caff", b"MAC ", b"wvpk", b"riff\x2e\x91\xcf\x11")) \
            or (head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")):
        return "audio", False
    if head.startswith((b"FLV\x01", b".RMF", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")) or _packets(head, 188, 0) \
            or _packets(head, 192, 4):
        return "video", False
    if _mpeg_audio(head):
        return "audio", False
    return None, False


def sniff(head: bytes) -> str | None:
    """The modality that a file's first bytes announce, if they announce one."""
    return _sniff(head)[0]


def _packets(head: bytes, size: int, offset: int) -> bool:
    """MPEG transport stream: the 0x47 sync byte at the start of three consecutive packets."""
    return len(head) >= offset + 2 * size + 1 and all(head[offset + i * size] == 0x47 for i in range(3))


_MP3_KBPS = {  # (version bit, layer) -> bitrate table (kbit/s) by index
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (0, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (0, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame_length(h: bytes) -> int:
    """Length of the MPEG audio frame whose 4-byte header is ``h``; 0 if it is not one."""
    if len(h) < 4 or h[0] != 0xFF or h[1] & 0xE0 != 0xE0:
        return 0
    version, layer = (h[1] >> 3) & 3, 4 - ((h[1] >> 1) & 3)
    bitrate_i, rate_i, padding = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
    if version == 1 or layer == 4 or bitrate_i in (0, 15) or rate_i == 3:
        return 0
    kbps = _MP3_KBPS[(1 if version == 3 else 0, layer if version == 3 or layer == 1 else 2)][bitrate_i]
    rate = _MP3_RATES[version][rate_i]
    if layer == 1:
        return (12 * kbps * 1000 // rate + padding) * 4
    return (144 if layer == 2 or version == 3 else 72) * kbps * 1000 // rate + padding


def _mpeg_audio(head: bytes) -> bool:
    """MP3/MP2 without an ID3 tag: two frame headers in a row (one alone is two bytes: too weak)."""
    n = _mpeg_frame_length(head[:4])
    return n > 0 and _mpeg_frame_length(head[n:n + 4]) > 0


# Weak signatures: Pillow formats whose first bytes may be a coincidence; the header parser decides.
_WEAK_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"), (b"\x01\xda", "SGI"),
    (b"P1", "PPM"), (b"P2", "PPM"), (b"P3", "PPM"), (b"P4", "PPM"), (b"P5", "PPM"), (b"P6", "PPM"),
    (b"Pf", "PPM"), (b"PF", "PPM"), (b"\x0a", "PCX"), (b"\x00\x00\x00\x00\x00\x00\x00\x04", "MCIDAS"),
)


@functools.cache
def _pillow_formats() -> dict[str, str]:
    """Extension -> Pillow format, for the formats Pillow can open and decode here."""
    from xsearch.engine.preprocess.image import register_plugins

    register_plugins()
    from PIL import EpsImagePlugin, Image

    skip = set(_PIL_UNDECODABLE)
    if not EpsImagePlugin.has_ghostscript():
        skip.add("EPS")
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and fmt not in skip}


def _pillow_accepts(path: str, formats: list[str]) -> bool:
    """Whether Pillow's header parser for one of ``formats`` takes the file (reads the header only)."""
    from PIL import Image

    from xsearch.engine.preprocess.noise import capture

    # What a parser says here is said again when the file is decoded, and kept with the item then.
    with capture(path):
        try:
            with Image.open(path, formats=formats) as img:
                return img.width > 0 and img.height > 0
        except Exception:  # any parser complaint means "not this format"; decoding errors come later, with reasons
            return False


def _read_head(path: str, n: int = HEAD_BYTES) -> bytes:
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
    if by_ext == "text":
        return by_ext
    if ext in RAW_EXTENSIONS:
        return "image"  # TIFF-like or proprietary: rawpy reads them, Pillow mostly cannot
    head = _read_head(path)
    found, ambiguous = _sniff(head)
    if by_ext is not None:
        # A media extension: trust the content when it names another media kind, except a container
        # that may hold audio alone under an audio extension (an .m4a with an "isom" brand, an .mka).
        if found is None or (ambiguous and by_ext == "audio"):
            return by_ext
        return found
    if found is not None:
        return found
    if ext in CONTENT_ONLY_EXTENSIONS or not head:
        return None
    formats = _pillow_formats()
    candidates = [fmt for magic, fmt in _WEAK_IMAGE_MAGIC if head.startswith(magic)]
    if ext in formats:
        candidates.insert(0, formats[ext])
    if candidates and _pillow_accepts(path, list(dict.fromkeys(candidates))):
        return "image"
    return None
