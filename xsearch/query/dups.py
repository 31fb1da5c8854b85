"""Near-duplicate groups: items whose stored vectors have a cosine of at least a threshold.

Never all pairs. Each modality's vectors are split into cells by the coarse quantizer of its IVF index
(a flat index above ``EXACT_MAX`` vectors gets a k-means quantizer trained for the run); every item is
compared with the items of its ``probes`` nearest cells only, that is a k-NN/range search over the
index's lists with nprobe = ``probes``. Near-duplicates are far closer than anything else, so they share
a cell (or a neighbouring one) almost always; up to ``EXACT_MAX`` vectors the comparison is exact.
Pairs are joined into groups (connected components); each group suggests a keeper: the largest
resolution (pixels), then the longest duration, then the newest file. Nothing is deleted or moved.

Videos are compared by their whole-file vectors (no per-moment vectors exist yet), so two videos that
differ only after a long shared intro may still look alike, and an edited cut of a video may not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from xsearch.storage.records import Item

EXACT_MAX = 8192  # up to this many vectors, one cell: every item is compared with every other
_ASSIGN_CHUNK = 65_536  # vectors assigned to cells at a time
_CROSS_K = 16  # nearest neighbours looked at per video in --cross


@dataclass
class DupMember:
    id: int
    path: str
    modality: str
    score: float  # cosine with the group's keeper (1.0 for the keeper itself)
    keeper: bool = False
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "modality": self.modality, "score": self.score,
                "keeper": self.keeper, **({"facts": self.facts} if self.facts else {})}


@dataclass
class DupGroup:
    kind: str  # "same" (one modality), "audio-track" (a video's sound vs audio files), "still" (video vs images)
    members: list[DupMember]  # the keeper first, then by score

    @property
    def keeper(self) -> DupMember:
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "keeper": self.keeper.path, "members": [m.to_dict() for m in self.members]}


def keeper_key(item: Item) -> tuple:
    """Largest resolution, then longest duration, then newest; the lowest id breaks ties."""
    f = item.facts or {}
    pixels = _num(f.get("width")) * _num(f.get("height"))
    return (pixels, _num(f.get("duration")), item.mtime_ns or 0, -item.id)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def similar_pairs(x: np.ndarray, threshold: float, quantizer: faiss.Index | None, probes: int) -> np.ndarray:
    """(p, 2) row-index pairs i < j with x[i] . x[j] >= threshold, searched cell by cell (see module doc).
    ``x``: unit rows, float16 or float32; compared in float32 a cell at a time."""
    n = len(x)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if quantizer is None:
        cells = np.zeros((n, 1), np.int64)
    else:
        probes = max(1, min(probes, quantizer.ntotal))
        cells = np.empty((n, probes), np.int64)
        for s in range(0, n, _ASSIGN_CHUNK):
            _, lab = quantizer.search(np.ascontiguousarray(x[s: s + _ASSIGN_CHUNK], np.float32), probes)
            cells[s: s + _ASSIGN_CHUNK] = lab
    primary = cells[:, 0]
    order = np.argsort(primary, kind="stable")
    bounds = np.searchsorted(primary[order], np.arange(int(primary.max()) + 2))
    # Items whose 2nd..probes-th cell is c are compared with c's members too.
    extra_rows = np.repeat(np.arange(n), cells.shape[1] - 1)
    extra_cells = cells[:, 1:].reshape(-1)
    keep = extra_cells >= 0
    extra_rows, extra_cells = extra_rows[keep], extra_cells[keep]
    eorder = np.argsort(extra_cells, kind="stable")
    extra_rows, extra_cells = extra_rows[eorder], extra_cells[eorder]
    ebounds = np.searchsorted(extra_cells, np.arange(len(bounds)))
    found: list[np.ndarray] = []
    for c in range(len(bounds) - 1):
        members = order[bounds[c]: bounds[c + 1]]
        if not len(members):
            continue
        queries = np.concatenate([members, extra_rows[ebounds[c]: ebounds[c + 1]]]) if c + 1 < len(ebounds) else members
        if len(queries) < 2:
            continue
        xm = np.asarray(x[members], np.float32)
        xq = xm if len(queries) == len(members) else np.asarray(x[queries], np.float32)
        qi, mi = np.nonzero(xq @ xm.T >= threshold)
        a, b = queries[qi], members[mi]
        sel = a != b
        if sel.any():
            found.append(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def components(pairs: np.ndarray) -> list[list[int]]:
    """Connected components (each sorted, size >= 2) of the graph whose edges are ``pairs``."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        root = a
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(a, a) != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for node in {int(v) for v in pairs.reshape(-1).tolist()}:
        groups.setdefault(find(node), []).append(node)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def make_group(kind: str, items: Sequence[Item], vectors: np.ndarray, keeper: int | None = None) -> DupGroup:
    """A group of items (rows of ``vectors`` in the same order), scored against the keeper."""
    k = keeper if keeper is not None else max(range(len(items)), key=lambda i: keeper_key(items[i]))
    scores = np.asarray(vectors, np.float32) @ np.asarray(vectors[k], np.float32)
    members = [DupMember(it.id, it.path, it.modality, round(float(min(s, 1.0)), 6), i == k, it.facts)
               for i, (it, s) in enumerate(zip(items, scores))]
    keep = members[k]
    rest = sorted((m for i, m in enumerate(members) if i != k), key=lambda m: (-m.score, m.path))
    keep.score = 1.0
    return DupGroup(kind, [keep, *rest])


def train_quantizer(x: np.ndarray, seed: int = 1) -> faiss.Index:
    """A k-means quantizer for a flat index's vectors: ~4 sqrt(n) cells, as the IVF indexes plan them."""
    n, d = x.shape
    nlist = max(2, 2 ** int(math.log2(max(4 * math.sqrt(n), 2))))
    nlist = min(nlist, max(2, n // 39))  # FAISS wants >= 39 training points per centroid
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    km = faiss.Kmeans(d, nlist, niter=10, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(sample, np.float32))
    q = faiss.IndexFlatIP(d)
    q.add(km.centroids)
    return q


def cross_pairs(vectors: np.ndarray, search: Callable[[np.ndarray, int], list[list[tuple[int, float]]]],
                threshold: float) -> list[list[tuple[int, float]]]:
    """Per query vector, the (item id, cosine) of another modality's items at or above the threshold."""
    if not len(vectors):
        return []
    return [[(i, s) for i, s in hits if s >= threshold] for hits in search(vectors, _CROSS_K)]


def memory_rows(n: int, d: int) -> str:
    """float32 when the vectors fit in 1 GB that way, else float16 (half the memory; the stored vectors
    are float16 by default anyway)."""
    return "float32" if n * d * 4 <= 1 << 30 else "float16"


def aligned_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of two recordings' windows taken at the same times (row i with row i; unit rows), over
    as many windows as the longer has: a window the other lacks counts 0, so a shared start is not enough."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    return float(np.einsum("ij,ij->i", a[:n].astype(np.float32), b[:n].astype(np.float32)).sum() / max(len(a), len(b)))
