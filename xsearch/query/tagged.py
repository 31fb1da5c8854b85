"""The ``tags`` query filter: a post-filter on the candidates of an unfiltered search.

The search asks for more candidates than ``k`` (as many more as the tagged share of the targets
suggests) and keeps those carrying every tag, asking again for four times as many until ``k`` are kept
or the targets are exhausted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

from xsearch.errors import UsageError
from xsearch.query.search import Hit, compose, input_vectors, search_vector
from xsearch.query.spec import QuerySpec
from xsearch.storage import Storage
from xsearch.storage.tags import tagged_ids


def parse_tags(tags: str | Iterable[str] | None) -> tuple[str, ...]:
    """A tag or a list of tags (all required): stripped strings, none empty."""
    if tags is None:
        return ()
    values = [tags] if isinstance(tags, str) else list(tags)
    out = []
    for t in values:
        if not isinstance(t, str) or not t.strip():
            raise UsageError(f"a tag filter must be a non-empty label, not {t!r}")
        out.append(t.strip())
    return tuple(dict.fromkeys(out))


def run_tagged_query(spec: QuerySpec, storage: Storage, get_embedder: Callable[[], Any]) -> list[Hit]:
    spec.validate()
    vectors = input_vectors(spec.inputs, storage, get_embedder)
    q = compose(vectors, np.array([i.weight for i in spec.inputs]))
    allowed = tagged_ids(storage, spec.tags)
    if not allowed:
        return []
    counts = storage.counts()
    total = sum(n for m, n in counts.items() if spec.targets is None or m in spec.targets)
    ceiling = total + len(spec.exclude)
    k = min(ceiling, max(spec.k, spec.k * total // max(len(allowed), 1) * 2))
    plain = dataclasses.replace(spec, tags=())
    while True:
        hits = search_vector(q, dataclasses.replace(plain, k=max(k, 1)), storage)
        kept = [h for h in hits if h.id in allowed]
        if len(kept) >= spec.k or len(hits) < k or k >= ceiling:
            break
        k = min(ceiling, k * 4)
    return [dataclasses.replace(h, rank=r) for r, h in enumerate(kept[: spec.k], start=1)]
