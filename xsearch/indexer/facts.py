"""Cheap media facts stored with each item (duration, resolution...), read from headers only."""
from __future__ import annotations

from typing import Any


def media_facts(modality: str, path: str) -> dict[str, Any]:
    """Facts about a file that decoded fine; empty when a header cannot tell them."""
    try:
        if modality in ("image", "depth", "thermal") and not path.lower().endswith((".npy", ".npz")):
            from PIL import Image

            with Image.open(path) as img:
                return {"width": img.width, "height": img.height, "mode": img.mode}
        if modality == "audio":
            from xsearch.engine.preprocess.audio import probe_audio

            return probe_audio(path)
        if modality == "video":
            from xsearch.engine.preprocess.video import probe_video

            return probe_video(path)
    except Exception:  # facts are a nicety: a file that embedded fine must not fail here
        return {}
    return {}
