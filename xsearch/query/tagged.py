"""The ``tags`` query filter's parsing. The filter itself is xsearch.query.filters.HasTags: a selection
through the tags table's label index when a label is rare enough, else a test of each round of
candidates, in the candidate loop that folder and glob filters share."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from xsearch.errors import UsageError
from xsearch.query.search import Hit, run_query
from xsearch.query.spec import QuerySpec
from xsearch.storage import Storage


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
    """A query with a tag filter: the tags are a filter like the others (xsearch.query.filters.HasTags),
    applied in the same candidate loop; kept for callers of this name."""
    return run_query(spec, storage, get_embedder)
