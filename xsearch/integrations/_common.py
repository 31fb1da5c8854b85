"""What the retrievers share: turning a query string into Store.search arguments, and a hit into metadata."""
from __future__ import annotations

import os
from typing import Any

from xsearch.errors import UsageError

# How a retriever reads its query string: "text"; a modality (the string is a file of it); "like" (an indexed
# file, whose stored vector is used); "auto" (an existing file as its detected modality, anything else as text).
QUERY_KINDS = ("text", "image", "audio", "video", "depth", "thermal", "imu", "like", "auto")


def search_kwargs(query: str, query_as: str, k: int, target: Any, filters: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Store.search`` that run ``query`` as ``query_as``."""
    if query_as not in QUERY_KINDS:
        raise UsageError(f"query_as must be one of {', '.join(QUERY_KINDS)}, not {query_as!r}")
    kind = query_as
    if kind == "auto":
        from xsearch.indexer.detect import detect_modality

        found = detect_modality(query) if os.path.isfile(query) else None
        kind = found if found in QUERY_KINDS else "text"
        if found == "text":  # a text file: its content is the query, not its name
            from xsearch.engine.preprocess.text import load_text

            query = load_text(query)
    return {kind: query, "k": k, "target": target, **filters}


def hit_id(hit: Any) -> str:
    """A hit's id in a framework: the item's, plus its span for a moment (several moments of one file
    are different results, which deduplication must not merge)."""
    start = getattr(hit, "start", None)
    return str(hit.id) if start is None else f"{hit.id}#t={start:g},{hit.end:g}"


def hit_metadata(hit: Any) -> dict[str, Any]:
    """path, modality, score and id of a hit, start/end where the hit is a moment, and its media facts."""
    meta: dict[str, Any] = {"path": hit.path, "modality": hit.modality, "score": float(hit.score), "id": hit.id,
                            "rank": hit.rank}
    for key in ("start", "end"):
        value = getattr(hit, key, None)
        if value is None:
            value = (hit.facts or {}).get(key)
        if value is not None:
            meta[key] = value
    facts = {k: v for k, v in (hit.facts or {}).items() if k not in ("snippet", "warnings")}
    if facts:
        meta["facts"] = facts
    return meta


def hit_text(hit: Any) -> str:
    """The text a framework shows for a hit: a text item's opening, else the file's path."""
    snippet = (hit.facts or {}).get("snippet")
    return snippet if hit.modality == "text" and snippet else hit.path
