"""The values the storage layer hands out (Item) and takes in (ItemRecord)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OK = "ok"
FAILED = "failed"


@dataclass
class Item:
    """One indexed file (or bring-your-own embedding) as stored."""

    id: int
    path: str
    modality: str
    size: int
    mtime_ns: int
    content_hash: str | None
    facts: dict  # media facts, e.g. {"duration": 3.2, "width": 640, "height": 480}
    status: str  # "ok" | "failed"
    error: str | None  # why, for failed items
    model: str | None  # the model id that embedded it
    root: str | None  # the indexed folder it belongs to
    indexed_at: float | None = None  # unix time of the last put


@dataclass
class ItemRecord:
    """What the indexer writes for one path: a vector (ok item) or an error (failed item)."""

    path: str
    modality: str
    size: int
    mtime_ns: int
    content_hash: str | None = None
    facts: dict = field(default_factory=dict)
    model: str | None = None
    root: str | None = None
    vector: np.ndarray | None = None  # L2-normalised embedding, shape (d,)
    error: str | None = None  # set (with vector None) for a file that could not be embedded
    segments: list[SegmentRecord] | None = None  # moments: windows of the recording (replace the old ones)


@dataclass
class SegmentRecord:
    """One window of a recording: its modality ("audio" also for a video's sound), span and vector."""

    modality: str
    start: float  # seconds
    end: float
    vector: np.ndarray


@dataclass
class Segment:
    """A stored window of an item (no vector)."""

    id: int
    item_id: int
    modality: str
    start: float
    end: float
