"""A memory-mapped copy of one modality's stored vectors, next to its IVF-PQ index, for re-ranking.

Re-ranking reads a few hundred stored vectors per query. From SQLite each costs ~2.5 us (B-tree
lookups, one bytes object per row); from this file a whole candidate set is one fancy-indexing copy.
The cache is derived data like the index: the database stays the source of truth, and a cache that is
missing or does not check out is not used (re-ranking reads the database) until a rebuild makes one.

Files in the index folder:

* ``<modality>.<token>.vec``: the database's bytes of each vector, rows end to end, append-only; a
  rebuild writes a new file under a new token;
* ``<modality>.<token>.vecmap.npy``: (2, n) int64, the ids (sorted) and their row numbers, written
  whole at each save under a new token.

The index sidecar names both, the rows that were fsynced before it was written, and the map's CRC.
Rows past that count (a writer killed mid-append) are ignored, and overwritten by the next append.
A row is never rewritten in place: a changed vector is appended and the map points to the new row, so
other processes reading an older map through their own mapping always see the bytes they expect.

The rows carry no checksum (checking them per query would cost more than the cache saves). Reading a
row that is not of unit length (zeroed, 0xFF-filled, garbage) gives NaN, which re-ranking takes as
damage and reads the database instead; ``doctor`` compares every row with the database (``differing``).
"""
from __future__ import annotations

import io
import logging
import os
import re
import secrets
import threading
import zlib
from pathlib import Path

import numpy as np

from xsearch.storage import vectors as vec
from xsearch.storage.files import atomic_write

log = logging.getLogger(__name__)

_TOKEN_BYTES = 6
COMPACT_SLACK_ROWS = 1024  # superseded rows tolerated beyond half the file before a save compacts it
_COPY_ROWS = 16_384  # rows copied at a time when compacting


