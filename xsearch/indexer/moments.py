"""The moments setting of an indexed folder: which recordings are cut into windows, how long and how far apart.

Stored per folder as JSON ``{"audio": [window, hop], "video": [...], "imu": [...]}`` (seconds); a file's
facts keep the part that applies to it, so changing a setting re-embeds exactly the files it changes.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable

from xsearch.errors import UsageError

# seconds: (window, hop). Audio and video as the original's 2 s clips; IMU as its 5 s (2,000-sample) windows.
DEFAULT_WINDOWS = {"audio": (2.0, 2.0), "video": (2.0, 2.0), "imu": (5.0, 5.0)}
MOMENT_MODALITIES = tuple(DEFAULT_WINDOWS)  # audio, video, imu
# Which windows a file of each modality gets: a video's sound track is cut as audio.
_TRACKS = {"audio": ("audio",), "video": ("video", "audio"), "imu": ("imu",)}
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|ms)?\s*$", re.IGNORECASE)
MIN_WINDOW = 0.1  # seconds: shorter windows hold too little for any tower


def _seconds(text: str, what: str) -> float:
    m = _SECONDS.match(text)
    if not m:
        raise UsageError(f"{what}: {text!r} is not a duration; write seconds such as 2s, 1.5 or 500ms")
    value = float(m.group(1)) * (1e-3 if (m.group(2) or "").lower() == "ms" else 1.0)
    if not math.isfinite(value) or value < MIN_WINDOW:
        raise UsageError(f"{what}: {text!r} is too short; use at least {MIN_WINDOW:g}s")
    return value


def settings(window: Iterable[str] = (), hop: Iterable[str] = ()) -> dict[str, list[float]]:
    """The defaults, changed by ``MODALITY=WINDOW[/HOP]`` (``--window audio=4s/1s``) and ``MODALITY=HOP``
    (``--hop video=1s``) entries. A window given without a hop hops by the window (no overlap)."""
    out = {m: list(v) for m, v in DEFAULT_WINDOWS.items()}
    for option, entries in (("window", window), ("hop", hop)):
        for entry in entries:
            name, sep, value = entry.partition("=")
            name = name.strip()
            if not sep or name not in out:
                raise UsageError(f"--{option} {entry!r}: write MODALITY={'WINDOW[/HOP]' if option == 'window' else 'HOP'} "
                                 f"with MODALITY one of {', '.join(MOMENT_MODALITIES)} (e.g. audio=2s/1s)")
            if option == "window":
                w, _, h = value.partition("/")
                out[name][0] = _seconds(w, f"--window {name}")
                out[name][1] = _seconds(h, f"--window {name}") if h else out[name][0]
            else:
                out[name][1] = _seconds(value, f"--hop {name}")
    return out


def encode(setting: dict[str, list[float]] | None) -> str | None:
    return None if setting is None else json.dumps(setting, sort_keys=True)


def decode(text: str | None) -> dict[str, list[float]] | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
        return {m: [float(raw[m][0]), float(raw[m][1])] for m in MOMENT_MODALITIES if m in raw}
    except (ValueError, TypeError, KeyError, IndexError):
        return None  # a damaged setting reads as off; `xsearch index --moments` writes it again


def for_file(setting: dict[str, list[float]] | None, modality: str) -> dict[str, list[float]] | None:
    """The part of a folder's setting that applies to a file of ``modality`` (None: no windows)."""
    if setting is None or modality not in _TRACKS:
        return None
    return {t: setting[t] for t in _TRACKS[modality] if t in setting} or None


def kinds(modality: str) -> tuple[tuple[str, str], ...]:
    """(window reader, segment modality) pairs for a file of ``modality``."""
    return tuple(("video-audio" if (modality, t) == ("video", "audio") else t, t) for t in _TRACKS.get(modality, ()))
