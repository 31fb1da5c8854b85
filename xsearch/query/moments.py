"""Moments: search the stored windows of recordings and merge neighbouring windows into moments;
query inputs that name a span of a file (``long.wav#t=12.5,14.5``, W3C media-fragment syntax).

A moment is a run of adjacent windows (each starting where the previous one ends, or inside it) of one
file whose scores are within ``MERGE_MARGIN`` of the run's best; its score is that best. Moments of one
file that overlap (its frames' and its sound track's) are one result: the better one.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

import numpy as np

from xsearch.errors import UsageError
from xsearch.pathnames import stored_abspath
from xsearch.query.spec import QueryInput, QuerySpec
from xsearch.storage import Storage
from xsearch.storage.store import seg_key

MERGE_MARGIN = 0.05  # cosine: a neighbouring window this close to a moment's best score belongs to it
# Windows fetched per result asked for, at first: merging folds several into one moment, so when the
# candidates run out before k moments do, the search is asked again for 4x as many. Each candidate costs
# an exact re-rank of several index hits (IVF-PQ), so asking for many every time would cost ~5x.
_CANDIDATES = 3
_MIN_CANDIDATES = 20
_ROUNDS = 3
_FRAGMENT = re.compile(r"^(?P<path>.+)#t=(?P<start>[^,]*),(?P<end>[^,]*)$", re.DOTALL)
_NUMBER = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*$")
_MOMENT_MODALITIES = ("audio", "video", "imu")


def split_fragment(kind: str, value: str) -> tuple[str, float | None, float | None]:
    """``PATH#t=START,END`` -> (PATH, START, END) in seconds; a value without one (or a file that exists
    under the full name) -> (value, None, None)."""
    if "#t=" not in value or os.path.exists(value):
        return value, None, None
    m = _FRAGMENT.match(value)
    if not m or not _NUMBER.match(m.group("start")) or not _NUMBER.match(m.group("end")):
        raise UsageError(f"{kind}: {value!r}: a span is written PATH#t=START,END in seconds, e.g. rec.wav#t=12.5,14.5")
    start, end = float(m.group("start")), float(m.group("end"))
    if not (math.isfinite(end) and end > start):
        raise UsageError(f"{kind}: {value!r}: the span's end must come after its start")
    return m.group("path"), start, end


def fragment(path: str, start: float, end: float) -> str:
    """``path#t=START,END`` (W3C media fragment), as --paths prints a moment."""
    return f"{path}#t={_num(start)},{_num(end)}"


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def format_span(start: float, end: float) -> str:
    """``00:41:10.0-00:41:14.0``."""
    def one(t: float) -> str:
        tenths = int(round(t * 10))
        s, d = divmod(tenths, 10)
        return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{d}"
    return f"{one(start)}-{one(end)}"


# ---------------------------------------------------------------- inputs that name a span


def span_vector(inp: QueryInput, storage: Storage, get_embedder: Callable[[], Any], item: Any = None) -> np.ndarray:
    """The vector of one span input: a stored item's windows over the span (``like``, averaged by overlap),
    else the span of the file embedded as one window."""
    start, end = float(inp.start), float(inp.end)
    if inp.kind == "like":
        segs = [s for s in storage.item_segments(item.id, vectors=True) if s.modality == item.modality]
        weights = np.array([max(0.0, min(end, s.end) - max(start, s.start)) for s in segs])
        if len(segs) and weights.sum() > 0:
            return (np.stack([s.vector for s in segs]) * weights[:, None]).sum(axis=0)
        if not segs and item.modality in _MOMENT_MODALITIES and os.path.isfile(item.path):
            return _embed_span(item.modality, item.path, start, end, get_embedder)
        raise UsageError(f"like: {inp.value}#t={_num(start)},{_num(end)}: " + (
            f"no stored window of it overlaps {_num(start)}-{_num(end)} s (it lasts "
            f"{_num(max(s.end for s in segs))} s)" if segs else
            "the file has no stored windows; index its folder with moments on"))
    if inp.kind not in _MOMENT_MODALITIES:
        raise UsageError(f"{inp.kind}: {inp.value}#t=...: only audio, video and IMU inputs take a span")
    return _embed_span(inp.kind, inp.value, start, end, get_embedder)


def _embed_span(kind: str, path: str, start: float, end: float, get_embedder: Callable[[], Any]) -> np.ndarray:
    from xsearch.engine.preprocess.moments import windows

    length = end - start
    first = next(iter(windows(kind, path, length, length, start=start, stop=end)), None)
    if first is None:
        raise UsageError(f"{kind}: {path}#t={_num(start)},{_num(end)}: the file holds nothing in that span")
    return get_embedder().embed_tensors(kind, [first[2]])[0]


