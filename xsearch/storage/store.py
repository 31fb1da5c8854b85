"""The storage facade: one object over the metadata database (truth) and the per-modality FAISS indexes.

Concurrency model:
- every public call opens its own pooled connection and transaction (SQLite WAL: readers see a snapshot);
- writes from this object are serialised by `_mutex`; each write is one transaction, after which the
  in-memory index of each touched modality is updated incrementally (or rebuilt and swapped in);
- searches take only the index's read lock, so many threads can search while another writes.
A write counter per modality ("gen:<modality>" in meta, bumped in the same transaction as the change) says
which database state an index reflects; an index whose counter differs is rebuilt from the database. Beside
it, "count:<modality>" is the modality's number of ok items ("count:<modality>#seg": its stored windows),
moved by the same transactions: what a query searches, what `status` shows and what a loading index is
checked against come from these few meta rows, never from counting the items.
Indexes are loaded on first use of their modality (search, write, index_info, load_indexes), so a
command that searches images never reads the audio index; that load is where a missing, damaged or
stale file is noticed and rebuilt.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import numpy as np
import sqlalchemy as sa

from xsearch.errors import StoreError, UsageError
from xsearch.storage import db, migrations, sqlite
from xsearch.storage import vectors as vec
from xsearch.storage.db import items as T_items
from xsearch.storage.db import label_vectors as T_label_vectors
from xsearch.storage.db import meta as T_meta
from xsearch.storage.db import pending_vectors as T_pending
from xsearch.storage.db import roots as T_roots
from xsearch.storage.db import segments as T_segments
from xsearch.storage.db import tagged as T_tagged
from xsearch.storage.db import tags as T_tags
from xsearch.storage.db import vectors as T_vectors
from xsearch.storage.faiss_index import IndexFileError, IndexPolicy, ModalityIndex, build, ivf_kind, remove_files
from xsearch.storage.files import PathInTheWay, abandoned_temp_files, check_index_dir
from xsearch.storage.lock import is_locked
from xsearch.storage.records import FAILED, OK, Item, ItemRecord, Segment, SegmentRecord

log = logging.getLogger(__name__)

INDEX_DIRNAME = "index"
_REEMBED_META = ("reembed:model", "reembed:model_name", "reembed:dim", "reembed:vector_dtype")
RESERVED_META = {migrations.SCHEMA_VERSION_KEY, "dim", "vector_dtype", *_REEMBED_META}
_MODALITY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # it names the index files
# Moments (windows of recordings) live in indexes of their own, "<modality>#seg": '#' never occurs in a
# modality's name, so a segment index can never share files with an item index.
SEG_SUFFIX = "#seg"
_INDEX_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}(?:#seg)?$")
_IN_CHUNK = 900  # ids per IN (...) list: under SQLite's oldest variable limit (999)
_CHECK_ROWS = 8_192  # stored vectors compared with the re-rank cache at a time (16 MB at 1024-d float16)
_DECODE_ROWS = 256  # rows decoded at a time to check them: temporaries stay in the CPU cache (~10x faster)
_COUNTER_PREFIXES = ("gen:", "count:")  # meta keys the store keeps itself, per modality
_T = TypeVar("_T")

_ITEM_COLUMNS = (
    T_items.c.id, T_items.c.path, T_items.c.modality, T_items.c.size, T_items.c.mtime_ns, T_items.c.content_hash,
    T_items.c.facts, T_items.c.status, T_items.c.error, T_items.c.model, T_items.c.root, T_items.c.indexed_at,
)
_ITEM_NAMES = ", ".join(c.name for c in _ITEM_COLUMNS)


class Storage:
    """Items, roots and vectors in a SQLAlchemy database; one FAISS index per modality derived from them."""

    def __init__(self, directory: str | os.PathLike, url: str | None = None, *, create: bool = True,
                 read_only: bool = False, policy: IndexPolicy | None = None):
        self.directory = Path(directory)
        self.index_dir = self.directory / INDEX_DIRNAME
        self.read_only = read_only
        self.policy = policy or IndexPolicy()
        self._where = str(db.db_path(self.directory)) if url is None else sa.make_url(url).render_as_string()
        self._mutex = threading.RLock()  # serialises writes, index loads and swaps in this process
        self._indexes: dict[str, ModalityIndex] = {}
        self._format: tuple[int, str] | None = None  # (dim, dtype) once the first vector is stored
        self._binding: dict[str, str] = {}  # meta written with the first vector (the model that made it)
        self._closed = False
        if url is None and not db.db_path(self.directory).exists():
            if read_only or not create:
                raise StoreError(f"{self._where}: no xsearch store here; "
                                 "index a folder first or point to an existing store")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.directory}: cannot create the store directory ({exc.strerror}); "
                                 "choose a writable location") from exc
        self.engine = db.make_engine(self.directory, url, read_only=read_only)
        self._sqlite = self.engine.dialect.name == "sqlite"
        try:
            with self._connect() as conn:
                version = migrations.schema_version(conn)
            if version == 0 and (read_only or not create):
                raise StoreError(f"{self._where}: database holds no xsearch store; open it with create=True first")
            if version != migrations.SCHEMA_VERSION:  # take the write lock only when there is work to do
                with self._connect(write=not read_only) as conn:
                    migrations.migrate(conn, where=self._where, read_only=read_only)
            with self._connect() as conn:
                self._format = self._read_format(conn)
            # flush never writes indexes into a store that replaced this one (only checkable for our own file)
            self._identity = self._db_identity() if url is None else None
        except BaseException:
            self.engine.dispose()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Persist indexes (when writable) and release the database."""
        if self._closed:
            return
        try:
            if not self.read_only:
                self.flush()
                if self.engine.dialect.name == "sqlite":
                    sqlite.optimize(self.engine)
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc) from exc
        finally:
            self._closed = True
            self.engine.dispose()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._connect() as conn:
            return _meta_get(conn, key)

    def set_meta(self, key: str, value: str) -> None:
        if key in RESERVED_META or key.startswith(_COUNTER_PREFIXES):
            raise UsageError(f"meta key {key!r} is managed by the store itself")
        with self._write() as conn:
            _meta_set(conn, key, str(value))

    def bind_on_first_vector(self, meta: dict[str, str]) -> None:
        """Meta (the model's id and name) to write in the same transaction as the store's first vector, so a
        store is bound to a model only once it holds a vector of it; {} writes nothing."""
        self._binding = dict(meta)

    @property
    def dim(self) -> int | None:
        """Vector dimension of this store (None until the first vector is stored)."""
        return self._format[0] if self._format else None

    @property
    def vector_dtype(self) -> str | None:
        return self._format[1] if self._format else None

    # -- roots -----------------------------------------------------------------------------------------------
    def add_root(self, path: str, modality: str | None = None) -> None:
        """Remember an indexed folder and its modality override (None: decide per file)."""
        if modality is not None:
            _check_modality(modality)
        with self._write() as conn:
            done = conn.execute(sa.update(T_roots).where(T_roots.c.path == path).values(modality=modality)).rowcount
            if not done:
                conn.execute(sa.insert(T_roots).values(path=path, modality=modality, added_at=time.time()))

    def set_root_moments(self, path: str, moments: str | None) -> None:
        """Remember a folder's moments setting (JSON text, None: off); the folder must be known."""
        with self._write() as conn:
            conn.execute(sa.update(T_roots).where(T_roots.c.path == path).values(moments=moments))

    def root_moments(self) -> dict[str, str | None]:
        """Each indexed folder's moments setting (JSON text, None: off)."""
        with self._connect() as conn:
            return {r.path: r.moments for r in conn.execute(sa.select(T_roots.c.path, T_roots.c.moments))}

    def roots(self) -> dict[str, str | None]:
        with self._connect() as conn:
            return {r.path: r.modality for r in conn.execute(sa.select(T_roots).order_by(T_roots.c.path))}

    def remove_root(self, path: str, *, remove_items: bool = True) -> int:
        """Forget a folder and (by default) every item indexed under it; returns how many items went."""
        with self._mutex, _interrupt_deferred():
            with self._write() as conn:
                conn.execute(sa.delete(T_roots).where(T_roots.c.path == path))
                ids = [] if not remove_items else conn.execute(
                    sa.select(T_items.c.id).where(T_items.c.root == path)).scalars().all()
                gone, count = _delete_items(conn, ids)
                gens = _bump_gens(conn, _removed(gone))
            self._apply({m: _Change(ids) for m, ids in gone.items()}, gens)
        return count

    # -- reading ---------------------------------------------------------------------------------------------
    def items(self, *, root: str | None = None, prefix: str | None = None, modality: str | None = None,
              status: str | None = None) -> list[Item]:
        """Items ordered by path; `prefix` is a plain (case-sensitive) string prefix of the path."""
        query = sa.select(*_ITEM_COLUMNS).order_by(T_items.c.path)
        if root is not None:
            query = query.where(T_items.c.root == root)
        if prefix:
            query = query.where(_has_prefix(prefix, self.engine.dialect.name))
        if modality is not None:
            query = query.where(T_items.c.modality == modality)
        if status is not None:
            query = query.where(T_items.c.status == status)
        with self._connect() as conn:
            return [_item(r) for r in conn.execute(query)]

    def items_under(self, path: str) -> list[Item]:
        """The item at ``path`` and every item below it as a folder, ordered by path."""
        under = os.path.join(path, "")
        inside = sa.or_(T_items.c.path == path, _has_prefix(under, self.engine.dialect.name))
        query = sa.select(*_ITEM_COLUMNS).where(inside).order_by(T_items.c.path)
        with self._connect() as conn:
            return [_item(r) for r in conn.execute(query)]

    def has_items_under(self, path: str) -> bool:
        """Whether an item is stored at ``path`` or below it as a folder: a row or two of the path index,
        however many items are there (items_under reads them all)."""
        return self.ids_with_prefix(os.path.join(path, ""), limit=0) is None or self.item_by_path(path) is not None

    def item_by_path(self, path: str) -> Item | None:
        if self._sqlite:
            rows = self._sqlite_read(lambda run: run(f"SELECT {_ITEM_NAMES} FROM items WHERE path = ?", (path,)))
            return _item(rows[0]) if rows else None
        with self._connect() as conn:
            row = conn.execute(sa.select(*_ITEM_COLUMNS).where(T_items.c.path == path)).first()
        return _item(row) if row else None

    def items_by_hash(self, content_hash: str, modality: str | None = None) -> list[Item]:
        query = sa.select(*_ITEM_COLUMNS).where(T_items.c.content_hash == content_hash).order_by(T_items.c.id)
        if modality is not None:
            query = query.where(T_items.c.modality == modality)
        with self._connect() as conn:
            return [_item(r) for r in conn.execute(query)]

    def get_items(self, ids: Sequence[int]) -> list[Item]:
        """Items in the order given; ids that no longer exist (removed meanwhile) are skipped."""
        wanted = [int(i) for i in ids]
        found: dict[int, Item] = {}
        if self._sqlite:
            rows = self._sqlite_read(lambda run: sqlite.rows_by_ids(run, "items", _ITEM_NAMES.split(", "),
                                                                    sorted(set(wanted))))
        else:
            with self._connect() as conn:
                rows = [row for chunk in _chunks(sorted(set(wanted)), _IN_CHUNK)
                        for row in conn.execute(sa.select(*_ITEM_COLUMNS).where(T_items.c.id.in_(chunk)))]
        for row in rows:
            found[row[0]] = _item(row)
        return [found[i] for i in wanted if i in found]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """float32 (n, d) stored vectors in the order given (as stored: float16 precision if so stored)."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        fmt = self._format or self._refresh_format()
        if fmt is None:
            if len(wanted):
                raise StoreError(f"{self._where}: no vectors stored yet (asked for item {int(wanted[0])})")
            return np.zeros((0, 0), np.float32)
        if self._sqlite:
            rows = self._sqlite_read(lambda run: sqlite.vectors_by_ids(run, np.unique(wanted).tolist()))
            got_ids, got = _decode(rows, fmt)
        else:
            with self._connect() as conn:
                got_ids, got = _fetch(conn, np.unique(wanted), fmt, modality=None)
        row_of = {int(i): r for r, i in enumerate(got_ids)}
        missing = [int(i) for i in wanted if int(i) not in row_of]
        if missing:
            raise StoreError(f"{self._where}: no stored vector for item id {missing[0]} (failed, removed or unknown)")
        return got[[row_of[int(i)] for i in wanted]] if len(wanted) else np.zeros((0, fmt[0]), np.float32)

    def iter_vectors(self, modality: str, chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 unit vectors) of every stored vector of a modality, in id order, ``chunk`` rows at a
        time, from one consistent snapshot (memory stays bounded by the chunk)."""
        fmt = self._format or self._refresh_format()
        if fmt is None:
            return
        with self._connect() as conn:
            for ids, x, _raw in _DbSource(conn, modality, fmt).chunks(chunk):
                yield ids, x

    def coarse_quantizer(self, modality: str) -> object | None:
        """A copy of the coarse quantizer (cell centroids) of a modality's IVF index; None for a flat one."""
        import faiss

        mi = self._index(modality)
        if mi is None or mi.kind == "flat":
            return None
        with mi.lock.read():
            return faiss.clone_index(faiss.extract_index_ivf(mi.index).quantizer)

    def ids_matching(self, *, modality: str | None = None, prefix: str | None = None,
                     glob: str | None = None) -> np.ndarray:
        """Sorted int64 ids of ok items. A `glob` without a path separator matches the file name ("*.jpg"),
        one with a separator matches the whole path ("/photos/*/2024-*"). Reads every item of the modality
        (a glob: every item): queries filter through xsearch.query.filters instead."""
        query = sa.select(T_items.c.id, T_items.c.path).where(T_items.c.status == OK).order_by(T_items.c.id)
        if modality is not None:
            query = query.where(T_items.c.modality == modality)
        if prefix:
            query = query.where(_has_prefix(prefix, self.engine.dialect.name))
        whole_path = glob is not None and ("/" in glob or os.sep in glob)
        if glob is not None:
            # LIKE is only a (case-insensitive) superset filter; fnmatchcase below is the exact test.
            like = _glob_to_like(glob)
            query = query.where(T_items.c.path.like(like if whole_path else "%" + like, escape="\\"))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        if glob is not None:
            rows = [r for r in rows if fnmatch.fnmatchcase(r.path if whole_path else os.path.basename(r.path), glob)]
        return np.array([r.id for r in rows], dtype=np.int64)

    def segments(self, ids: Sequence[int]) -> list[Segment]:
        """Stored windows in the order given; ids that no longer exist are skipped."""
        wanted = [int(i) for i in ids]
        found: dict[int, Segment] = {}
        cols = (T_segments.c.id, T_segments.c.item_id, T_segments.c.modality, T_segments.c.start, T_segments.c.end)
        with self._connect() as conn:
            for chunk in _chunks(sorted(set(wanted)), _IN_CHUNK):
                for r in conn.execute(sa.select(*cols).where(T_segments.c.id.in_(chunk))):
                    found[r.id] = Segment(r.id, r.item_id, r.modality, r.start, r.end)
        return [found[i] for i in wanted if i in found]

    def item_segments(self, item_id: int, *, vectors: bool = False) -> list[SegmentRecord] | list[Segment]:
        """An item's windows by start (with their stored vectors as SegmentRecords when `vectors`)."""
        cols = [T_segments.c.id, T_segments.c.modality, T_segments.c.start, T_segments.c.end, T_segments.c.data]
        query = (sa.select(*cols).where(T_segments.c.item_id == int(item_id))
                 .order_by(T_segments.c.modality, T_segments.c.start, T_segments.c.id))
        with self._connect() as conn:
            rows = conn.execute(query).all()
        if not vectors:
            return [Segment(r.id, int(item_id), r.modality, r.start, r.end) for r in rows]
        fmt = self._format or self._refresh_format()
        x = vec.decode([r.data for r in rows], fmt[1], fmt[0]) if fmt else np.zeros((0, 0), np.float32)
        return [SegmentRecord(r.modality, r.start, r.end, v) for r, v in zip(rows, x)]

    def segment_ids(self, modality: str, item_ids: np.ndarray) -> np.ndarray:
        """Sorted ids of the `modality` windows of these items (to restrict a segment search)."""
        out: list[int] = []
        with self._connect() as conn:
            for chunk in _chunks(np.asarray(item_ids, dtype=np.int64).tolist(), _IN_CHUNK):
                out += conn.execute(sa.select(T_segments.c.id).where(
                    T_segments.c.item_id.in_(chunk), T_segments.c.modality == modality)).scalars().all()
        return np.array(sorted(out), dtype=np.int64)

    def segment_counts(self) -> dict[str, int]:
        """Number of stored windows per segment modality, from the counters."""
        with self._connect() as conn:
            return {seg_modality(m): n for m, n in _counts(conn).items() if n > 0 and is_seg_key(m)}

    def counts(self) -> dict[str, int]:
        """Number of ok items per modality (modalities with none left out), from the per-modality counters."""
        with self._connect() as conn:
            return {m: n for m, n in _counts(conn).items() if n > 0 and not is_seg_key(m)}

    def search_targets(self, wanted: Sequence[str] | None = None) -> dict[str, int]:
        """{modality: vectors} for the modalities a query searches: those of `wanted` (None: every modality)
        that hold at least one vector. When each wanted modality's index is loaded, their sizes; otherwise
        the per-modality counters (one read of a few meta rows). Never counts items."""
        loaded = [self._indexes.get(m) for m in wanted] if wanted is not None else [None]
        if all(mi is not None for mi in loaded):  # (an index being swapped by refresh() reads as not loaded)
            sizes = {m: mi.ntotal for m, mi in zip(wanted, loaded)}
        else:
            if self._sqlite:
                counts = _parse_counts(self._sqlite_read(lambda run: run(_COUNTS_SQL, ())))
            else:
                with self._connect() as conn:
                    counts = _counts(conn)
            names = [m for m in counts if not is_seg_key(m)] if wanted is None else wanted
            sizes = {m: counts.get(m, 0) for m in names}
        return {m: n for m, n in sizes.items() if n > 0}

    def ids_with_prefix(self, prefix: str, *, limit: int | None = None,
                        with_paths: bool = False) -> tuple[np.ndarray, list[str]] | None:
        """Every item whose stored path starts with `prefix` ("" for all), of any modality and status, as
        (ids, paths) in path order (paths only `with_paths`, else []); None when more than `limit` match.

        On SQLite a range of the path index (path >= prefix AND path < its successor), which holds the ids
        too: the cost is the number of matching items, whatever the store's size."""
        if self._sqlite:
            lo, hi = (prefix, _successor(prefix)) if prefix else (None, None)
            ids, paths = self._sqlite_read(lambda run: sqlite.paths_in_range(
                run, lo, hi, limit=None if limit is None else limit + 1, with_paths=with_paths))
        else:
            with self._connect() as conn:
                query = sa.select(T_items.c.id, T_items.c.path).order_by(T_items.c.path)
                if prefix:
                    query = query.where(_has_prefix(prefix))
                if limit is not None:
                    query = query.limit(limit + 1)
                rows = conn.execute(query).all()
                ids, paths = [r[0] for r in rows], [r[1] for r in rows] if with_paths else []
        if limit is not None and len(ids) > limit:
            return None
        return np.array(ids, dtype=np.int64), paths

    def errors(self) -> list[Item]:
        return self.items(status=FAILED)

    def items_with_warnings(self) -> list[Item]:
        """Items whose decoders warned (``facts["warnings"]``), ordered by path."""
        query = sa.select(*_ITEM_COLUMNS).where(sa.func.json_extract(T_items.c.facts, "$.warnings").is_not(None))
        with self._connect() as conn:
            return [_item(r) for r in conn.execute(query.order_by(T_items.c.path))]

    # -- writing ---------------------------------------------------------------------------------------------
    def put(self, records: Sequence[ItemRecord]) -> list[int]:
        """Insert or replace items by path in one transaction; returns their ids in the order given.
        A record with `error` set becomes a failed item (any previous vector for the path is dropped)."""
        self._check_writable()
        records = list(records)
        if not records:
            return []
        latest = {r.path: r for r in records}  # the last record for a path wins
        batch = list(latest.values())
        for r in batch:
            _check_modality(r.modality)
            if r.vector is None and r.error is None:
                raise ValueError(f"{r.path}: an ItemRecord needs a vector or an error")
        good = [r for r in batch if r.error is None]
        x = _stack(good, self._where) if good else None
        segs = [(r.path, sg) for r in good for sg in (r.segments or ())]
        for _, sg in segs:
            _check_modality(sg.modality)
        sx = _stack([sg for _, sg in segs], self._where) if segs else None
        now = time.time()
        with self._mutex, _interrupt_deferred():
            with self._write() as conn:
                if x is not None and self._binding and _meta_get(conn, "dim") is None:
                    for key, value in self._binding.items():
                        _meta_set(conn, key, value)
                fmt = self._check_format(conn, x)
                old = _existing(conn, [r.path for r in batch])
                rows = [_row(r, now) for r in batch]
                updates = [{"b_id": old[row["path"]][0], **row} for row in rows if row["path"] in old]
                inserts = [row for row in rows if row["path"] not in old]
                if updates:
                    conn.execute(sa.update(T_items).where(T_items.c.id == sa.bindparam("b_id")), updates)
                id_of = {p: ident for p, (ident, _, _) in old.items()}
                if inserts:
                    stmt = sa.insert(T_items).returning(T_items.c.id, T_items.c.path)  # matched back by path
                    id_of.update({p: ident for ident, p in conn.execute(stmt, inserts)})
                old_ids = [ident for ident, _, _ in old.values()]
                for chunk in _chunks(old_ids, _IN_CHUNK):
                    conn.execute(sa.delete(T_vectors).where(T_vectors.c.item_id.in_(chunk)))
                    conn.execute(sa.delete(T_pending).where(T_pending.c.item_id.in_(chunk)))  # of the old content
                changes: dict[str, _Change] = {}
                # A changed file's old windows go with its old vector (they are recomputed or dropped).
                for key, ids in _delete_segments(conn, old_ids).items():
                    changes[key] = _Change(ids)
                for ident, modality, status in old.values():
                    if status == OK:
                        changes.setdefault(modality, _Change([])).removed.append(ident)
                if good:
                    new_ids = np.array([id_of[r.path] for r in good], dtype=np.int64)
                    raw = vec.encode_rows(x, fmt[1])
                    conn.execute(sa.insert(T_vectors), [{"item_id": int(i), "data": row.tobytes()}
                                                        for i, row in zip(new_ids, raw)])
                    stored = vec.stored(x, fmt[1])
                    mods = np.array([r.modality for r in good])
                    for modality in np.unique(mods):
                        sel = mods == modality
                        removals = changes.get(str(modality), _Change([])).removed
                        changes[str(modality)] = _Change(removals, new_ids[sel].tolist(), stored[sel], raw[sel])
                if segs:
                    self._insert_segments(conn, fmt, [id_of[p] for p, _ in segs], [sg for _, sg in segs], sx, changes)
                gens = _bump_gens(conn, {m: len(c.added or ()) - len(c.removed) for m, c in changes.items()})
            if good:
                self._format = fmt  # committed: the first vectors have fixed the store's format
            self._apply(changes, gens)
        return [id_of[r.path] for r in records]

    def _insert_segments(self, conn: sa.Connection, fmt: tuple[int, str], item_ids: list[int],
                         segs: list[SegmentRecord], sx: np.ndarray, changes: dict[str, _Change]) -> None:
        if sx.shape[1] != fmt[0]:
            raise StoreError(f"{self._where}: segment vectors have {sx.shape[1]} dimensions but this store holds "
                             f"{fmt[0]}-dimensional vectors; every vector in a store must come from the same model")
        raw = vec.encode_rows(sx, fmt[1])
        rows = [{"item_id": int(i), "modality": sg.modality, "start": float(sg.start), "end": float(sg.end),
                 "data": r.tobytes()} for i, sg, r in zip(item_ids, segs, raw)]
        stmt = sa.insert(T_segments).returning(T_segments.c.id, sort_by_parameter_order=True)
        new_ids = np.array([r[0] for r in conn.execute(stmt, rows)], dtype=np.int64)
        stored = vec.stored(sx, fmt[1])
        mods = np.array([sg.modality for sg in segs])
        for modality in np.unique(mods):
            sel, key = mods == modality, seg_key(str(modality))
            removals = changes.get(key, _Change([])).removed
            changes[key] = _Change(removals, new_ids[sel].tolist(), stored[sel], raw[sel])

    def add_vectors(self, vectors: np.ndarray, *, modality: str, paths: Sequence[str],
                    model: str | None = None) -> list[int]:
        """Bring-your-own embeddings: one ok item per path (size/mtime 0: no file facts are known)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(paths):
            raise ValueError(f"add_vectors needs an (n, d) array and n paths, got {x.shape} and {len(paths)} paths")
        names = [str(p) for p in paths]
        with self._connect() as conn:
            for chunk in _chunks(names, _IN_CHUNK):
                clash = conn.execute(sa.select(T_items.c.path, T_items.c.root).where(
                    T_items.c.path.in_(chunk), T_items.c.root.is_not(None)).limit(1)).first()
                if clash is not None:
                    raise UsageError(f"add_vectors: {clash.path} is a file indexed from {clash.root}; its vector "
                                     "comes from the file. Remove it from the store first, or use another name")
        return self.put([ItemRecord(path=p, modality=modality, size=0, mtime_ns=0, model=model, vector=v)
                         for p, v in zip(names, x)])

    def move(self, item_id: int, new_path: str, *, size: int, mtime_ns: int, root: str | None) -> None:
        """A renamed file keeps its id and vector. An item already at `new_path` (overwritten) is removed."""
        self._check_writable()
        with self._mutex, _interrupt_deferred():
            with self._write() as conn:
                row = conn.execute(sa.select(T_items.c.id).where(T_items.c.id == item_id)).first()
                if row is None:
                    raise StoreError(f"{self._where}: no item with id {item_id} to move to {new_path}; "
                                     "it was removed meanwhile, index the file again")
                other = conn.execute(sa.select(T_items.c.id).where(T_items.c.path == new_path,
                                                                   T_items.c.id != item_id)).scalars().all()
                gone, _ = _delete_items(conn, other)
                conn.execute(sa.update(T_items).where(T_items.c.id == item_id)
                             .values(path=new_path, size=size, mtime_ns=mtime_ns, root=root))
                gens = _bump_gens(conn, _removed(gone))
            self._apply({m: _Change(ids) for m, ids in gone.items()}, gens)

    def set_root(self, ids: Sequence[int], root: str) -> None:
        """Record that these items now belong to the indexed folder ``root`` (vectors untouched)."""
        self._check_writable()
        with self._write() as conn:
            for chunk in _chunks([int(i) for i in ids], _IN_CHUNK):
                conn.execute(sa.update(T_items).where(T_items.c.id.in_(chunk)).values(root=root))

    def remove(self, ids: Sequence[int]) -> int:
        """Remove items (and their vectors, from the database and the index); returns how many existed."""
        self._check_writable()
        with self._mutex, _interrupt_deferred():
            with self._write() as conn:
                gone, count = _delete_items(conn, [int(i) for i in ids])
                gens = _bump_gens(conn, _removed(gone))
            self._apply({m: _Change(ids) for m, ids in gone.items()}, gens)
        return count

    # -- re-embedding: every item's vector from another model, switched to in one transaction ---------------
    def reembed_target(self) -> dict[str, str] | None:
        """{"model", "model_name"} of a re-embedding under way (started, not yet switched to), else None."""
        with self._connect() as conn:
            model = _meta_get(conn, "reembed:model")
            return None if model is None else {"model": model, "model_name": _meta_get(conn, "reembed:model_name") or ""}

    def start_reembed(self, model: str, model_name: str) -> bool:
        """Begin re-embedding into ``model``, or continue one into the same model (returns True then). A
        re-embedding into another model is dropped: its vectors are of no use to this one."""
        with self._write() as conn:
            if _meta_get(conn, "reembed:model") == model:
                return True
            conn.execute(sa.delete(T_pending))
            conn.execute(sa.delete(T_meta).where(T_meta.c.key.in_(_REEMBED_META)))
            _meta_set(conn, "reembed:model", model)
            _meta_set(conn, "reembed:model_name", model_name)
        return False

    def reembed_todo(self) -> list[Item]:
        """The ok items the re-embedding under way has no new vector (or error) for yet, in id order."""
        query = (sa.select(*_ITEM_COLUMNS).outerjoin(T_pending, T_pending.c.item_id == T_items.c.id)
                 .where(T_items.c.status == OK, T_pending.c.item_id.is_(None)).order_by(T_items.c.id))
        with self._connect() as conn:
            return [_item(r) for r in conn.execute(query)]

    def reembed_done(self) -> int:
        """How many ok items the re-embedding under way has done."""
        query = (sa.select(sa.func.count()).select_from(T_pending)
                 .join(T_items, T_items.c.id == T_pending.c.item_id).where(T_items.c.status == OK))
        with self._connect() as conn:
            return int(conn.execute(query).scalar_one())

    def put_pending(self, ids: Sequence[int], vectors: np.ndarray | None, errors: Sequence[str | None]) -> None:
        """Record, in one transaction, the new model's vector of each item (row i of ``vectors``), or the
        reason it has none (``errors[i]`` set: it becomes a failed item at the switch). Searches still
        use the current vectors."""
        ids = [int(i) for i in ids]
        ok = [k for k, e in enumerate(errors) if e is None]
        x = vec.as_matrix(np.asarray(vectors)[ok]) if ok else None
        with self._mutex, _interrupt_deferred():
            with self._write() as conn:
                if _meta_get(conn, "reembed:model") is None:
                    raise StoreError(f"{self._where}: no re-embedding under way; start one first")
                raw: dict[int, bytes] = {}
                if x is not None:
                    dim, dtype = _meta_get(conn, "reembed:dim"), _meta_get(conn, "reembed:vector_dtype")
                    if dim is None or dtype is None:  # the new model's first vectors fix its format
                        dim, dtype = str(x.shape[1]), vec.choose_dtype(x)
                        _meta_set(conn, "reembed:dim", dim)
                        _meta_set(conn, "reembed:vector_dtype", dtype)
                    if int(dim) != x.shape[1]:
                        raise StoreError(f"{self._where}: the new model's vectors have {x.shape[1]} dimensions, "
                                         f"earlier ones {dim}; start the re-embedding again")
                    raw = {ids[k]: row.tobytes() for k, row in zip(ok, vec.encode_rows(x, dtype))}
                for chunk in _chunks(ids, _IN_CHUNK):
                    conn.execute(sa.delete(T_pending).where(T_pending.c.item_id.in_(chunk)))
                conn.execute(sa.insert(T_pending), [{"item_id": i, "data": raw.get(i), "error": errors[k]}
                                                    for k, i in enumerate(ids)])

    def switch_reembed(self) -> dict[str, int]:
        """Make the re-embedding's vectors the store's, in one transaction, once every ok item has one (or an
        error: it becomes a failed item), then rebuild the indexes. Returns {"switched", "failed"} counts."""
        with self._mutex:
            with _interrupt_deferred(), self._write() as conn:
                target = {k: _meta_get(conn, k) for k in _REEMBED_META}
                if target["reembed:model"] is None:
                    raise StoreError(f"{self._where}: no re-embedding under way to switch to")
                left = conn.execute(sa.select(sa.func.count()).select_from(T_items)
                                    .outerjoin(T_pending, T_pending.c.item_id == T_items.c.id)
                                    .where(T_items.c.status == OK, T_pending.c.item_id.is_(None))).scalar_one()
                if left:
                    raise StoreError(f"{self._where}: {left} items are not re-embedded yet; run the re-embedding again")
                mods = set(self._modalities(conn))
                failed = conn.execute(sa.select(T_pending.c.item_id, T_pending.c.error)
                                      .where(T_pending.c.data.is_(None))).all()
                for item_id, error in failed:
                    conn.execute(sa.update(T_items).where(T_items.c.id == item_id)
                                 .values(status=FAILED, error=error, model=None))
                conn.execute(sa.delete(T_vectors))
                conn.exec_driver_sql("INSERT INTO vectors (item_id, data) SELECT p.item_id, p.data FROM pending_vectors p "
                                     "JOIN items i ON i.id = p.item_id WHERE p.data IS NOT NULL AND i.status = 'ok'")
                switched = conn.execute(sa.update(T_items).where(T_items.c.status == OK)
                                        .values(model=target["reembed:model"])).rowcount
                conn.execute(sa.delete(T_pending))
                # What was computed from the old model's vectors goes with them: moments (the next index run
                # embeds the windows again: facts["moments"] is how it knows they are missing) and tags (the
                # label sets keep their labels; `xsearch tag` computes their vectors with the new model).
                conn.execute(sa.delete(T_segments))
                conn.execute(sa.update(T_items).where(sa.func.json_extract(T_items.c.facts, "$.moments").is_not(None))
                             .values(facts=sa.func.json_remove(T_items.c.facts, "$.moments")))
                for table in (T_tags, T_tagged, T_label_vectors):
                    conn.execute(sa.delete(table))
                _meta_set(conn, "model", target["reembed:model"])
                _meta_set(conn, "model_name", target["reembed:model_name"] or target["reembed:model"])
                if target["reembed:dim"] is not None:
                    _meta_set(conn, "dim", target["reembed:dim"])
                    _meta_set(conn, "vector_dtype", target["reembed:vector_dtype"])
                conn.execute(sa.delete(T_meta).where(T_meta.c.key.in_(_REEMBED_META)))
                _recount(conn)  # items that could not be re-embedded are failed ones now
                _bump_gens(conn, dict.fromkeys(mods | self._index_files(), 0))  # every index file is now stale
                fmt = self._read_format(conn)
            self._format = fmt  # committed: the new model's vectors are the store's
            self._indexes.clear()
            self.rebuild_indexes()
        return {"switched": int(switched), "failed": len(failed)}

    def flush(self) -> None:
        """Persist changed indexes (each file written to a temp name, fsynced, then renamed into place)."""
        self._check_writable()
        with self._mutex:
            if self.file_state() == "replaced":
                # Another store now lives at this path: our indexes describe the old database, never its.
                log.warning("%s: the database was replaced since this process opened it; its indexes are not saved",
                            self._where)
                return
            if any(mi.dirty for mi in self._indexes.values()):
                self._check_index_dir()
            for tmp in abandoned_temp_files(self.index_dir):
                tmp.unlink(missing_ok=True)
            for modality, mi in list(self._indexes.items()):
                if mi.dirty:
                    try:
                        mi.save(self.index_dir)
                    except PathInTheWay as exc:
                        raise StoreError(str(exc)) from exc
                    except OSError as exc:
                        raise StoreError(f"{self.index_dir / modality}.faiss: cannot write the index "
                                         f"({exc.strerror}); check free disk space and permissions") from exc

    def _db_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the SQLite database file; None for other databases, or when it is gone."""
        if self.engine.dialect.name != "sqlite":
            return None
        try:
            st = os.stat(db.db_path(self.directory))
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def file_state(self) -> str:
        """"same", or what happened to the SQLite file this Storage opened: "replaced" (another store was
        created at the path) or "gone". Always "same" for a database given by URL (not checkable)."""
        if self._identity is None:
            return "same"
        now = self._db_identity()
        return "same" if now == self._identity else "gone" if now is None else "replaced"

    # -- search ----------------------------------------------------------------------------------------------
    def search(self, modality: str, queries: np.ndarray, k: int, *,
               ids: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Per query, up to k (item_id, cosine) best first; `ids` restricts the search to those items."""
        q = vec.as_matrix(queries, what="queries")
        mi = self._index(modality)
        if mi is None:
            return [[] for _ in range(len(q))]
        if q.shape[1] != mi.dim:
            raise UsageError(f"queries have {q.shape[1]} dimensions but the {modality} index holds {mi.dim}")
        restrict = None if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        fmt = self._format
        assert fmt is not None  # an index exists, so vectors (and their format) do

        def fetch(wanted: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
            # Candidates come from this modality's index; caller-given ids may be anything.
            with self._connect() as conn:
                return _fetch(conn, wanted, fmt, modality=modality if check_modality else None,
                              segments=is_seg_key(modality))

        return mi.search(q, int(k), fetch, ids=restrict, policy=self.policy)

    def refresh(self) -> None:
        """Pick up writes other processes made since the indexes were loaded (reloads or rebuilds them)."""
        with self._mutex:
            self._refresh_format()
            with self._connect() as conn:
                gens = {m: _gen(conn, m) for m in self._indexes}
            for modality, gen in gens.items():
                if self._indexes[modality].gen != gen:
                    del self._indexes[modality]
                    self._index(modality)

    def load_indexes(self) -> None:
        """Load every modality's index now (each is otherwise loaded on first use); a missing, unreadable
        or stale file is rebuilt from the database either way."""
        for modality in self._index_keys():
            self._index(modality)

    def index_info(self) -> dict[str, dict]:
        out = {}
        for modality in self._index_keys():
            mi = self._index(modality)
            if mi is None:
                continue
            out[modality] = {
                "type": mi.kind, "factory": mi.factory, "ntotal": mi.ntotal, "nprobe": mi.nprobe,
                "trained_on": mi.trained_on, "bytes": int(mi.serialize().nbytes), "nlist": mi.nlist, "m": mi.m,
                "rerank": mi.rerank, "tuned_recall": mi.tuned_recall, "dim": mi.dim, "flushed": not mi.dirty,
                # bytes of the memory-mapped copy of the vectors that re-ranking reads (None: reads the database)
                "rerank_cache_bytes": None if mi.cache is None else mi.cache.nrows * mi.cache.rowbytes,
            }
        return out

    def stale_index_files(self) -> list[str]:
        """Modalities whose index file does not reflect the database: missing, or saved at another database
        write (a run killed before its final save leaves them so). Reads only the sidecars, not the indexes."""
        with self._connect() as conn:
            mods = set(self._index_keys(conn))
            # A modality whose last item left keeps its counter (and an empty index file) until a rebuild.
            gens = {m: _gen(conn, m) for m in mods | self._index_files()}
        stale = []
        for m in sorted(gens):
            try:
                info = json.loads((self.index_dir / f"{m}.json").read_text())
                size = (self.index_dir / f"{m}.faiss").stat().st_size
            except (OSError, ValueError):
                stale.append(m)
                continue
            if not isinstance(info, dict) or info.get("file_bytes") != size or info.get("db_gen") != gens[m] \
                    or (m not in mods and info.get("ntotal")):
                stale.append(m)
        return stale

    def rebuild_indexes(self, modality: str | None = None) -> None:
        """Rebuild indexes from the stored vectors (and persist them unless read-only)."""
        self._check_open()
        with self._mutex:
            if not self.read_only:
                with self._write() as conn:  # the counters are derived too: set them from the items
                    _recount(conn)
            targets = [modality] if modality else sorted(set(self._index_keys()) | self._index_files())
            if not self.read_only:
                self._check_index_dir()  # before a build that may take minutes
            for m in targets:
                mi = self._build(m)
                if mi is None:
                    self._indexes.pop(m, None)
                    if not self.read_only:
                        try:
                            remove_files(self.index_dir, m)
                        except PathInTheWay as exc:
                            raise StoreError(str(exc)) from exc
                else:
                    self._indexes[m] = mi
            if not self.read_only:
                self.flush()

    def _check_index_dir(self) -> None:
        try:
            check_index_dir(self.index_dir)
        except PathInTheWay as exc:
            raise StoreError(str(exc)) from exc

    def check(self) -> list[str]:
        """Problems found: database integrity, vectors vs items, index files vs the database."""
        problems: list[str] = []
        try:
            with self._connect() as conn:
                problems += db.integrity_problems(conn)
                orphans = conn.execute(sa.text(
                    "SELECT count(*) FROM vectors v LEFT JOIN items i ON i.id = v.item_id "
                    "WHERE i.id IS NULL OR i.status != :ok"), {"ok": OK}).scalar_one()
                if orphans:
                    problems.append(f"{self._where}: {orphans} stored vectors belong to no ok item")
                bare = conn.execute(sa.text(
                    "SELECT count(*) FROM items i LEFT JOIN vectors v ON v.item_id = i.id "
                    "WHERE i.status = :ok AND v.item_id IS NULL"), {"ok": OK}).scalar_one()
                if bare:
                    problems.append(f"{self._where}: {bare} ok items have no stored vector; re-index them")
                real, kept = _real_counts(conn), _counts(conn)
                for m in sorted(set(real) | set(kept)):
                    if real.get(m, 0) != kept.get(m, 0):
                        what = "windows" if is_seg_key(m) else "ok items"
                        problems.append(f"{self._where}: the {m} counter says {kept.get(m, 0)}, the database "
                                        f"holds {real.get(m, 0)} {what}; `xsearch doctor --repair` recounts")
                mods = [m for m, n in real.items() if n > 0]
                db_ids = {m: _modality_ids(conn, m) for m in mods}
                gens = {m: _gen(conn, m) for m in set(mods) | self._index_files()}
        except StoreError as exc:
            return problems + [str(exc)]
        fix = "rebuild it from the database with `xsearch doctor --repair`"
        problems += [f"{p}: left by an index save that was killed; `xsearch doctor --repair` or the next "
                     "`xsearch index` deletes it" for p in abandoned_temp_files(self.index_dir)]
        try:
            check_index_dir(self.index_dir)
        except PathInTheWay as exc:
            return problems + [str(exc)]  # every index file would read as missing: say why, once
        for m in sorted(set(mods) | self._index_files()):
            want = db_ids.get(m, np.zeros(0, np.int64))
            mem = self._indexes.get(m)
            if mem is not None and mem.dirty and mem.gen == gens.get(m, 0) and not self.read_only:
                # Unflushed but current: the in-memory index is what counts, not the older file (a read-only
                # store never writes its rebuilt indexes: there the file is what counts).
                where, have, gen = f"{m} index (in memory)", mem.ids(), mem.gen
            else:
                where = str(self.index_dir / f"{m}.faiss")
                try:
                    fi = ModalityIndex.load(self.index_dir, m)
                except IndexFileError as exc:
                    problems.append(f"{exc}; {fix}")
                    continue
                have, gen = fi.ids(), fi.gen
                if self._format and fi.dim != self._format[0]:
                    problems.append(f"{where}: holds {fi.dim}-d vectors, the store {self._format[0]}-d; {fix}")
                    continue
                planned = ivf_kind(fi.dim, self.policy)
                if fi.kind != "flat" and fi.kind != planned:  # saved by a version that chose otherwise
                    better = "IVF-Flat (exact scores)" if planned == "ivfflat" else "IVF-PQ"
                    problems.append(f"{where}: built as {fi.factory}, but {fi.dim}-d vectors now get {better}; {fix}")
                problems += [f"{p}; {fix}" for p in self._cache_problems(fi, have)]
            if not np.array_equal(have, want):
                missing = len(np.setdiff1d(want, have, assume_unique=True))
                extra = len(np.setdiff1d(have, want, assume_unique=True))
                problems.append(f"{where}: holds {len(have)} vectors, the database {len(want)} for {m} "
                                f"({missing} missing, {extra} not in the database); {fix}")
            elif gen != gens.get(m, 0):
                problems.append(f"{where}: reflects database write {gen}, the database is at {gens.get(m, 0)} "
                                f"(stale vectors); {fix}")
        return problems

    def damaged_vectors(self) -> list[Item]:
        """Ok items whose stored vector, or the vector of one of their moments (windows), is not a finite
        unit vector of the store's dimension: bytes damaged inside the database, which SQLite's integrity
        check does not see (it checks pages, not values). Every row is read, streamed in chunks: memory
        stays bounded."""
        fmt = self._format or self._refresh_format()
        if fmt is None:
            return []
        bad: set[int] = set()
        for table in (T_vectors, T_segments):
            bad.update(self._damaged_rows(table, fmt))
        return self.get_items(sorted(bad))

    def _damaged_rows(self, table: sa.Table, fmt: tuple[int, str]) -> list[int]:
        """The item ids of ``table``'s rows (vectors or segments) whose data is not a finite unit vector."""
        rowbytes = fmt[0] * vec.DTYPES[fmt[1]].itemsize
        query = (sa.select(table.c.item_id, table.c.data).order_by(table.c.item_id)
                 .execution_options(yield_per=_CHECK_ROWS))
        bad: list[int] = []
        with self._connect() as conn:
            for part in conn.execute(query).partitions(_CHECK_ROWS):
                whole = [r for r in part if r[1] is not None and len(r[1]) == rowbytes]
                bad += [r[0] for r in part if r[1] is None or len(r[1]) != rowbytes]
                for lo in range(0, len(whole), _DECODE_ROWS):
                    rows = whole[lo: lo + _DECODE_ROWS]
                    raw = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8)
                    with np.errstate(over="ignore", invalid="ignore"):  # garbage may square past float32
                        x = vec.decode_rows(raw, len(rows), fmt[1], fmt[0], damaged_as_nan=True)
                    bad += [rows[i][0] for i in np.flatnonzero(np.isnan(x[:, 0]))]
        return bad

    def _cache_problems(self, mi: ModalityIndex, index_ids: np.ndarray) -> list[str]:
        """The re-rank cache must hold exactly the index's ids, each row with the database's bytes. Every
        row is compared (one flipped byte changes results), streamed in chunks: memory stays bounded."""
        if mi.cache_problem:
            return [mi.cache_problem]
        cache = mi.cache
        if cache is None:
            if mi.kind == "ivfpq" and self.policy.rerank_cache:
                return [f"the {mi.modality} index has no re-rank cache, so re-ranking reads the database (slower)"]
            return []
        if not np.array_equal(cache.ids, index_ids):
            return [f"{cache.data_path}: re-rank cache holds other ids than the {mi.modality} index"]
        query = _vector_rows(mi.modality).execution_options(yield_per=_CHECK_ROWS)
        differ = 0
        with self._connect() as conn:
            for part in conn.execute(query).partitions(_CHECK_ROWS):
                ids = np.fromiter((r[0] for r in part), dtype=np.int64, count=len(part))
                differ += cache.differing(ids, [r[1] for r in part])
        if differ:
            return [f"{cache.data_path}: {differ} of {len(cache)} vectors differ from the database "
                    "(the re-rank cache is damaged and gives wrong scores)"]
        return []

    # -- internals: indexes ----------------------------------------------------------------------------------
    def _index(self, modality: str) -> ModalityIndex | None:
        """The loaded index for a modality: from its file when that matches the database, else rebuilt."""
        mi = self._indexes.get(modality)
        if mi is not None:
            return mi
        with self._mutex:
            mi = self._indexes.get(modality)
            if mi is not None:
                return mi
            with self._connect() as conn:
                gen, count = _gen(conn, modality), _count(conn, modality)
            if count == 0 and not (self.index_dir / f"{modality}.faiss").exists():
                return None
            self._refresh_format()
            mi = self._load_file(modality)
            if mi is None or mi.gen != gen or mi.ntotal != count or mi.needs_rebuild(self.policy):
                if mi is not None:
                    log.info("%s index is stale (write %s vs %s): rebuilding from the database", modality, mi.gen, gen)
                if self.read_only and count > self.policy.flat_max and not is_locked(self.directory):
                    # Nobody will save this rebuild: every query process pays the training again until a writer does.
                    log.warning("%s: the %s index file does not match the database and no index run is writing "
                                "(one was interrupted); each query trains it again (slow at %d vectors) until "
                                "`xsearch index` or `xsearch doctor --repair` saves it",
                                self.index_dir, modality, count)
                mi = self._build(modality)
            if mi is not None:
                self._indexes[modality] = mi
            return mi

    def _load_file(self, modality: str) -> ModalityIndex | None:
        try:
            mi = ModalityIndex.load(self.index_dir, modality)
        except IndexFileError as exc:
            if (self.index_dir / f"{modality}.faiss").exists():
                log.warning("%s; rebuilding it from the database", exc)
            return None
        if self._format is None or mi.dim != self._format[0]:
            return None
        mi.use_gpu = self.policy.use_gpu
        return mi

    def _build(self, modality: str) -> ModalityIndex | None:
        """A new index from one consistent database snapshot; None when the store holds no vectors yet."""
        with self._connect() as conn:
            fmt = self._read_format(conn)
            if fmt is None:
                return None
            writable = not self.read_only and self._writable_dir()
            cache_dir = self.index_dir if writable and self.policy.rerank_cache else None
            mi = build(modality, _DbSource(conn, modality, fmt), _gen(conn, modality), self.policy, cache_dir)
        mi.use_gpu = self.policy.use_gpu
        return mi

    def _apply(self, changes: dict[str, _Change],
               gens: dict[str, tuple[int, int]]) -> None:
        """Bring each touched index up to the transaction just committed (caller holds _mutex)."""
        if changes and self._format is None:
            self._refresh_format()
        for modality, (removals, add_ids, add_x, add_raw) in changes.items():
            before, after = gens[modality]
            mi = self._indexes.get(modality)
            if mi is None:
                mi = self._load_file(modality)
            if mi is None or mi.gen != before:  # not built yet, or another process wrote meanwhile
                self._swap(modality, self._build(modality))
                continue
            mi.remove(np.asarray(removals, dtype=np.int64))
            if add_ids:
                mi.add(np.asarray(add_ids, dtype=np.int64), add_x, add_raw)
            mi.gen = after
            mi.dirty = True
            self._indexes[modality] = mi
            if mi.needs_rebuild(self.policy):  # crossed the flat/IVF line or outgrew its training
                self._swap(modality, self._build(modality))

    def _swap(self, modality: str, mi: ModalityIndex | None) -> None:
        if mi is None:
            self._indexes.pop(modality, None)
        else:
            self._indexes[modality] = mi  # atomic: searches already running finish on the old object

    def _modalities(self, conn: sa.Connection | None = None) -> list[str]:
        """Modalities with at least one ok item (by the counters)."""
        if conn is None:
            return list(self.counts())
        return [m for m, n in _counts(conn).items() if n > 0 and not is_seg_key(m)]

    def _index_keys(self, conn: sa.Connection | None = None) -> list[str]:
        """Modalities with at least one ok item, then "<modality>#seg" for each with stored windows (by the
        counters)."""
        if conn is None:
            with self._connect() as c:
                return self._index_keys(c)
        counts = _counts(conn)
        return self._modalities(conn) + [m for m, n in counts.items() if n > 0 and is_seg_key(m)]

    def _index_files(self) -> set[str]:
        if not self.index_dir.is_dir():
            return set()
        return {p.stem for p in self.index_dir.iterdir()
                if p.suffix in (".faiss", ".json") and _INDEX_KEY_RE.match(p.stem)}

    # -- internals: database ---------------------------------------------------------------------------------
    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """A pooled connection inside one transaction, database errors turned into StoreError."""
        self._check_open()
        try:
            with self.engine.connect() as conn:
                if write:
                    db.write_options(conn)
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        self._check_writable()
        with self._mutex, self._connect(write=True) as conn:
            yield conn

    def _sqlite_read(self, fn: Callable[[sqlite.Run], _T]) -> _T:
        """``fn(run)`` on a pooled SQLite connection, straight through the driver: each statement ``run``
        executes is its own read transaction (one snapshot), without SQLAlchemy's BEGIN, COMMIT and result
        objects. For the query path's single-statement reads (a query's hits: ~0.2 ms instead of ~0.6)."""
        self._check_open()
        raw = self.engine.raw_connection()
        try:
            execute = raw.driver_connection.execute
            return fn(lambda sql, params: execute(sql, tuple(params)).fetchall())
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        finally:
            raw.close()

    def _db_error(self, exc: sa.exc.DBAPIError | sqlite3.Error) -> StoreError:
        msg = str(getattr(exc, "orig", None) or exc)
        low = msg.lower()
        if "locked" in low or "busy" in low:
            return StoreError(f"{self._where}: the database is locked by another xsearch process; "
                              "try again when it has finished")
        if "readonly" in low or "read-only" in low or ("unable to open" in low and not self._writable_dir()):
            return StoreError(f"{self._where}: the database cannot be written ({msg}): the store is on a read-only "
                              "file system or not writable by you; make it writable (or use another --store) "
                              "and run the command again")
        if "disk is full" in low or "disk i/o error" in low:
            return StoreError(f"{self._where}: cannot write the database ({msg}): the disk is probably full (or "
                              "the store's files cannot grow); free some space, then run `xsearch index` again; "
                              "every batch committed so far is kept")
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StoreError(f"{self._where}: the database file is damaged ({msg}); restore it from a backup "
                              "or move it aside and index again")
        return StoreError(f"{self._where}: database error: {msg}")

    def _writable_dir(self) -> bool:
        return self.engine.dialect.name != "sqlite" or os.access(self.directory, os.W_OK)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._where}: this store was closed; open it again to use it")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise StoreError(f"{self._where}: store was opened read-only; open it without read_only to change it")

    def _read_format(self, conn: sa.Connection) -> tuple[int, str] | None:
        dim, dtype = _meta_get(conn, "dim"), _meta_get(conn, "vector_dtype")
        return (int(dim), dtype) if dim and dtype else None

    def _refresh_format(self) -> tuple[int, str] | None:
        if self._format is None:
            with self._connect() as conn:
                self._format = self._read_format(conn)
        return self._format

    def _check_format(self, conn: sa.Connection, x: np.ndarray | None) -> tuple[int, str]:
        """The store's (dim, dtype); the first vectors fix them. A different dimension means another model."""
        fmt = self._read_format(conn)
        if x is None:
            return fmt or (0, "float16")
        if fmt is None:
            fmt = (int(x.shape[1]), vec.choose_dtype(x))
            _meta_set(conn, "dim", str(fmt[0]))
            _meta_set(conn, "vector_dtype", fmt[1])
        elif x.shape[1] != fmt[0]:
            model = _meta_get(conn, "model")
            raise StoreError(
                f"{self._where}: vectors have {x.shape[1]} dimensions but this store holds {fmt[0]}-dimensional "
                f"vectors{f' (model {model})' if model else ''}; use the same model, or a new store directory")
        return fmt


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends. A commit and the index update that follows it
    must both happen: interrupted between them, the saved index would miss a committed batch."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives KeyboardInterrupt
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # signals unavailable here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            else:
                raise KeyboardInterrupt


