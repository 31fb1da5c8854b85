"""Names of the modalities the engine embeds."""
from __future__ import annotations

# ImageBind's own six, in the order of its paper.
IMAGEBIND_MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")

# User-facing names: "image" and "video" are both embedded by the vision tower.
MODALITIES = ("image", "video", "text", "audio", "depth", "thermal", "imu")

_TOWER = {"image": "vision", "video": "vision"}


def tower(modality: str) -> str:
    """The ImageBind tower (state-dict modality) that embeds a user-facing modality."""
    if modality not in MODALITIES and modality not in IMAGEBIND_MODALITIES:
        from xsearch.errors import UsageError

        raise UsageError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return _TOWER.get(modality, modality)
