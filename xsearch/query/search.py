"""Running a query: embed the inputs, compose them, search each target modality, merge."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from xsearch.errors import UsageError
from xsearch.pathnames import stored_abspath
from xsearch.query.spec import QueryInput, QuerySpec
from xsearch.storage import Storage


@dataclass
class Hit:
    rank: int
    score: float  # cosine similarity between the query vector and the item's vector
    path: str
    modality: str
    id: int
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": self.path, "modality": self.modality, "id": self.id, **({"facts": self.facts} if self.facts else {})}


def compose(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ImageBind's embedding arithmetic: the normalised weighted sum of unit vectors."""
    v = (vectors.astype(np.float32) * weights.astype(np.float32)[:, None]).sum(axis=0)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-6:
        raise UsageError("the weighted query inputs cancel out (their sum is the zero vector); change the weights")
    return (v / n).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise UsageError("a query vector is zero or not finite")
    return v / n


def input_vectors(inputs: list[QueryInput], storage: Storage, get_embedder: Callable[[], Any]) -> np.ndarray:
    """One unit vector per input, embedding each modality's inputs in one batch."""
    out: list[np.ndarray | None] = [None] * len(inputs)
    by_kind: dict[str, list[int]] = {}
    for i, inp in enumerate(inputs):
        if inp.kind == "vector":
            out[i] = _unit(inp.value)
        elif inp.kind == "like":
            item = storage.item_by_path(stored_abspath(inp.value))
            if item is None or item.status != "ok":
                raise UsageError(f"{inp.value}: --like needs a file that is indexed in this store (run `xsearch index` first)")
            out[i] = _unit(storage.get_vectors([item.id])[0])
        else:
            by_kind.setdefault(inp.kind, []).append(i)
    if by_kind:
        embedder = get_embedder()
        for kind, idx in by_kind.items():
            values = [inputs[i].value for i in idx]
            if kind != "text":
                for v in values:
                    if not os.path.isfile(v):
                        raise UsageError(f"{v}: no such file (for --{kind})")
            vecs = embedder.embed(kind, values)
            for i, v in zip(idx, vecs):
                out[i] = _unit(v)
    dims = {len(v) for v in out}
    if len(dims) > 1:
        raise UsageError(f"query vectors have different dimensions {sorted(dims)}")
    return np.stack(out)


def run_query(spec: QuerySpec, storage: Storage, get_embedder: Callable[[], Any]) -> list[Hit]:
    spec.validate()
    vectors = input_vectors(spec.inputs, storage, get_embedder)
    q = compose(vectors, np.array([i.weight for i in spec.inputs]))
    return search_vector(q, spec, storage)


def search_vector(q: np.ndarray, spec: QuerySpec, storage: Storage) -> list[Hit]:
    """Top-k over the target modalities for one composed unit vector, filters applied."""
    counts = storage.counts()
    targets = [m for m in (spec.targets or counts) if counts.get(m)]
    exclude = {stored_abspath(p) for p in spec.exclude}
    folder = os.path.join(stored_abspath(spec.folder), "") if spec.folder else None
    # Excluded items and the score floor can remove candidates: ask for a few more.
    want = spec.k + len(exclude)
    found: list[tuple[float, int, str]] = []
    for m in targets:
        ids = None
        if folder or spec.glob:
            ids = storage.ids_matching(modality=m, prefix=folder, glob=spec.glob)
            if len(ids) == 0:
                continue
        for item_id, score in storage.search(m, q[None, :], want, ids=ids)[0]:
            if spec.min_score is None or score >= spec.min_score:
                found.append((float(score), int(item_id), m))
    found.sort(key=lambda t: -t[0])
    items = {it.id: it for it in storage.get_items([i for _, i, _ in found])}
    hits: list[Hit] = []
    for score, item_id, m in found:
        it = items.get(item_id)
        if it is None or it.path in exclude:
            continue  # removed meanwhile, or one of the --like inputs
        hits.append(Hit(len(hits) + 1, round(score, 6), it.path, it.modality, it.id, it.facts))
        if len(hits) == spec.k:
            break
    return hits