class _Change(NamedTuple):
    """What one committed write did to a modality's vectors, for its index to follow."""

    removed: list[int]
    added: list[int] | None = None
    x: np.ndarray | None = None  # the added vectors as the store reads them back (float32, unit)
    raw: np.ndarray | None = None  # their stored bytes (the re-rank cache keeps these)


class _DbSource:
    """One modality's stored vectors, read inside the caller's transaction (a consistent snapshot)."""

    def __init__(self, conn: sa.Connection, modality: str, fmt: tuple[int, str]):
        self.conn, self.modality, self.fmt, self.dim, self.dtype = conn, modality, fmt, fmt[0], fmt[1]
        self._ids: np.ndarray | None = None

    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = _modality_ids(self.conn, self.modality)
        return self._ids

    def fetch(self, ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return _fetch(self.conn, ids, self.fmt, modality=self.modality if check_modality else None,
                      segments=is_seg_key(self.modality))

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, float32 unit vectors, stored bytes as (n, row bytes) uint8) in id order."""
        result = self.conn.execution_options(yield_per=size).execute(_vector_rows(self.modality))
        for part in result.partitions(size):
            raw = np.frombuffer(b"".join(r[1] for r in part), dtype=np.uint8)
            yield (np.fromiter((r[0] for r in part), dtype=np.int64, count=len(part)),
                   vec.decode_rows(raw, len(part), self.dtype, self.dim), raw.reshape(len(part), -1))


def _fetch(conn: sa.Connection, ids: np.ndarray, fmt: tuple[int, str], *,
           modality: str | None, segments: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(found ids, float32 vectors) for the ids that have a stored vector (of `modality`), in database order.
    Only primary-key lookups: joining items to filter by modality lets SQLite pick the modality index
    and scan the whole modality (40 us a row instead of 3 measured). `segments`: ids are windows."""
    wanted = np.asarray(ids, dtype=np.int64).tolist()
    if segments:
        rows = []
        for chunk in _chunks(wanted, _IN_CHUNK):
            query = sa.select(T_segments.c.id, T_segments.c.data).where(T_segments.c.id.in_(chunk))
            if modality is not None:
                query = query.where(T_segments.c.modality == seg_modality(modality))
            rows += conn.execute(query).all()
        found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return found, vec.decode([r[1] for r in rows], fmt[1], fmt[0])
    if modality is not None:
        keep: list[int] = []
        for chunk in _chunks(wanted, _IN_CHUNK):
            query = sa.select(T_items.c.id, T_items.c.modality).where(T_items.c.id.in_(chunk))
            keep += [i for i, m in conn.execute(query).all() if m == modality]
        wanted = keep
    if conn.dialect.name == "sqlite":
        rows = sqlite.vectors_by_ids(sqlite.sa_run(conn), wanted) if wanted else []
    else:
        rows = []
        for chunk in _chunks(wanted, _IN_CHUNK):
            query = sa.select(T_vectors.c.item_id, T_vectors.c.data).where(T_vectors.c.item_id.in_(chunk))
            rows += conn.execute(query).all()
    return _decode(rows, fmt)