# ---------------------------------------------------------------- searching windows


def search_moments(q: np.ndarray, spec: QuerySpec, storage: Storage) -> list[Any]:
    """Top-k moments for one composed unit vector, filters applied (targets name file modalities)."""
    from xsearch.query.search import _find_like

    targets = [m for m in (spec.targets or _MOMENT_MODALITIES) if m in _MOMENT_MODALITIES]
    folder = os.path.join(stored_abspath(spec.folder), "") if spec.folder else None
    restrict = bool(folder or spec.glob or spec.targets)
    item_ids = None
    if restrict:
        parts = [storage.ids_matching(modality=m, prefix=folder, glob=spec.glob) for m in targets]
        item_ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    # Spans of the `like` inputs: "more like this moment" never returns the moment itself.
    avoid: dict[str, list[tuple[float, float]]] = {}
    for i in spec.inputs:
        if i.kind == "like":
            it = _find_like(i.value, storage)
            if it is not None:
                avoid.setdefault(it.path, []).append((-math.inf, math.inf) if i.start is None else (i.start, i.end))
    restrict_ids: dict[str, np.ndarray | None] = {}
    for m in _MOMENT_MODALITIES:  # a modality without windows has no index: its search returns nothing
        restrict_ids[m] = None if item_ids is None else storage.segment_ids(m, item_ids)
    want = max(spec.k * _CANDIDATES, _MIN_CANDIDATES)
    for _ in range(_ROUNDS):
        hits, more = _moments(q, spec, storage, restrict_ids, avoid, want)
        if len(hits) >= spec.k or not more:
            break
        want *= 4
    return hits


def _moments(q: np.ndarray, spec: QuerySpec, storage: Storage, restrict_ids: dict[str, np.ndarray | None],
             avoid: dict[str, list[tuple[float, float]]], want: int) -> tuple[list[Any], bool]:
    """Up to k moments from the best ``want`` windows of each modality; and whether any modality had more."""
    from xsearch.query.search import Hit

    found: list[tuple[float, int]] = []
    more = False
    for m, ids in restrict_ids.items():
        if ids is not None and len(ids) == 0:
            continue
        got = storage.search(seg_key(m), q[None, :], want, ids=ids)[0]
        more = more or len(got) == want
        for seg_id, score in got:
            if spec.min_score is None or score >= spec.min_score:
                found.append((float(score), int(seg_id)))
    segs = {s.id: s for s in storage.segments([i for _, i in found])}
    runs = _merge([(score, segs[i]) for score, i in found if i in segs])
    items = {it.id: it for it in storage.get_items(list({r[1] for r in runs}))}
    hits: list[Hit] = []
    kept: dict[int, list[tuple[float, float]]] = {}
    for score, item_id, start, end in runs:
        it = items.get(item_id)
        if it is None:
            continue  # removed meanwhile
        if any(_overlap(start, end, a, b) for a, b in avoid.get(it.path, []) + kept.get(item_id, [])):
            continue
        kept.setdefault(item_id, []).append((start, end))
        hits.append(Hit(len(hits) + 1, round(score, 6), it.path, it.modality, it.id, it.facts, start=start, end=end))
        if len(hits) == spec.k:
            break
    return hits, more


def _overlap(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def _merge(scored: list[tuple[float, Any]]) -> list[tuple[float, int, float, float]]:
    """(score, segment) candidates -> (score, item id, start, end) moments, best first."""
    groups: dict[tuple[int, str], list[tuple[float, Any]]] = {}
    for score, seg in scored:
        groups.setdefault((seg.item_id, seg.modality), []).append((score, seg))
    out = []
    for (item_id, _), group in groups.items():
        # Grow each moment from its best window outwards: best windows first, each joining a neighbour.
        group.sort(key=lambda t: t[1].start)
        used = [False] * len(group)
        for i in sorted(range(len(group)), key=lambda j: -group[j][0]):
            if used[i]:
                continue
            best, seg = group[i]
            used[i] = True
            lo = hi = i
            start, end = seg.start, seg.end
            while hi + 1 < len(group) and not used[hi + 1] and group[hi + 1][1].start <= end + 1e-6 \
                    and group[hi + 1][0] >= best - MERGE_MARGIN:
                hi += 1
                used[hi] = True
                end = max(end, group[hi][1].end)
            while lo - 1 >= 0 and not used[lo - 1] and group[lo - 1][1].end >= start - 1e-6 \
                    and group[lo - 1][0] >= best - MERGE_MARGIN:
                lo -= 1
                used[lo] = True
                start = min(start, group[lo][1].start)
            out.append((best, item_id, start, end))
    out.sort(key=lambda t: (-t[0], t[1], t[2]))
    return out
