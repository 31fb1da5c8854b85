"""Running a query: embed the inputs, compose them, search each target modality, merge."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from xsearch.errors import UsageError
from xsearch.pathnames import name_keys, store_path
from xsearch.query.filters import FilteredSearch, query_filters
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
    start: float | None = None  # a moment's span in seconds (None: the whole file)
    end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        span = {} if self.start is None else {"start": self.start, "end": self.end}
        return {"rank": self.rank, "score": self.score, "path": self.path, "modality": self.modality, "id": self.id,
                **span, "facts": self.facts}


def compose(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ImageBind's embedding arithmetic: the normalised weighted sum of unit vectors."""
    weights = np.asarray(weights, dtype=np.float64)
    scale = float(np.abs(weights).max(initial=0.0))
    if not np.isfinite(scale) or scale == 0:
        raise UsageError("the query weights must be finite and not all 0")
    # Only the ratios matter (the sum is normalised): dividing by the largest weight keeps small weights
    # from reading as "cancels out" and large ones from overflowing float32.
    v = (vectors.astype(np.float64) * (weights / scale)[:, None]).sum(axis=0)
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


def input_vectors(inputs: list[QueryInput], storage: Storage, get_embedder: Callable[[], Any],
                  likes: dict[int, Any] | None = None) -> np.ndarray:
    """One unit vector per input, embedding each modality's inputs in one batch. ``likes``: the items of
    the ``like`` inputs by input position, as :func:`like_items` resolved them (resolved here if not given)."""
    if likes is None:
        likes = like_items(inputs, storage)
    out: list[np.ndarray | None] = [None] * len(inputs)
    by_kind: dict[str, list[int]] = {}
    spans: list[int] = []  # inputs naming a span of a file (PATH#t=START,END)
    for i, inp in enumerate(inputs):
        if inp.kind == "vector":
            out[i] = _unit(inp.value)
        elif inp.start is not None:
            spans.append(i)
            if inp.kind != "like":
                _check_file(inp.value, inp.kind)
        elif inp.kind != "like":
            by_kind.setdefault(inp.kind, []).append(i)
    whole = {i: it for i, it in likes.items() if inputs[i].start is None}  # (a span's vector is its windows')
    if whole:  # every like input's stored vector in one read
        for i, v in zip(whole, storage.get_vectors([it.id for it in whole.values()])):
            out[i] = _unit(v)
    for kind, idx in by_kind.items():  # before the model loads: a typo should not cost a model load
        if kind != "text":
            for i in idx:
                _check_file(inputs[i].value, kind)
    if by_kind:
        embedder = get_embedder()
        for kind, idx in by_kind.items():
            values = [inputs[i].value for i in idx]
            vecs = embedder.embed(kind, values)
            for i, v in zip(idx, vecs):
                out[i] = _unit(v)
    if spans:
        from xsearch.query.moments import span_vector

        for i in spans:
            item = likes.get(i)  # a like input's item, looked up once
            out[i] = _unit(span_vector(inputs[i], storage, get_embedder, item))
    dims = {len(v) for v in out}
    if len(dims) > 1:
        raise UsageError(f"query vectors have different dimensions {sorted(dims)}")
    return np.stack(out)


def like_items(inputs: list[QueryInput], storage: Storage) -> dict[int, Any]:
    """{input position: stored item} for the ``like`` inputs: each looked up once per query."""
    return {i: _like_item(inp.value, storage) for i, inp in enumerate(inputs) if inp.kind == "like"}


def _find_like(value: str | int, storage: Storage) -> Any:
    """The item ``value`` names: an item id (an int), else the item stored under ``value`` as given (a name
    from add_vectors), else as a file path; or None.

    The same order as Store.remove, so "like" and "remove" agree on what a name means.
    """
    if not isinstance(value, str):
        found = storage.get_items([int(value)])
        return found[0] if found else None
    for key in name_keys(value):
        item = storage.item_by_path(key)
        if item is not None:
            return item
    return None


def _like_item(value: str | int, storage: Storage) -> Any:
    """The stored item a ``like`` input names; a UsageError saying why when there is none to use.

    Worded without CLI flags: the Python and HTTP APIs raise the same messages.
    """
    item = _find_like(value, storage)
    if item is None and not isinstance(value, str):
        raise UsageError(f"like: no item with id {value} in this store")
    # a name that is not valid UTF-8 cannot be printed as it is
    shown = store_path(value) if isinstance(value, str) else f"item {value} ({item.path})"
    if item is None:
        if os.path.isdir(value):
            raise UsageError(f"like: {shown} is a folder; name one indexed file in it")
        raise UsageError(f"like: {shown} is not indexed in this store; index it first, or search with the file itself")
    if item.status != "ok":
        raise UsageError(f"like: {shown} failed to index ({item.error or 'no reason recorded'}); "
                         "it has no vector: fix or replace the file and index it again")
    return item


def _check_file(path: str, kind: str) -> None:
    """A query file must be a regular file: say which of the usual mistakes it is."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a file ({kind} input); name one file in it")
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file ({kind} input)")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: not a regular file ({kind} input)")


def run_query(spec: QuerySpec, storage: Storage, get_embedder: Callable[[], Any], *,
              validated: bool = False) -> list[Hit]:
    """Run a query. ``validated``: the caller has run ``spec.validate()`` already (the CLI does, before it
    opens the store), so it is not run twice."""
    if not validated:
        spec.validate()
    likes = like_items(spec.inputs, storage)
    vectors = input_vectors(spec.inputs, storage, get_embedder, likes)
    q = compose(vectors, np.array([i.weight for i in spec.inputs]))
    if spec.moments:
        from xsearch.query.moments import search_moments

        return search_moments(q, spec, storage)
    # A like of a span excludes only that span (from moments), not its whole file.
    return search_vector(q, spec, storage, exclude=[it.id for i, it in likes.items() if spec.inputs[i].start is None])


def search_vector(q: np.ndarray, spec: QuerySpec, storage: Storage, *,
                  exclude: Iterable[int] | None = None) -> list[Hit]:
    """Top-k over the target modalities for one composed unit vector, filters applied.

    ``exclude``: ids never returned, the ``like`` inputs' own items ("more like this", not "this"); looked
    up from the spec when not given. Nothing here reads more than the index search and the candidates:
    the targets come from the per-modality counters or the loaded indexes, the filters from
    xsearch.query.filters (a range of the path index, or tests on candidates)."""
    if exclude is None:
        exclude = [it.id for it in (_find_like(v, storage) for v in spec.exclude) if it is not None]
    skip = set(exclude)
    targets = storage.search_targets(spec.targets)
    search = FilteredSearch(storage, query_filters(spec), total=sum(targets.values()))
    want = spec.k + len(skip)  # the excluded items may be among the best: ask for that many more
    found: list[tuple[float, int, str]] = []
    for m in targets:
        found += [(float(score), int(item_id), m) for item_id, score in search.search(m, q, want, spec.min_score)]
    found.sort(key=lambda t: -t[0])
    items = search.fetch([i for _, i, _ in found if i not in skip])
    hits: list[Hit] = []
    for score, item_id, m in found:
        it = items.get(item_id)
        if it is None or item_id in skip:
            continue  # removed meanwhile, or one of the like inputs
        hits.append(Hit(len(hits) + 1, round(score, 6), it.path, it.modality, it.id, it.facts))
        if len(hits) == spec.k:
            break
    return hits
