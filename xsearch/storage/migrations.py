"""Schema migrations: a list of functions applied in order, the store's version kept in meta.

`MIGRATIONS[i]` takes a store from schema version i to i+1 inside one transaction. A new store runs all
of them, so every step is exercised on every fresh store. Never edit a released step: append a new one
(and update db.py's tables to the result). Each step declares the tables it creates in its own MetaData,
so later changes to db.py cannot change what an old step does.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from xsearch.errors import StoreError

SCHEMA_VERSION_KEY = "schema_version"


def _add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    coltype = column.type.compile(dialect=conn.dialect)
    null = "" if column.nullable else " NOT NULL"
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {coltype}{null}")


def _v1_initial(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "meta",
        md,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    sa.Table(
        "items",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.String(4096), nullable=False, unique=True),
        sa.Column("modality", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=True, index=True),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Index("ix_items_modality_status", "modality", "status"),
        sqlite_autoincrement=True,
    )
    sa.Table(
        "vectors",
        md,
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    md.create_all(conn)


def _v2_roots(conn: sa.Connection) -> None:
    """Indexed folders with their remembered modality override; items know their root and index time."""
    md = sa.MetaData()
    sa.Table(
        "roots",
        md,
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("modality", sa.String(32), nullable=True),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    md.create_all(conn)
    _add_column(conn, "items", sa.Column("root", sa.String(4096), nullable=True))
    _add_column(conn, "items", sa.Column("indexed_at", sa.Float, nullable=True))
    conn.exec_driver_sql("CREATE INDEX ix_items_root ON items (root)")
    # Items from before roots existed were indexed "now or earlier": record the migration time.
    conn.execute(sa.text("UPDATE items SET indexed_at = :t"), {"t": time.time()})


def _v3_pending_vectors(conn: sa.Connection) -> None:
    """A re-embedding under way (``xsearch reembed``): each item's vector from the new model (or why it has
    none), kept apart until every item has one, when they replace ``vectors`` in one transaction."""
    md = sa.MetaData()
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True))  # for the foreign key only
    sa.Table(
        "pending_vectors",
        md,
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=True),  # None: the item could not be re-embedded (error says why)
        sa.Column("error", sa.Text, nullable=True),
    )
    md.tables["pending_vectors"].create(conn)


def _v4_tags(conn: sa.Connection) -> None:
    """Zero-shot tags: named label sets (their labels' scaled text vectors per modality, so items indexed
    later are tagged without the model), which items each set tagged at which item version, the tags."""
    md = sa.MetaData()
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True))  # for the foreign keys only
    sa.Table(
        "label_sets",
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("labels", sa.Text, nullable=False),  # JSON list
        sa.Column("options", sa.Text, nullable=False),  # JSON: targets, top, min_prob, templates, model
        sa.Column("created_at", sa.Float, nullable=False),
    )
    sa.Table(
        "label_vectors",
        md,
        sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("modality", sa.String(32), primary_key=True),
        sa.Column("scale", sa.Float, nullable=False),  # the modality's logit scale
        sa.Column("data", sa.LargeBinary, nullable=False),  # float32 (labels, dim) scaled text outputs
    )
    sa.Table(
        "tagged",
        md,
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Float, nullable=True),  # the item's indexed_at when it was tagged
    )
    sa.Table(
        "tags",
        md,
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.String(400), primary_key=True),
        sa.Column("prob", sa.Float, nullable=False),
        sa.Index("ix_tags_label", "label"),
    )
    for name in ("label_sets", "label_vectors", "tagged", "tags"):
        md.tables[name].create(conn)
    # A set's tags count while tagged.version equals the item's indexed_at: every item needs one.
    conn.execute(sa.text("UPDATE items SET indexed_at = :t WHERE indexed_at IS NULL"), {"t": time.time()})


def _v5_segments(conn: sa.Connection) -> None:
    """Moments: windows of long recordings (start/end in seconds) with their own vectors, and the
    per-folder setting that asks for them (JSON, None: off)."""
    md = sa.MetaData()
    sa.Table(
        "segments",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("modality", sa.String(32), nullable=False, index=True),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,
    )
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True))  # for the foreign key only
    md.create_all(conn, tables=[md.tables["segments"]])
    _add_column(conn, "roots", sa.Column("moments", sa.Text, nullable=True))


def _v6_counts(conn: sa.Connection) -> None:
    """Per-index counts in meta, kept from now on by every write in the same transaction as the index's write
    counter, so that neither a query nor ``status`` counts rows: ``count:<modality>``, its ok items, and
    ``count:<modality>#seg``, its stored windows (moments)."""
    items = conn.execute(sa.text("SELECT modality, count(*) FROM items WHERE status = 'ok' GROUP BY modality")).all()
    windows = conn.execute(sa.text("SELECT modality, count(*) FROM segments GROUP BY modality")).all()
    conn.execute(sa.text("DELETE FROM meta WHERE key LIKE 'count:%'"))  # a store put back to an older version
    for key, n in [*items, *((f"{m}#seg", n) for m, n in windows)]:
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES (:k, :v)"), {"k": f"count:{key}", "v": str(n)})


MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    _v1_initial, _v2_roots, _v3_pending_vectors, _v4_tags, _v5_segments, _v6_counts,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sa.Connection) -> int:
    """The store's version; 0 for an empty database."""
    if not sa.inspect(conn).has_table("meta"):
        return 0
    row = conn.execute(sa.text("SELECT value FROM meta WHERE key = :k"), {"k": SCHEMA_VERSION_KEY}).first()
    return int(row[0]) if row else 0


def migrate(conn: sa.Connection, *, where: str, read_only: bool, upto: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to `upto` (in the caller's transaction); returns the version found."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: store has schema version {found}, newer than this xsearch understands ({SCHEMA_VERSION}); "
            "upgrade xsearch or use another store directory"
        )
    if found >= upto:
        return found
    if read_only:
        raise StoreError(
            f"{where}: store has schema version {found} and needs migrating to {upto}; "
            "open it once without read-only (e.g. run `xsearch index`) to upgrade it"
        )
    for version in range(found, upto):
        MIGRATIONS[version](conn)
        _set_version(conn, version + 1)
    return found


def _set_version(conn: sa.Connection, version: int) -> None:
    params = {"k": SCHEMA_VERSION_KEY, "v": str(version)}
    if conn.execute(sa.text("UPDATE meta SET value = :v WHERE key = :k"), params).rowcount == 0:
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES (:k, :v)"), params)
