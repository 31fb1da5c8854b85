"""The re-rank cache: a memory-mapped copy of the stored vectors beside an IVF-PQ index.

It must give exactly the database's answers, follow every write, survive a reopen, ignore what a killed
writer appended, and be reported and remade when damaged. Real SQLite, real FAISS, real files.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from xsearch.storage import IndexPolicy, Storage
from xsearch.storage.faiss_index import ModalityIndex
from tests.test_faiss_index import clustered, recall

N = 3_000
POLICY = IndexPolicy(flat_max=1_000, tune_queries=50, pq_min_dim=0)  # IVF-PQ (with a cache) at 64-d


def paths(start: int, n: int) -> list[str]:
    return [f"/v/{i:05d}.jpg" for i in range(start, start + n)]


def cache_files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "index").iterdir() if ".vec" in p.name)


def without_cache(store: Storage, queries: np.ndarray, k: int = 10) -> list:
    """The same search with re-ranking reading the database."""
    mi = store._index("image")
    cache, mi.cache = mi.cache, None
    try:
        return store.search("image", queries, k)
    finally:
        mi.cache = cache


def db_rows(directory: Path) -> dict[int, bytes]:
    con = sqlite3.connect(directory / "xsearch.db")
    try:
        return dict(con.execute("SELECT item_id, data FROM vectors"))
    finally:
        con.close()


def cache_matches_database(store: Storage, directory: Path) -> None:
    mi = store._index("image")
    assert mi.cache is not None
    rows = db_rows(directory)
    assert mi.cache.ids.tolist() == sorted(rows)
    assert mi.cache.raw(mi.cache.ids) == rows


@pytest.fixture
def store(tmp_path):
    s = Storage(tmp_path, policy=POLICY)
    s.add_vectors(clustered(N, seed=1), modality="image", paths=paths(0, N))
    s.flush()
    yield s
    s.close()


def test_an_ivf_index_gets_a_cache_that_answers_exactly_as_the_database(store, tmp_path):
    info = store.index_info()["image"]
    assert info["type"] == "ivfpq" and info["rerank_cache_bytes"] == N * 64 * 2  # float16 rows
    names = cache_files(tmp_path)
    assert len(names) == 2 and any(n.endswith(".vec") for n in names)  # data + map
    sidecar = json.loads((tmp_path / "index" / "image.json").read_text())
    assert sidecar["cache"]["count"] == N and sidecar["cache"]["dtype"] == "float16"
    cache_matches_database(store, tmp_path)
    queries = clustered(50, seed=9)
    assert store.search("image", queries, 10) == without_cache(store, queries)


def test_the_cache_follows_changes_removals_and_additions_and_reloads(store, tmp_path):
    ids = store.ids_matching(modality="image")
    changed = clustered(20, seed=5)
    store.add_vectors(changed, modality="image", paths=paths(0, 20))  # same paths: new vectors, same ids
    store.remove(ids[100:140].tolist())
    new = store.add_vectors(clustered(300, seed=6), modality="image", paths=paths(N, 300))
    cache_matches_database(store, tmp_path)
    queries = np.concatenate([changed[:5], clustered(30, seed=10)])
    got = store.search("image", queries, 10)
    assert got == without_cache(store, queries)
    assert [r[0][0] for r in got[:5]] == ids[:5].tolist()  # a changed vector finds its own item
    removed = set(ids[100:140].tolist())
    assert not any(i in removed for r in got for i, _ in r)
    store.flush()
    with Storage(tmp_path, read_only=True, policy=POLICY) as again:
        mi = again._index("image")
        assert mi.cache is not None and len(mi.cache) == N - 40 + 300 and not mi.dirty
        assert again.search("image", queries, 10) == got
        assert again.check() == []
    assert len(cache_files(tmp_path)) == 2  # superseded maps are deleted
    assert len(new) == 300


def test_superseded_rows_are_compacted_away_on_save(store, tmp_path):
    for round_ in range(4):  # the same 600 items re-embedded: each round appends 600 rows, supersedes 600
        store.add_vectors(clustered(600, seed=21 + round_), modality="image", paths=paths(0, 600))
    mi = store._index("image")
    assert mi.cache.nrows == N + 4 * 600  # every version is appended
    old_data = mi.cache.data_path
    store.flush()  # 5,400 rows for 3,000 live ones: not yet more than half superseded
    assert mi.cache.data_path == old_data
    store.remove(store.ids_matching(modality="image")[:2_000].tolist())  # now 5400 rows for 1000 live
    store.flush()
    assert mi.cache.data_path != old_data and not old_data.exists()
    assert mi.cache.nrows == 1_000 and mi.cache.data_path.stat().st_size == 1_000 * 128
    cache_matches_database(store, tmp_path)
    queries = clustered(20, seed=30)
    assert store.search("image", queries, 10) == without_cache(store, queries)
    with Storage(tmp_path, read_only=True, policy=POLICY) as again:
        assert again.search("image", queries, 10) == store.search("image", queries, 10)


def test_rows_a_killed_writer_appended_are_ignored_then_cut(store, tmp_path):
    mi = store._index("image")
    data = mi.cache.data_path
    store.close()
    with open(data, "ab") as fh:
        fh.write(b"\x7f" * 1000)  # a partial append that no sidecar names
    with Storage(tmp_path, policy=POLICY) as s:
        mi = s._index("image")
        assert mi.cache is not None and mi.cache.nrows == N
        queries = clustered(20, seed=12)
        assert s.search("image", queries, 10) == without_cache(s, queries)
        s.add_vectors(clustered(10, seed=13), modality="image", paths=paths(N, 10))
        s.flush()
        assert data.stat().st_size == (N + 10) * 128  # the garbage was overwritten and cut
        cache_matches_database(s, tmp_path)


def test_a_damaged_cache_is_reported_searched_around_and_rebuilt(store, tmp_path):
    store.close()
    sidecar = json.loads((tmp_path / "index" / "image.json").read_text())
    map_file = tmp_path / "index" / sidecar["cache"]["map"]
    map_file.write_bytes(map_file.read_bytes()[:-16])  # cut short
    with Storage(tmp_path, policy=POLICY) as s:
        (problem,) = s.check()
        assert "re-rank cache" in problem and map_file.name in problem and "rebuild" in problem
        queries = clustered(10, seed=14)
        mi = s._index("image")
        assert mi.cache is None  # not used: re-ranking reads the database
        before = s.search("image", queries, 10)
        s.rebuild_indexes("image")
        assert s.check() == []
        assert s._index("image").cache is not None
        after = s.search("image", queries, 10)
        assert after == without_cache(s, queries)
        assert recall(after, before) >= 0.9  # a rebuilt index finds what the old one did
        assert len(cache_files(tmp_path)) == 2  # the damaged map and the old data file are gone
        cache_matches_database(s, tmp_path)


def test_a_cache_whose_bytes_differ_from_the_database_is_caught(store, tmp_path):
    store.close()
    sidecar = json.loads((tmp_path / "index" / "image.json").read_text())
    data = tmp_path / "index" / sidecar["cache"]["data"]
    raw = bytearray(data.read_bytes())
    raw[: len(raw) // 2] = bytes(len(raw) // 2)  # the first half of the rows zeroed
    data.write_bytes(bytes(raw))
    with Storage(tmp_path, read_only=True, policy=POLICY) as s:
        (problem,) = s.check()
        assert "differ from the database" in problem


def test_an_ivf_index_saved_without_a_cache_is_reported_and_repaired(store, tmp_path):
    mi = store._index("image")
    mi.cache = None  # as after a full disk while appending: the index is right, the cache was dropped
    mi.dirty = True
    store.flush()
    assert cache_files(tmp_path) == []  # the dropped cache's files are gone with the save
    (problem,) = store.check()
    assert "no re-rank cache" in problem and "doctor --repair" in problem
    store.rebuild_indexes("image")
    assert store.check() == [] and len(cache_files(tmp_path)) == 2


def test_a_read_only_store_rebuilds_in_memory_without_writing_a_cache(store, tmp_path):
    store.close()
    for p in (tmp_path / "index").iterdir():
        p.unlink()
    with Storage(tmp_path, read_only=True, policy=POLICY) as s:
        mi = s._index("image")
        assert mi.kind == "ivfpq" and mi.cache is None
        assert len(s.search("image", clustered(3, seed=15), 5)[0]) == 5
    assert list((tmp_path / "index").iterdir()) == []


def test_retraining_replaces_the_cache_files(tmp_path):
    policy = IndexPolicy(flat_max=1_000, retrain_growth=2.0, tune_queries=50, pq_min_dim=0)
    with Storage(tmp_path, policy=policy) as s:
        s.add_vectors(clustered(1_500, seed=1), modality="image", paths=paths(0, 1_500))
        s.flush()
        first = cache_files(tmp_path)
        s.add_vectors(clustered(2_000, seed=2), modality="image", paths=paths(1_500, 2_000))  # > 2x: retrained
        s.flush()
        assert s.index_info()["image"]["trained_on"] == 3_500
        second = cache_files(tmp_path)
        assert len(second) == 2 and not set(first) & set(second)
        cache_matches_database(s, tmp_path)
    assert ModalityIndex.load(tmp_path / "index", "image").cache is not None


# A writer that adds, changes and removes vectors in batches, saving now and then, until killed.
_WRITER = r"""
import sys
import numpy as np
from xsearch.storage import IndexPolicy, Storage
from tests.test_faiss_index import clustered
store = Storage(sys.argv[1], policy=IndexPolicy(flat_max=1_000, tune_queries=50, pq_min_dim=0))
start = int(sys.argv[2])
for b in range(1_000):
    n = start + b * 200
    store.add_vectors(clustered(200, seed=n), modality="image", paths=[f"/v/{i:05d}.jpg" for i in range(n, n + 200)])
    store.add_vectors(clustered(5, seed=n + 1), modality="image", paths=[f"/v/{i:05d}.jpg" for i in range(5)])
    ids = store.ids_matching(modality="image")
    store.remove(ids[len(ids) // 2: len(ids) // 2 + 3].tolist())
    if b % 3 == 2:
        store.flush()
    print(n, flush=True)
"""


def test_sigkill_while_writing_leaves_a_cache_the_next_writer_continues(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "s"
    with Storage(store, policy=POLICY) as s:  # start above flat_max: IVF-PQ with a cache from the outset
        s.add_vectors(clustered(1_500, seed=1), modality="image", paths=paths(0, 1_500))
    rng = random.Random(5)
    start = 10_000
    for attempt in range(6):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(store), str(start)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1], text=True)
        seen = 0
        deadline = time.monotonic() + 60
        wanted = rng.randint(1, 6)
        while seen < wanted and p.poll() is None and time.monotonic() < deadline:
            if p.stdout.readline():
                seen += 1
        time.sleep(rng.uniform(0.0, 0.3))  # anywhere in the next batch: a write, an append, a save
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        err = p.stderr.read()
        assert "Traceback" not in err, err
        assert seen == wanted and p.returncode == -signal.SIGKILL  # killed inside its write loop
        start += 200_000
        with Storage(store, policy=POLICY) as s:  # the next writer: loads or rebuilds, then writes on
            s.add_vectors(clustered(50, seed=attempt), modality="image", paths=paths(90_000 + attempt * 50, 50))
            s.flush()
            assert s.check() == []
            cache_matches_database(s, store)
            queries = clustered(10, seed=attempt + 100)
            assert s.search("image", queries, 10) == without_cache(s, queries)
    assert len(cache_files(store)) == 2


def data_file(directory: Path) -> Path:
    return directory / "index" / json.loads((directory / "index" / "image.json").read_text())["cache"]["data"]


def same_hits(got: list, truth: list) -> None:
    """Same ids in the same order, scores equal up to float rounding (matmul shapes differ)."""
    assert [[i for i, _ in g] for g in got] == [[i for i, _ in t] for t in truth]
    assert np.allclose([[s for _, s in g] for g in got], [[s for _, s in t] for t in truth], atol=1e-6)


def test_one_flipped_byte_anywhere_in_the_cache_is_found_and_repaired(store, tmp_path):
    store.close()
    data = data_file(tmp_path)
    raw = bytearray(data.read_bytes())
    row = 2_345  # any row: doctor compares every one, not a sample
    raw[row * 128 + 1] ^= 0x40  # the sign/exponent byte of the row's first float16
    data.write_bytes(bytes(raw))
    with Storage(tmp_path, read_only=True, policy=POLICY) as s:
        (problem,) = s.check()
        assert f"{data}: 1 of {N} vectors differ from the database" in problem and "doctor --repair" in problem
    with Storage(tmp_path, policy=POLICY) as s:
        s.rebuild_indexes()  # what `xsearch doctor --repair` does when check() reports a problem
        assert s.check() == [] and not data.exists()
        cache_matches_database(s, tmp_path)


@pytest.mark.parametrize("fill", [0x00, 0xFF], ids=["zeroed", "0xff-filled"])
def test_damaged_cache_rows_are_re_ranked_from_the_database_with_one_warning(store, tmp_path, caplog, fill):
    queries = clustered(40, seed=16)
    truth = without_cache(store, queries)
    store.close()
    data = data_file(tmp_path)
    size = data.stat().st_size
    data.write_bytes(bytes([fill]) * (size // 2) + data.read_bytes()[size // 2:])  # the first half of the rows
    with Storage(tmp_path, read_only=True, policy=POLICY) as s:
        with caplog.at_level("WARNING", logger="xsearch.storage"):
            got = s.search("image", queries, 10)  # candidates from both halves in one search
            again = s.search("image", queries[:5], 10)
        same_hits(got, truth)
        same_hits(again, truth[:5])
        json.dumps([[s for _, s in r] for r in got], allow_nan=False)  # `query --json` stays valid JSON
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert str(data) in warning and "xsearch doctor --repair" in warning
        assert any("differ from the database" in p for p in s.check())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # decoding the zeroed database row
def test_a_vector_damaged_in_the_database_too_never_gives_a_nan_score(store, tmp_path):
    all_ids = store.ids_matching(modality="image")
    victim = int(all_ids[7])
    query = store.get_vectors([victim])  # its own vector: it is sure to be a candidate
    store.close()
    con = sqlite3.connect(tmp_path / "xsearch.db")
    with con:
        con.execute("UPDATE vectors SET data = zeroblob(128) WHERE item_id = ?", (victim,))
    con.close()
    mi = ModalityIndex.load(tmp_path / "index", "image")
    row = int(mi.cache._state[1][np.searchsorted(mi.cache.ids, victim)])
    del mi
    with open(data_file(tmp_path), "r+b") as fh:
        fh.seek(row * 128)
        fh.write(bytes(128))
    with Storage(tmp_path, read_only=True, policy=POLICY) as s:
        (everything,) = s.search("image", query, N)  # k = N: every candidate comes back, the victim too
        few = all_ids[5:10]
        (exact,) = s.search("image", query, 10, ids=few)  # a few ids: scored exactly from the database
    for hits in (everything, exact):
        assert victim not in [i for i, _ in hits] and all(np.isfinite(score) for _, score in hits)
    assert sorted(i for i, _ in exact) == sorted(set(few.tolist()) - {victim})
    assert len(everything) > 100