def _decode(rows: Sequence[Sequence], fmt: tuple[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of (item_id, data) rows."""
    found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return found, vec.decode([r[1] for r in rows], fmt[1], fmt[0])


def seg_key(modality: str) -> str:
    """The index of a modality's windows (moments)."""
    return modality + SEG_SUFFIX


def is_seg_key(key: str) -> bool:
    return key.endswith(SEG_SUFFIX)


def seg_modality(key: str) -> str:
    return key[: -len(SEG_SUFFIX)]


def _vector_rows(key: str) -> sa.Select:
    """(id, stored bytes) of one index's vectors (an item modality or "<modality>#seg"), by id."""
    if is_seg_key(key):
        return (sa.select(T_segments.c.id, T_segments.c.data)
                .where(T_segments.c.modality == seg_modality(key)).order_by(T_segments.c.id))
    return (sa.select(T_vectors.c.item_id, T_vectors.c.data).join(T_items, T_items.c.id == T_vectors.c.item_id)
            .where(T_items.c.modality == key).order_by(T_vectors.c.item_id))


def _modality_ids(conn: sa.Connection, modality: str) -> np.ndarray:
    if is_seg_key(modality):
        query = (sa.select(T_segments.c.id).where(T_segments.c.modality == seg_modality(modality))
                 .order_by(T_segments.c.id))
    else:
        query = (sa.select(T_vectors.c.item_id).join(T_items, T_items.c.id == T_vectors.c.item_id)
                 .where(T_items.c.modality == modality).order_by(T_vectors.c.item_id))
    return np.array(conn.execute(query).scalars().all(), dtype=np.int64)


def _delete_segments(conn: sa.Connection, item_ids: Sequence[int]) -> dict[str, list[int]]:
    """Delete these items' windows; returns the deleted window ids by segment index key."""
    gone: dict[str, list[int]] = {}
    for chunk in _chunks(sorted(set(item_ids)), _IN_CHUNK):
        rows = conn.execute(sa.select(T_segments.c.id, T_segments.c.modality)
                            .where(T_segments.c.item_id.in_(chunk))).all()
        for ident, modality in rows:
            gone.setdefault(seg_key(modality), []).append(ident)
        if rows:
            conn.execute(sa.delete(T_segments).where(T_segments.c.item_id.in_(chunk)))
    return gone


def _existing(conn: sa.Connection, paths: list[str]) -> dict[str, tuple[int, str, str]]:
    out = {}
    for chunk in _chunks(paths, _IN_CHUNK):
        query = sa.select(T_items.c.path, T_items.c.id, T_items.c.modality, T_items.c.status)
        for path, ident, modality, status in conn.execute(query.where(T_items.c.path.in_(chunk))):
            out[path] = (ident, modality, status)
    return out


def _delete_items(conn: sa.Connection, ids: Sequence[int]) -> tuple[dict[str, list[int]], int]:
    """Delete items and their vectors; returns (ids that had vectors, by modality) and how many existed."""
    gone: dict[str, list[int]] = _delete_segments(conn, ids)
    count = 0
    for chunk in _chunks(sorted(set(ids)), _IN_CHUNK):
        rows = conn.execute(sa.select(T_items.c.id, T_items.c.modality, T_items.c.status)
                            .where(T_items.c.id.in_(chunk))).all()
        for ident, modality, status in rows:
            if status == OK:
                gone.setdefault(modality, []).append(ident)
        count += len(rows)
        conn.execute(sa.delete(T_vectors).where(T_vectors.c.item_id.in_(chunk)))
        conn.execute(sa.delete(T_pending).where(T_pending.c.item_id.in_(chunk)))
        conn.execute(sa.delete(T_items).where(T_items.c.id.in_(chunk)))
    return gone, count


def _gen(conn: sa.Connection, modality: str) -> int:
    return int(_meta_get(conn, f"gen:{modality}") or 0)


def _count(conn: sa.Connection, modality: str) -> int:
    return int(_meta_get(conn, f"count:{modality}") or 0)


_COUNTS_SQL = "SELECT key, value FROM meta WHERE key LIKE 'count:%'"


def _counts(conn: sa.Connection) -> dict[str, int]:
    """{modality: ok items} from the per-modality counters, by modality; a handful of meta rows."""
    return _parse_counts(conn.execute(sa.text(_COUNTS_SQL)).all())


def _parse_counts(rows: Iterable[Sequence]) -> dict[str, int]:
    return dict(sorted((k[len("count:"):], int(v)) for k, v in rows if k.startswith("count:")))


def _real_counts(conn: sa.Connection) -> dict[str, int]:
    """{index key: vectors}, counted: ok items per modality, windows per "<modality>#seg" (reads every item
    and window: for doctor and repair only)."""
    query = (sa.select(T_items.c.modality, sa.func.count()).where(T_items.c.status == OK)
             .group_by(T_items.c.modality).order_by(T_items.c.modality))
    out = {m: int(n) for m, n in conn.execute(query)}
    windows = sa.select(T_segments.c.modality, sa.func.count()).group_by(T_segments.c.modality)
    out.update((seg_key(m), int(n)) for m, n in conn.execute(windows))
    return out


def _recount(conn: sa.Connection) -> None:
    """Set the counters from the items and windows (a full count: repair and bulk changes only)."""
    real, kept = _real_counts(conn), _counts(conn)
    for m in set(real) | set(kept):
        if real.get(m, 0) != kept.get(m, 0):
            _meta_set(conn, f"count:{m}", str(real.get(m, 0)))


def _removed(gone: dict[str, list[int]]) -> dict[str, int]:
    return {m: -len(ids) for m, ids in gone.items()}


def _bump_gens(conn: sa.Connection, deltas: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Advance each touched index's write counter and move its count (ok items of a modality, or windows of
    "<modality>#seg") by its delta (added minus removed), in this transaction: {key: (counter before, after)}."""
    out = {}
    for m, delta in deltas.items():
        before = _gen(conn, m)
        _meta_set(conn, f"gen:{m}", str(before + 1))
        if delta:
            _meta_set(conn, f"count:{m}", str(_count(conn, m) + delta))
        out[m] = (before, before + 1)
    return out


def _meta_get(conn: sa.Connection, key: str) -> str | None:
    return conn.execute(sa.select(T_meta.c.value).where(T_meta.c.key == key)).scalar_one_or_none()


def _meta_set(conn: sa.Connection, key: str, value: str) -> None:
    if not conn.execute(sa.update(T_meta).where(T_meta.c.key == key).values(value=value)).rowcount:
        conn.execute(sa.insert(T_meta).values(key=key, value=value))


def _row(r: ItemRecord, now: float) -> dict:
    failed = r.error is not None
    return {
        "path": r.path, "modality": r.modality, "size": int(r.size), "mtime_ns": int(r.mtime_ns),
        "content_hash": r.content_hash, "facts": json.dumps(r.facts or {}, sort_keys=True, default=_json_default),
        "status": FAILED if failed else OK, "error": r.error if failed else None, "model": r.model,
        "root": r.root, "indexed_at": now,
    }


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"media fact of type {type(value).__name__} cannot be stored as JSON")


def _item(row: Sequence) -> Item:
    """An Item from a row of _ITEM_COLUMNS, in that order (a SQLAlchemy row or a driver's tuple)."""
    ident, path, modality, size, mtime_ns, content_hash, facts, status, error, model, root, indexed_at = row
    return Item(id=ident, path=path, modality=modality, size=size, mtime_ns=mtime_ns, content_hash=content_hash,
                facts=json.loads(facts) if facts else {}, status=status, error=error, model=model, root=root,
                indexed_at=indexed_at)


def _stack(records: list[ItemRecord] | list[SegmentRecord], where: str) -> np.ndarray:
    dims = {np.asarray(r.vector).size for r in records}
    if len(dims) > 1:
        raise StoreError(f"{where}: one put() holds vectors of different dimensions {sorted(dims)}; "
                         "every vector in a store must come from the same model")
    return vec.as_matrix(np.stack([np.asarray(r.vector, dtype=np.float32).reshape(-1) for r in records]))


def _check_modality(modality: str) -> None:
    if not isinstance(modality, str) or not _MODALITY_RE.match(modality):
        raise UsageError(f"modality {modality!r} is not a valid name (lower-case letters, digits, '_' or '-')")


def _has_prefix(prefix: str, dialect: str = "") -> sa.ColumnElement[bool]:
    """Paths starting with `prefix`. On SQLite a range of the path index (its TEXT compares bytewise, as
    Python compares str); elsewhere substr (exact under any collation, but read row by row). Not LIKE:
    SQLite's LIKE ignores case, and paths are case-sensitive."""
    if dialect == "sqlite":
        hi = _successor(prefix)
        return sa.and_(T_items.c.path >= prefix, *(() if hi is None else (T_items.c.path < hi,)))
    return sa.func.substr(T_items.c.path, 1, len(prefix)) == prefix


def _successor(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (in code point order, which is UTF-8
    byte order): the last character that can be incremented is, and what follows it dropped. None when
    none can ("" or all U+10FFFF): no upper bound."""
    for i in range(len(prefix) - 1, -1, -1):
        c = ord(prefix[i])
        if c < 0x10FFFF:
            c += 1
            if 0xD800 <= c <= 0xDFFF:  # surrogates are not characters: the next one is U+E000
                c = 0xE000
            return prefix[:i] + chr(c)
    return None


def _glob_to_like(glob: str) -> str:
    """A LIKE pattern matching at least what the glob matches (bracket expressions become '_')."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c == "[":
            j = i + 1
            if glob[j: j + 1] == "!":
                j += 1
            if glob[j: j + 1] == "]":
                j += 1
            end = glob.find("]", j)
            if end < 0:  # no closing bracket: fnmatch reads "[" literally
                out.append("[")
            else:
                out.append("_")
                i = end
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _chunks(seq: Sequence, size: int) -> Iterator[list]:
    seq = list(seq)
    for start in range(0, len(seq), size):
        yield seq[start: start + size]
