"""Result filters (``folder``, ``glob``, ``tags``) and the one loop that applies them to a search.

A filter keeps some items out of a query's results. It offers two ways to apply it:

- ``select(storage, limit)``: the ids of every item that can pass, when an index of the database lists
  them by reading at most ``limit`` rows; None when it cannot (no index narrows it, or more match).
  ``limit=None`` asks for them whatever it costs: the last resort, which may read every item's path.
- ``keep(storage, items)``: the exact test of a round of candidates (one database read at most).

:class:`FilteredSearch` runs a query's filters against each target modality's index, in this order:

1. **Selection.** Each filter whose ``select`` answers within the limit (at least ``SELECT_MIN`` rows,
   more in a large store: ``total // SELECT_SHARE``; divided by the filter's ``row_cost``) restricts the
   index search to its ids; several are intersected. The index then scores only allowed vectors (exactly, from the stored vectors, when few).
2. **Candidates.** The other filters test candidates: the index's best ``want`` are fetched and tested;
   while fewer than ``want`` pass and the modality has more, the search asks again for ``GROWTH`` times as
   many (an index search returns fewer than asked only when no more items are allowed).
3. **Last resort.** Past ``want * DEEPEST`` candidates (fewer than 1 in 64 pass), the remaining filters
   are resolved with ``select(storage, None)`` and the search is restricted to their ids.

The costs and the worst cases are in docs/storage.md ("Filtered queries"). A new filter implements
``select`` (from its own table's index, if it has one) and ``keep``, and is added by :func:`query_filters`:
the loop needs nothing more (:class:`HasTags` is one such).
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from xsearch.pathnames import stored_abspath

if TYPE_CHECKING:
    from xsearch.query.spec import QuerySpec
    from xsearch.storage import Item, Storage

SELECT_MIN = 16_384  # a selection of up to this many ids is always worth reading (~4 ms of the path index)
SELECT_SHARE = 8  # ...and up to 1/8 of the searched items: past that, candidates pass often enough
GROWTH = 4  # each further candidate round asks for this many times as many
DEEPEST = 64  # candidate rounds stop at want * DEEPEST; then the filters are resolved in full


class Filter(Protocol):
    row_cost: int  # what one selected row costs, in rows of the path index (its selection limit is divided by it)

    def select(self, storage: Storage, limit: int | None) -> np.ndarray | None:
        """Sorted int64 ids of every item that may pass (of any modality: the index keeps its own), read
        through an index in at most ``limit`` rows; None when that cannot be done. Never None for
        ``limit=None``."""

    def keep(self, storage: Storage, items: list[Item]) -> list[bool]:
        """Whether each of these items passes (the exact test)."""


@dataclass(frozen=True)
class UnderFolder:
    """Items below a folder: their stored path starts with the folder's stored path and a separator.

    Stored paths are escaped as ``ls -b`` shows them (xsearch.pathnames), one token per character or
    byte and "/" never part of a token, so a folder's escaped path followed by "/" is a prefix of the
    escaped path of exactly the items below it: a range of the path index."""

    prefix: str  # stored (escaped, absolute) folder path ending with "/"
    row_cost = 1

    @classmethod
    def of(cls, folder: str | os.PathLike) -> UnderFolder:
        return cls(os.path.join(stored_abspath(folder), ""))

    def select(self, storage: Storage, limit: int | None) -> np.ndarray | None:
        got = storage.ids_with_prefix(self.prefix, limit=limit)
        return None if got is None else np.sort(got[0])

    def keep(self, storage: Storage, items: list[Item]) -> list[bool]:
        return [it.path.startswith(self.prefix) for it in items]


@dataclass(frozen=True)
class PathGlob:
    """Items whose path matches a glob (``fnmatch``, case-sensitive): a glob without a separator matches
    the file name (``*.jpg``), one with a separator the whole stored path (``/photos/*/2024-*``)."""

    pattern: str
    _match: Callable[[str], Any] = field(init=False, repr=False, compare=False)
    row_cost = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "_match", re.compile(fnmatch.translate(self.pattern)).match)

    @property
    def whole_path(self) -> bool:
        return "/" in self.pattern or os.sep in self.pattern

    @property
    def literal_prefix(self) -> str:
        """What every matching path starts with: a whole-path glob's characters before its first wildcard."""
        if not self.whole_path:
            return ""
        return re.split(r"[*?\[]", self.pattern, maxsplit=1)[0]

    def test(self, path: str) -> bool:
        return self._match(path if self.whole_path else path[path.rfind("/") + 1:]) is not None

    def select(self, storage: Storage, limit: int | None) -> np.ndarray | None:
        prefix = self.literal_prefix
        if not prefix and limit is not None:
            return None  # no range of the path index narrows it: test candidates instead
        got = storage.ids_with_prefix(prefix, limit=limit, with_paths=True)
        if got is None:
            return None
        ids, paths = got
        keep = np.fromiter((self.test(p) for p in paths), dtype=bool, count=len(paths))
        return np.sort(ids[keep])

    def keep(self, storage: Storage, items: list[Item]) -> list[bool]:
        return [self.test(it.path) for it in items]


@dataclass(frozen=True)
class HasTags:
    """Items carrying every one of these tags (current tags of any label set: xsearch.storage.tags).
    The selection reads the rarest label's items through the tags table's label index."""

    labels: tuple[str, ...]
    row_cost = 16  # a tag row joins two more tables (~95 SQLite instructions, a path index row ~6)

    def select(self, storage: Storage, limit: int | None) -> np.ndarray | None:
        from xsearch.storage import tags as stored_tags  # (it imports the query package)

        ids = stored_tags.tagged_ids(storage, self.labels, limit=limit)
        return None if ids is None else np.array(sorted(ids), dtype=np.int64)

    def keep(self, storage: Storage, items: list[Item]) -> list[bool]:
        from xsearch.storage import tags as stored_tags

        carrying = stored_tags.tagged_ids(storage, self.labels, among=[it.id for it in items])
        return [it.id in carrying for it in items]


def query_filters(spec: QuerySpec) -> list[Filter]:
    """The filters a query spec asks for (the score floor is not one: it applies to scores)."""
    out: list[Filter] = []
    if spec.folder:
        out.append(UnderFolder.of(spec.folder))
    if spec.glob is not None:
        out.append(PathGlob(spec.glob))
    if spec.tags:
        out.append(HasTags(tuple(spec.tags)))
    return out


@dataclass
class FilteredSearch:
    """One query's filtered searches, one per target modality; what they read is shared between them."""

    storage: Storage
    filters: list[Filter]
    total: int  # vectors in the modalities searched (sets the selection limit)
    allowed: np.ndarray | None = field(default=None, init=False)  # sorted ids, from selections
    tests: list[Filter] = field(default_factory=list, init=False)  # filters applied to candidates
    items: dict[int, Item] = field(default_factory=dict, init=False)  # candidates fetched so far

    def __post_init__(self) -> None:
        limit = max(SELECT_MIN, self.total // SELECT_SHARE)
        for f in self.filters:
            ids = f.select(self.storage, max(1, limit // f.row_cost))
            if ids is None:
                self.tests.append(f)
            else:
                self._restrict(ids)

    def _restrict(self, ids: np.ndarray) -> None:
        self.allowed = ids if self.allowed is None else np.intersect1d(self.allowed, ids, assume_unique=True)

    def search(self, modality: str, q: np.ndarray, want: int, min_score: float | None = None) -> list[tuple[int, float]]:
        """Up to ``want`` (id, cosine) of ``modality``, best first, that pass every filter and score at
        least ``min_score``."""
        k = want
        while True:
            if self.allowed is not None and not len(self.allowed):
                return []
            found = self.storage.search(modality, q[None, :], k, ids=self.allowed)[0]
            exhausted = len(found) < k  # no more allowed items in this modality
            if min_score is not None:
                above = [r for r in found if r[1] >= min_score]
                exhausted = exhausted or len(above) < len(found)  # the rest score lower still
                found = above
            if not self.tests:
                return found[:want]
            self.fetch([i for i, _ in found])
            passed = [(i, s) for i, s in found if i in self.items]  # removed meanwhile: dropped
            for f in self.tests:  # each filter tests what the ones before it kept
                passed = [r for r, ok in zip(passed, f.keep(self.storage, [self.items[i] for i, _ in passed])) if ok]
            if len(passed) >= want or exhausted:
                return passed[:want]
            if k >= want * DEEPEST:
                # Few candidates pass: list the filters' items in full (the worst case) and search only
                # those, here and in the query's other modalities.
                for f in self.tests:
                    self._restrict(f.select(self.storage, None))
                self.tests, k = [], want
                continue
            k *= GROWTH

    def fetch(self, ids: list[int]) -> dict[int, Item]:
        """The items of these ids (removed ones left out), each read from the database once per query."""
        missing = [i for i in ids if i not in self.items]
        if missing:
            self.items.update((it.id, it) for it in self.storage.get_items(missing))
        return self.items