class VectorCache:
    """Stored vectors of one modality by id; appends and removals by one writer, reads by any thread."""

    def __init__(self, directory: Path, modality: str, data_name: str, dtype: str, dim: int, *,
                 ids: np.ndarray | None = None, rows: np.ndarray | None = None, nrows: int = 0):
        self.directory, self.modality, self.data_name = Path(directory), modality, data_name
        self.dtype, self.dim = dtype, dim
        self.rowbytes = dim * vec.DTYPES[dtype].itemsize
        self.nrows = nrows  # rows in the data file that belong to this cache (later bytes are garbage)
        self.damaged: str | None = None  # why searches stopped using it (set when damage shows at query time)
        self._write_lock = threading.Lock()
        # (sorted ids, their rows, a mapping covering every referenced row): swapped whole, so a reader
        # never sees ids without their rows or rows beyond its mapping.
        ids = np.zeros(0, np.int64) if ids is None else ids
        rows = np.zeros(0, np.int64) if rows is None else rows
        self._state = (ids, rows, self._map(nrows))

    @property
    def data_path(self) -> Path:
        return self.directory / self.data_name

    @property
    def ids(self) -> np.ndarray:
        return self._state[0]

    def __len__(self) -> int:
        return len(self._state[0])

    # -- creating and loading ------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, modality: str, dtype: str, dim: int) -> VectorCache:
        """An empty cache with a new data file."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{modality}.{secrets.token_hex(_TOKEN_BYTES)}.vec"
        (directory / name).write_bytes(b"")
        return cls(directory, modality, name, dtype, dim)

    @classmethod
    def load(cls, directory: Path, modality: str, info: dict, dim: int) -> VectorCache:
        """The cache a sidecar's ``cache`` entry describes; ValueError saying what does not check out."""
        try:
            data_name, map_name, dtype = str(info["data"]), str(info["map"]), str(info["dtype"])
            nrows, count, crc = int(info["rows"]), int(info["count"]), int(info["map_crc32"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cache entry of the {modality} sidecar is incomplete ({exc})") from exc
        if dtype not in vec.DTYPES:
            raise ValueError(f"cache entry of the {modality} sidecar has an unknown dtype {dtype!r}")
        for name in (data_name, map_name):
            if not _own_file(name, modality):
                raise ValueError(f"cache entry of the {modality} sidecar names a foreign file {name!r}")
        raw = (directory / map_name).read_bytes()
        if zlib.crc32(raw) != crc:
            raise ValueError(f"{directory / map_name}: checksum differs from the sidecar (half-written or damaged)")
        table = np.load(io.BytesIO(raw), allow_pickle=False)
        if table.dtype != np.int64 or table.shape != (2, count):
            raise ValueError(f"{directory / map_name}: expected (2, {count}) int64, found {table.shape} {table.dtype}")
        ids, rows = table[0].copy(), table[1].copy()
        if count and (np.any(np.diff(ids) <= 0) or rows.min() < 0 or rows.max() >= nrows):
            raise ValueError(f"{directory / map_name}: ids unsorted or rows outside the data file")
        cache = cls(directory, modality, data_name, dtype, dim, nrows=nrows)
        size = cache.data_path.stat().st_size
        if size < nrows * cache.rowbytes:
            raise ValueError(f"{cache.data_path}: {size} bytes, shorter than the {nrows} rows the sidecar names")
        cache._state = (ids, rows, cache._map(nrows))
        return cache

    # -- writing (one writer; searches may run meanwhile) -----------------------------------------------
    def append(self, ids: np.ndarray, raw: np.ndarray) -> None:
        """Store these ids' rows (stored bytes, (n, rowbytes) uint8); an id already present moves to its new row."""
        ids = np.asarray(ids, dtype=np.int64)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if not len(ids):
            return
        if raw.shape != (len(ids), self.rowbytes):
            raise ValueError(f"expected ({len(ids)}, {self.rowbytes}) bytes of rows, got {raw.shape}")
        with self._write_lock:
            start = self.nrows
            with open(self.data_path, "r+b") as fh:
                fh.seek(start * self.rowbytes)
                fh.write(raw.data)
                fh.truncate()  # drop what a killed writer appended past the rows we own
            self.nrows = start + len(ids)
            old_ids, old_rows, _ = self._state
            # The last occurrence of an id in this batch wins, as in the database.
            new_ids, last = np.unique(ids[::-1], return_index=True)
            new_rows = start + (len(ids) - 1 - last)
            if not len(old_ids) or new_ids[0] > old_ids[-1]:  # ids beyond all held ones (a build streams so)
                all_ids, all_rows = np.concatenate([old_ids, new_ids]), np.concatenate([old_rows, new_rows])
            else:
                keep = ~np.isin(old_ids, new_ids, assume_unique=True)
                all_ids = np.concatenate([old_ids[keep], new_ids])
                all_rows = np.concatenate([old_rows[keep], new_rows])
                order = np.argsort(all_ids, kind="stable")
                all_ids, all_rows = all_ids[order], all_rows[order]
            self._state = (all_ids, all_rows, self._map(self.nrows))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        with self._write_lock:
            old_ids, old_rows, mm = self._state
            keep = ~np.isin(old_ids, ids)
            self._state = (old_ids[keep], old_rows[keep], mm)

    def save(self) -> dict:
        """Make the rows durable and write the map; returns the sidecar's ``cache`` entry. A data file
        that is more than half superseded rows (vectors changed or removed since it was written) is
        first rewritten with the live rows only, under a new name."""
        with self._write_lock:
            if self.nrows > 2 * len(self._state[0]) + COMPACT_SLACK_ROWS:
                self._compact()
            ids, rows, _ = self._state
            with open(self.data_path, "r+b") as fh:
                os.fsync(fh.fileno())
            buf = io.BytesIO()
            np.save(buf, np.stack([ids, rows]) if len(ids) else np.zeros((2, 0), np.int64), allow_pickle=False)
            raw = buf.getvalue()
            map_name = f"{self.modality}.{secrets.token_hex(_TOKEN_BYTES)}.vecmap.npy"
            atomic_write(self.directory / map_name, raw)
            return {"data": self.data_name, "map": map_name, "dtype": self.dtype, "rows": self.nrows,
                    "count": int(len(ids)),
                    "map_crc32": zlib.crc32(raw), "bytes": self.nrows * self.rowbytes + len(raw)}

    def _compact(self) -> None:
        ids, rows, mm = self._state
        order = np.argsort(rows, kind="stable")  # read the old file front to back
        name = f"{self.modality}.{secrets.token_hex(_TOKEN_BYTES)}.vec"
        new_rows = np.empty(len(ids), np.int64)
        with open(self.directory / name, "wb") as fh:
            for start in range(0, len(ids), _COPY_ROWS):
                part = order[start: start + _COPY_ROWS]
                fh.write(np.ascontiguousarray(mm[rows[part]]).data)
                new_rows[part] = np.arange(start, start + len(part))
        self.data_name, self.nrows = name, len(ids)
        self._state = (ids, new_rows, self._map(self.nrows))  # the old file goes after the next sidecar

    # -- reading -------------------------------------------------------------------------------------
    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found ids, their float32 unit vectors, ids not in the cache), found ids in ascending order."""
        have, rows, mm = self._state
        want = np.unique(np.asarray(ids, dtype=np.int64))
        pos = np.minimum(np.searchsorted(have, want), max(len(have) - 1, 0))
        hit = (have[pos] == want) if len(have) else np.zeros(len(want), bool)
        found = want[hit]
        if not len(found):
            return found, np.zeros((0, self.dim), np.float32), want[~hit]
        picked = mm[rows[pos[hit]]]  # one copy of just these rows out of the mapping
        # Unchecked bytes: a damaged row reads as NaN, which re-ranking takes as damage (reads the database).
        return found, vec.decode_rows(picked, len(found), self.dtype, self.dim, damaged_as_nan=True), want[~hit]

    def differing(self, ids: np.ndarray, blobs: list[bytes]) -> int:
        """How many of these ids' rows differ from `blobs`, their bytes in the database; ids the cache does
        not hold are not counted (comparing the id sets is a separate check)."""
        have, rows, mm = self._state
        ids = np.asarray(ids, dtype=np.int64)
        if not len(have) or not len(ids):
            return 0
        pos = np.minimum(np.searchsorted(have, ids), len(have) - 1)
        hit = have[pos] == ids
        cached = mm[rows[pos[hit]]]  # (hits, rowbytes), a copy of just these rows
        stored = [b for b, h in zip(blobs, hit.tolist()) if h]
        joined = b"".join(stored)
        if len(joined) == cached.size and all(len(b) == self.rowbytes for b in stored):
            if joined == cached.tobytes():  # the common case: one comparison for the whole chunk
                return 0
            return int(np.count_nonzero((cached != np.frombuffer(joined, np.uint8).reshape(cached.shape)).any(axis=1)))
        return sum(1 for row, b in zip(cached, stored) if row.tobytes() != b)  # rows of the wrong length

    def raw(self, ids: np.ndarray) -> dict[int, bytes]:
        """Stored bytes by id, for the ids the cache holds (consistency checks)."""
        have, rows, mm = self._state
        out = {}
        for i in np.asarray(ids, dtype=np.int64):
            p = int(np.searchsorted(have, i))
            if p < len(have) and have[p] == i:
                out[int(i)] = mm[rows[p]].tobytes()
        return out

    def _map(self, nrows: int) -> np.ndarray:
        if nrows == 0:
            return np.zeros((0, self.rowbytes), np.uint8)
        return np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(nrows, self.rowbytes))


def names(info: dict | None) -> set[str]:
    """The files a sidecar's cache entry refers to."""
    if not isinstance(info, dict):
        return set()
    return {str(info[k]) for k in ("data", "map") if k in info}


def remove_unused(directory: Path, modality: str, keep: set[str] | tuple = ()) -> None:
    """Delete this modality's cache files other than `keep` (superseded maps, data files of old builds,
    files a killed build left). Processes still reading an old file keep it alive until they let go."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if _own_file(p.name, modality) and p.name not in keep:
            p.unlink(missing_ok=True)


_FILE_RE = re.compile(r"^(?P<m>[a-z0-9][a-z0-9_-]{0,31}(?:#seg)?)\.[0-9a-f]{%d}\.(vec|vecmap\.npy)$" % (2 * _TOKEN_BYTES))


def _own_file(name: str, modality: str) -> bool:
    m = _FILE_RE.match(name)
    return bool(m) and m.group("m") == modality
