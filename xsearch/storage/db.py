"""The metadata database: the current schema (SQLAlchemy Core tables) and engine creation.

The database is the source of truth; FAISS indexes are derived from its `vectors` table.
Tables here describe the *current* schema version; migrations.py holds how older versions got here.
"""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from xsearch.storage import sqlite

DB_FILENAME = "xsearch.db"

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

roots = sa.Table(
    "roots",
    metadata,
    sa.Column("path", sa.String(4096), primary_key=True),
    sa.Column("modality", sa.String(32), nullable=True),  # None: decide per file
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("moments", sa.Text, nullable=True),  # JSON {modality: [window, hop]} of --moments; None: off
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.String(4096), nullable=False, unique=True),
    sa.Column("modality", sa.String(32), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=True, index=True),
    sa.Column("facts", sa.Text, nullable=False),  # JSON object
    sa.Column("status", sa.String(16), nullable=False),  # "ok" | "failed"
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("root", sa.String(4096), nullable=True, index=True),
    sa.Column("indexed_at", sa.Float, nullable=True),
    sa.Index("ix_items_modality_status", "modality", "status"),
    # AUTOINCREMENT: ids are never reused, so a stale index can never point at a different item.
    sqlite_autoincrement=True,
)

vectors = sa.Table(
    "vectors",
    metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),  # raw little-endian float16/float32, dtype in meta
)

# Moments: windows of an item's recording, each with its own vector (same format as `vectors`). An
# audio or video file's windows, and a video's audio track as audio windows (modality "audio").
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("modality", sa.String(32), nullable=False, index=True),
    sa.Column("start", sa.Float, nullable=False),  # seconds from the start of the file
    sa.Column("end", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)


# A re-embedding under way: the new model's vector of each item (see Storage.reembed_*); its model, dimension
# and dtype in meta ("reembed:model", ...). Empty when none is.
pending_vectors = sa.Table(
    "pending_vectors",
    metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=True),  # None: the item could not be re-embedded
    sa.Column("error", sa.Text, nullable=True),
)


label_sets = sa.Table(
    "label_sets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("labels", sa.Text, nullable=False),  # JSON list
    sa.Column("options", sa.Text, nullable=False),  # JSON: targets, top, min_prob, templates, model
    sa.Column("created_at", sa.Float, nullable=False),
)

label_vectors = sa.Table(
    "label_vectors",
    metadata,
    sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("modality", sa.String(32), primary_key=True),
    sa.Column("scale", sa.Float, nullable=False),  # the modality's logit scale
    sa.Column("data", sa.LargeBinary, nullable=False),  # float32 (labels, dim) scaled text outputs
)

tagged = sa.Table(
    "tagged",
    metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Float, nullable=True),  # the item's indexed_at when it was tagged
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("label_set", sa.String(200), sa.ForeignKey("label_sets.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("label", sa.String(400), primary_key=True),
    sa.Column("prob", sa.Float, nullable=False),
    sa.Index("ix_tags_label", "label"),
)


def db_path(directory: Path) -> Path:
    return directory / DB_FILENAME


def make_engine(directory: Path, url: str | None, *, read_only: bool) -> sa.Engine:
    """An engine for the store: the SQLite file in `directory` unless a SQLAlchemy `url` is given."""
    if url is None:
        return sqlite.create_engine(sqlite.file_url(db_path(directory), read_only=read_only), read_only=read_only)
    if sqlite.is_sqlite(url):
        return sqlite.create_engine(url, read_only=read_only)
    return sa.create_engine(url, pool_pre_ping=True)


def integrity_problems(conn: sa.Connection) -> list[str]:
    if conn.dialect.name == "sqlite":
        return sqlite.integrity_problems(conn)
    return []  # other servers check their own pages


def write_options(conn: sa.Connection) -> sa.Connection:
    """Mark a connection as a writer before its transaction begins (SQLite: BEGIN IMMEDIATE)."""
    return conn.execution_options(xsearch_write=True)
