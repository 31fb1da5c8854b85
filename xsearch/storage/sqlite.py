"""Everything SQLite-specific lives here, so another database (PostgreSQL) only needs its own twin.

WAL lets readers in other threads/processes keep a consistent snapshot while one writer writes;
busy_timeout makes a second writer wait instead of failing at once; synchronous=NORMAL is safe
under WAL (a power cut can lose the last commits, never corrupt the file) and much faster.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy import event

BUSY_TIMEOUT_MS = 30_000
# A 1024-d float16 vector row is ~2060 bytes: a 4 KiB page holds one (half wasted), a 16 KiB page seven.
PAGE_SIZE = 16_384
# Reading through mmap skips a copy per page when re-ranking candidates (address space only, not RAM).
MMAP_SIZE = 4 << 30


def is_sqlite(engine_or_url: sa.Engine | sa.URL | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, sa.Engine) else sa.make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def file_url(path: Path, *, read_only: bool) -> str:
    """A URL for the SQLite file; read-only opens go through SQLite's own mode=ro so writes fail there too.

    On read-only media (a read-only mount, an immutable folder) a WAL database cannot even be read the
    usual way: SQLite needs to create its -shm file beside it. Nothing can change such a file, so it is
    opened as immutable (no locks, no -shm), provided no write-ahead log holds commits the main file
    lacks (Storage.close checkpoints it into the file); with one, the usual open fails with a clear error.
    """
    posix = Path(os.path.abspath(path)).as_posix()
    if read_only:
        if _on_read_only_media(Path(posix)):
            return f"sqlite:///file:{posix}?immutable=1&uri=true"
        return f"sqlite:///file:{posix}?mode=ro&uri=true"
    return f"sqlite:///{posix}"


def _on_read_only_media(path: Path) -> bool:
    if os.access(path.parent, os.W_OK):
        return False
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True


def create_engine(url: str, *, read_only: bool) -> sa.Engine:
    # check_same_thread=False: connections come from a pool and may be used by any thread (one at a time).
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})
    _install_pragmas(engine, read_only=read_only)
    return engine


def _install_pragmas(engine: sa.Engine, *, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI objects
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not read_only:
            cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes effect while the file is still empty
            cur.execute("PRAGMA journal_mode=WAL")  # persistent in the file; needs write access to set
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Reads get a real snapshot (plain BEGIN, so several SELECTs agree); writes take the write lock
        # up front (BEGIN IMMEDIATE) so two writers queue on busy_timeout rather than dead-locking
        # on a read->write upgrade, which SQLite answers with SQLITE_BUSY at once.
        write = conn.get_execution_options().get("xsearch_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write and not read_only else "BEGIN")


# A read statement's runner: run(sql, params) -> rows as tuples. Storage runs the query path's reads
# straight on a pooled driver connection (see Storage._sqlite_read), other reads through SQLAlchemy (sa_run).
Run = Callable[[str, Sequence[Any]], list]


def sa_run(conn: sa.Connection) -> Run:
    return lambda sql, params: conn.exec_driver_sql(sql, tuple(params)).all()


# One statement for any number of ids: a JSON array bound as ONE parameter. Against `IN (?, ?, ...)`
# this skips SQLAlchemy's per-call expansion of the list and the 999-variable chunking, and SQLite
# caches the prepared statement (a 600-candidate re-rank read: ~0.5 ms instead of ~2 ms).
_VECTORS_BY_IDS = "SELECT item_id, data FROM vectors WHERE item_id IN (SELECT value FROM json_each(?))"


def vectors_by_ids(run: Run, ids: list[int]) -> list[tuple[int, bytes]]:
    """(item_id, data) rows of the vectors table for these ids, in the database's order."""
    return run(_VECTORS_BY_IDS, (json.dumps(ids),))


def rows_by_ids(run: Run, table: str, columns: Sequence[str], ids: list[int]) -> list[tuple]:
    """Rows of `table` (these columns, in this order) whose id is one of `ids`, the same way."""
    return run(f"SELECT {', '.join(columns)} FROM {table} WHERE id IN (SELECT value FROM json_each(?))",
               (json.dumps(ids),))


def paths_in_range(run: Run, lo: str | None, hi: str | None, *, limit: int | None,
                   with_paths: bool) -> tuple[list[int], list[str]]:
    """(ids, paths) of the items whose path is in [lo, hi) (None: unbounded), in path order; paths only
    `with_paths` (else []). At most `limit` of them.

    Only the path index is read (it holds each row's id): a range of it when bounded. SQLite compares TEXT
    by its UTF-8 bytes (the column's BINARY collation), which orders like Python compares str. No other
    column is constrained, so the planner has no other index to pick (naming modality too makes it scan
    the whole modality through ix_items_modality_status: 0.8 s at 1M items instead of 3 ms). The rows come
    back as one JSON array per column, built by SQLite: 10,000 ids in 2 ms rather than 9 ms as rows."""
    where = " AND ".join(c for c, v in (("path >= ?", lo), ("path < ?", hi)) if v is not None)
    inner = (f"SELECT id, path FROM items{' WHERE ' + where if where else ''} ORDER BY path"
             f"{' LIMIT ?' if limit is not None else ''}")
    cols = "json_group_array(id), " + ("json_group_array(path)" if with_paths else "'[]'")
    params = tuple(v for v in (lo, hi, limit) if v is not None)
    ((ids, paths),) = run(f"SELECT {cols} FROM ({inner})", params)
    return json.loads(ids), json.loads(paths)


def integrity_problems(conn: sa.Connection) -> list[str]:
    rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else [f"sqlite integrity_check: {r}" for r in rows]


def optimize(engine: sa.Engine) -> None:
    """Refresh the planner's statistics where useful and fold the WAL back into the file (on close)."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection  # autocommit: a checkpoint cannot run inside a transaction
        raw.execute("PRAGMA optimize")
        raw.execute("PRAGMA busy_timeout=0")  # never wait on readers of other processes: skip instead
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
