"""Storage: the metadata database (truth) and the indexes derived from it, on real SQLite files."""
from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from xsearch.errors import StoreError, UsageError
from xsearch.storage import SCHEMA_VERSION, IndexPolicy, ItemRecord, Storage
from xsearch.storage import migrations
from xsearch.storage import vectors as vec

DIM = 32


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rec(path: str, vector: np.ndarray | None = None, *, modality: str = "image", error: str | None = None,
        root: str | None = "/photos", **kw) -> ItemRecord:
    return ItemRecord(path=path, modality=modality, size=kw.pop("size", 100), mtime_ns=kw.pop("mtime_ns", 1),
                      content_hash=kw.pop("content_hash", None), facts=kw.pop("facts", {}), model="imagebind_huge",
                      root=root, vector=vector, error=error)


def ids_of(results: list[tuple[int, float]]) -> list[int]:
    return [i for i, _ in results]


def test_put_get_replace_move_remove(tmp_path):
    x = unit(4)
    with Storage(tmp_path) as s:
        ids = s.put([rec("/photos/a.jpg", x[0], content_hash="h1", facts={"width": 640, "height": 480}),
                     rec("/photos/b.jpg", x[1], content_hash="h2"),
                     rec("/photos/c.wav", x[2], modality="audio", facts={"duration": 3.2})])
        assert len(set(ids)) == 3
        a = s.item_by_path("/photos/a.jpg")
        assert (a.id, a.modality, a.status, a.error, a.facts, a.model, a.root) == (
            ids[0], "image", "ok", None, {"width": 640, "height": 480}, "imagebind_huge", "/photos")
        assert [i.path for i in s.get_items([ids[2], ids[0], 999])] == ["/photos/c.wav", "/photos/a.jpg"]
        assert [i.id for i in s.items_by_hash("h2")] == [ids[1]] and s.items_by_hash("h2", "audio") == []
        assert np.allclose(s.get_vectors([ids[1], ids[0]]), x[[1, 0]], atol=1e-3)

        # replacing by path keeps the id and swaps the vector in the index
        again = s.put([rec("/photos/a.jpg", x[3], size=222, content_hash="h9")])
        assert again == [ids[0]]
        a = s.item_by_path("/photos/a.jpg")
        assert a.size == 222 and a.content_hash == "h9" and s.items_by_hash("h1") == []
        assert ids_of(s.search("image", x[3], 1)[0]) == [ids[0]]
        assert all(score < 0.9 for _, score in s.search("image", x[0], 2)[0])  # the old vector is gone

        # a rename keeps the id and the vector; an item already at the target is replaced
        s.move(ids[0], "/photos/b.jpg", size=5, mtime_ns=6, root="/photos")
        moved = s.item_by_path("/photos/b.jpg")
        assert moved.id == ids[0] and (moved.size, moved.mtime_ns) == (5, 6) and s.item_by_path("/photos/a.jpg") is None
        assert s.get_items([ids[1]]) == [] and s.search("image", x[3], 5)[0][0][0] == ids[0]
        assert ids[1] not in ids_of(s.search("image", x[1], 5)[0])
        with pytest.raises(StoreError, match="no item with id"):
            s.move(12345, "/x", size=1, mtime_ns=1, root=None)

        assert [i.path for i in s.items(prefix="/photos/", modality="audio", status="ok")] == ["/photos/c.wav"]
        with pytest.raises(UsageError, match="16 dimensions"):
            s.search("image", unit(1, dim=16), 1)
        with pytest.raises(UsageError, match="not a valid name"):
            s.put([rec("/photos/z.jpg", x[0], modality="../etc")])
        assert s.search("thermal", x[0], 3) == [[]]  # nothing of that modality yet

        assert s.remove([ids[0], 777]) == 1
        assert s.search("image", x[3], 5) == [[]] and s.counts() == {"audio": 1}
        assert s.check() == []


def test_failed_items_and_errors(tmp_path):
    x = unit(2)
    with Storage(tmp_path) as s:
        good, bad = s.put([rec("/p/ok.jpg", x[0]), rec("/p/bad.mp4", modality="video", error="cannot decode: moov atom")])
        (err,) = s.errors()
        assert (err.id, err.status, err.error, err.modality) == (bad, "failed", "cannot decode: moov atom", "video")
        assert s.counts() == {"image": 1}
        # a file that used to embed and now fails loses its vector everywhere
        assert s.put([rec("/p/ok.jpg", error="truncated file")]) == [good]
        assert s.item_by_path("/p/ok.jpg").status == "failed"
        assert s.search("image", x[0], 3) == [[]] and s.counts() == {}
        with pytest.raises(StoreError, match="no stored vector"):
            s.get_vectors([good])
        # and a fixed file comes back
        s.put([rec("/p/bad.mp4", x[1], modality="video")])
        assert [e.path for e in s.errors()] == ["/p/ok.jpg"] and ids_of(s.search("video", x[1], 1)[0]) == [bad]
        with pytest.raises(ValueError, match="vector or an error"):
            s.put([rec("/p/nothing.jpg")])


def test_roots_with_modality_override(tmp_path):
    x = unit(3)
    with Storage(tmp_path) as s:
        s.add_root("/photos")
        s.add_root("/scans", modality="depth")
        assert s.roots() == {"/photos": None, "/scans": "depth"}
        s.add_root("/photos", modality="image")  # the override is remembered per folder, and can change
        assert s.roots() == {"/photos": "image", "/scans": "depth"}
        s.put([rec("/photos/a.jpg", x[0]), rec("/scans/d.png", x[1], modality="depth", root="/scans"),
               rec("/scans/e.png", x[2], modality="depth", root="/scans")])
        assert [i.path for i in s.items(root="/scans")] == ["/scans/d.png", "/scans/e.png"]
        assert s.remove_root("/scans") == 2
        assert s.roots() == {"/photos": "image"} and s.counts() == {"image": 1}
        assert s.search("depth", x[1], 2) == [[]]


def test_ids_matching_prefix_glob_and_counts(tmp_path):
    paths = ["/a/x/1.jpg", "/a/x/2.JPG", "/a/y/3.png", "/A/x/4.jpg", "/b/5.jpg", "/a/x_1/6.jpg", "/a/x%/7.jpg"]
    with Storage(tmp_path) as s:
        ids = dict(zip(paths, s.add_vectors(unit(len(paths)), modality="image", paths=paths)))
        s.put([rec("/a/x/bad.jpg", error="broken"), rec("/a/x/s.wav", unit(1, 5)[0], modality="audio")])
        assert s.counts() == {"audio": 1, "image": 7}

        def match(**kw) -> set[str]:
            found = s.ids_matching(**kw)
            assert found.dtype == np.int64
            return {p for p, i in ids.items() if i in set(found.tolist())}

        assert match(prefix="/a/x/") == {"/a/x/1.jpg", "/a/x/2.JPG"}  # case-sensitive, no failed/other-modality
        assert match(prefix="/a/x/", modality="audio") == set() and len(s.ids_matching(prefix="/a/x/")) == 3
        assert match(glob="*.jpg") == {"/a/x/1.jpg", "/A/x/4.jpg", "/b/5.jpg", "/a/x_1/6.jpg", "/a/x%/7.jpg"}
        assert match(glob="/a/*/?.jpg") == {"/a/x/1.jpg", "/a/x_1/6.jpg", "/a/x%/7.jpg"}
        assert match(glob="/a/x_*/*") == {"/a/x_1/6.jpg"}  # '_' and '%' are not wildcards
        assert match(glob="[12].*", prefix="/a/") == {"/a/x/1.jpg", "/a/x/2.JPG"}
        assert match(prefix="/a/x%") == {"/a/x%/7.jpg"}


def test_float16_roundtrip_keeps_cosine(tmp_path):
    x = unit(200, seed=3, dim=1024)
    assert vec.roundtrip_cosine(x, "float16").min() >= 0.9999
    assert vec.choose_dtype(x) == "float16"
    with Storage(tmp_path) as s:
        ids = s.add_vectors(x, modality="image", paths=[f"/v/{i}" for i in range(200)])
        assert s.get_meta("vector_dtype") == "float16" and s.get_meta("dim") == "1024"
        back = s.get_vectors(ids)
        assert back.dtype == np.float32 and back.shape == (200, 1024)
        assert np.einsum("ij,ij->i", back, x).min() >= 0.9999
        raw = sqlite3.connect(tmp_path / "xsearch.db").execute("SELECT length(data) FROM vectors LIMIT 1").fetchone()
        assert raw == (2048,)  # 2 bytes per value, no pickle or other framing


def test_float16_decoding_is_bit_identical_to_numpy_for_every_finite_value():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]  # zeros of both signs and subnormals included
    ours = vec._f16_to_f32(finite)
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_dim_mismatch_is_a_clear_store_error(tmp_path):
    with Storage(tmp_path) as s:
        s.set_meta("model", "imagebind_huge")
        s.add_vectors(unit(2), modality="image", paths=["/a", "/b"])
        with pytest.raises(StoreError, match=r"16 dimensions.*32-dimensional.*imagebind_huge"):
            s.add_vectors(unit(1, dim=16), modality="image", paths=["/c"])
        assert s.item_by_path("/c") is None  # the whole put was rolled back
        with pytest.raises(StoreError, match="different dimensions"):
            s.put([rec("/d", unit(1)[0]), rec("/e", unit(1, dim=16)[0])])


def test_reopen_keeps_everything(tmp_path):
    x = unit(50, seed=4)
    with Storage(tmp_path) as s:
        s.set_meta("model", "imagebind_huge")
        s.add_root("/m", modality="audio")
        ids = s.add_vectors(x, modality="audio", paths=[f"/m/{i}.wav" for i in range(50)])
        before = s.search("audio", x[:3], 5)
    assert (tmp_path / "index" / "audio.faiss").exists() and (tmp_path / "index" / "audio.json").exists()
    with Storage(tmp_path, create=False) as s:
        assert s.get_meta("model") == "imagebind_huge" and s.roots() == {"/m": "audio"}
        assert sorted(i.id for i in s.items()) == sorted(ids)
        assert s.search("audio", x[:3], 5) == before
        assert s.index_info()["audio"]["flushed"]  # loaded from its file, not rebuilt
        assert s.get_meta(migrations.SCHEMA_VERSION_KEY) == str(SCHEMA_VERSION)


def test_unflushed_or_foreign_writes_are_rebuilt_from_the_database(tmp_path):
    x = unit(30, seed=6)
    first = Storage(tmp_path)
    ids = first.add_vectors(x[:10], modality="image", paths=[f"/i/{i}" for i in range(10)])
    first.flush()
    ids += first.add_vectors(x[10:20], modality="image", paths=[f"/i/{i}" for i in range(10, 20)])  # not flushed
    second = Storage(tmp_path)  # another writer, e.g. another process: its file is stale, so it rebuilds
    assert ids_of(second.search("image", x[15], 1)[0]) == [ids[15]]
    (late,) = second.add_vectors(x[20:21], modality="image", paths=["/i/late"])
    # the first store notices the write it did not make and rebuilds before applying its own
    (mine,) = first.add_vectors(x[21:22], modality="image", paths=["/i/mine"])
    assert ids_of(first.search("image", x[20], 1)[0]) == [late] and ids_of(first.search("image", x[21], 1)[0]) == [mine]
    second.refresh()
    assert ids_of(second.search("image", x[21], 1)[0]) == [mine]
    first.close()
    second.close()
    with Storage(tmp_path) as s:
        assert s.check() == []


@pytest.mark.parametrize("flat_max, pq_min_dim, kind",
                         [(100_000, 128, "flat"), (300, 0, "ivfpq"), (300, 128, "ivfflat")],
                         ids=["flat", "ivfpq-retrained-meanwhile", "ivfflat-retrained-meanwhile"])
def test_reader_threads_while_a_writer_adds_batches(tmp_path, flat_max, pq_min_dim, kind):
    x = unit(1_200, seed=7)
    policy = IndexPolicy(flat_max=flat_max, retrain_growth=2.0, tune_queries=50, pq_min_dim=pq_min_dim)
    store = Storage(tmp_path, policy=policy)
    first = store.add_vectors(x[:100], modality="image", paths=[f"/t/{i}" for i in range(100)])
    store.flush()
    submitted = {f"/t/{i}" for i in range(100)}  # paths handed to the writer so far
    errors: list[BaseException] = []
    done = threading.Event()
    rounds = [0, 0, 0]  # searches done by each reader: the writer waits for all of them between batches

    def writer() -> None:
        try:
            for start in range(100, 1_200, 100):
                seen = list(rounds)
                while not errors and any(r <= s0 for r, s0 in zip(rounds, seen)):
                    threading.Event().wait(0.001)
                paths = [f"/t/{i}" for i in range(start, start + 100)]
                submitted.update(paths)
                store.add_vectors(x[start: start + 100], modality="image", paths=paths)
                if start == 600:
                    store.remove(first[:10])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def same_store_reader(slot: int) -> None:
        try:
            while not done.is_set():
                res = store.search("image", x[50:60], 5)
                for q, r in zip(range(50, 60), res):
                    scores = [sc for _, sc in r]
                    assert r[0] == (first[q], pytest.approx(1.0, abs=1e-5)) and scores == sorted(scores, reverse=True)
                found = store.get_items([i for i, _ in res[0]])  # skips the few removed meanwhile
                assert len(found) >= 4 and {item.path for item in found} <= submitted
                rounds[slot] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def other_connection_reader(slot: int) -> None:
        try:
            with Storage(tmp_path, read_only=True, policy=policy) as other:
                last = 0
                while not done.is_set():
                    n = other.counts().get("image", 0)
                    assert n >= 100 and n % 100 in (0, 90)  # a consistent snapshot, never half a batch
                    assert n >= last - 10
                    last = n
                    other.refresh()  # picks up the writer's changes (rebuilt from the database)
                    assert other.search("image", x[55], 1)[0][0][0] == first[55]
                    rounds[slot] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=same_store_reader, args=(0,)),
               threading.Thread(target=same_store_reader, args=(1,)),
               threading.Thread(target=other_connection_reader, args=(2,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert min(rounds) >= 11  # every reader ran between every pair of batches
    assert store.counts() == {"image": 1_190} and store.check() == []
    assert store.index_info()["image"]["type"] == kind
    store.close()


@pytest.mark.parametrize("version", [1, SCHEMA_VERSION - 1])
def test_migrates_a_store_from_an_older_schema_version(tmp_path, version):
    assert SCHEMA_VERSION >= 6
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'xsearch.db'}")
    with engine.begin() as conn:  # build a store as that schema version left it
        # version 1: the rows below must gain the columns of every later step (root, indexed_at, ...)
        migrations.migrate(conn, where="test", read_only=False, upto=version)
        for path, modality, status in (("/old.jpg", "image", "ok"), ("/o.wav", "audio", "ok"),
                                       ("/o2.wav", "audio", "ok"), ("/bad.jpg", "image", "failed")):
            conn.execute(sa.text("INSERT INTO items (path, modality, size, mtime_ns, content_hash, facts, status) "
                                 "VALUES (:p, :m, 10, 20, 'h', :facts, :s)"),
                         {"p": path, "m": modality, "s": status, "facts": json.dumps({"w": 1})})
    engine.dispose()
    with pytest.raises(StoreError, match="needs migrating"):
        Storage(tmp_path, read_only=True)
    with Storage(tmp_path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        old = s.item_by_path("/old.jpg")
        assert old.facts == {"w": 1} and old.root is None
        if version < 2:
            assert old.indexed_at is not None
        assert s.counts() == {"audio": 2, "image": 1}  # v6: the per-modality counters start from the items
        s.add_root("/new")
        assert s.roots() == {"/new": None}
    with sqlite3.connect(tmp_path / "xsearch.db") as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this xsearch"):
        Storage(tmp_path)


def test_a_version_2_store_gains_the_reembedding_table_and_keeps_its_vectors(tmp_path):
    with Storage(tmp_path) as s:
        s.put([rec("/a", unit(1, seed=3)[0])])
    with sqlite3.connect(tmp_path / "xsearch.db") as conn:  # as schema version 2 left it: no later table
        for table in ("pending_vectors", "tags", "tagged", "label_vectors", "label_sets", "segments"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE roots DROP COLUMN moments")
        conn.execute("DELETE FROM meta WHERE key LIKE 'count:%'")  # nor the counters
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with Storage(tmp_path) as s:
        assert int(s.get_meta("schema_version")) == SCHEMA_VERSION >= 3
        assert s.reembed_target() is None and s.reembed_todo() == s.items() and s.counts() == {"image": 1}
        np.testing.assert_allclose(s.get_vectors([s.item_by_path("/a").id])[0], unit(1, seed=3)[0], atol=1e-3)


def test_an_item_changed_during_a_reembedding_is_embedded_again(tmp_path):
    with Storage(tmp_path) as s:
        x = unit(3, seed=4)
        ids = s.put([rec("/a", x[0]), rec("/b", x[1])])
        s.start_reembed("new", "new")
        s.put_pending(ids, unit(2, seed=5, dim=8), [None, None])
        assert s.reembed_todo() == [] and s.reembed_done() == 2
        s.put([rec("/a", x[2])])  # re-indexed (the file changed): its pending vector is of the old content
        assert [it.path for it in s.reembed_todo()] == ["/a"] and s.reembed_done() == 1
        s.remove([ids[1]])
        assert s.reembed_done() == 0
        assert s.start_reembed("new", "new") is True and s.start_reembed("other", "other") is False


def test_check_finds_broken_index_files_and_rebuild_fixes_them(tmp_path):
    x = unit(40, seed=8)
    with Storage(tmp_path) as s:
        ids = s.add_vectors(x[:20], modality="image", paths=[f"/c/{i}" for i in range(20)])
        s.add_vectors(x[20:], modality="audio", paths=[f"/c/{i}.wav" for i in range(20, 40)])
        assert s.check() == []
    image, audio = tmp_path / "index" / "image.faiss", tmp_path / "index" / "audio.faiss"
    image.unlink()
    audio.write_bytes(audio.read_bytes()[:100])  # half-written
    with Storage(tmp_path) as s:
        problems = s.check()
        assert len(problems) == 2
        assert any("image.faiss: missing" in p for p in problems)
        assert any("audio.faiss" in p and "half-written" in p for p in problems)
        s.rebuild_indexes()
        assert s.check() == [] and image.exists()
        assert ids_of(s.search("image", x[3], 1)[0]) == [ids[3]]
    # a damaged file is also rebuilt transparently on first use
    image.write_bytes(b"\0" * image.stat().st_size)
    with Storage(tmp_path, read_only=True) as s:
        assert any("image.faiss" in p for p in s.check())
        assert ids_of(s.search("image", x[4], 1)[0]) == [ids[4]]


def test_a_modality_whose_last_item_left_is_consistent(tmp_path):
    x = unit(6, seed=9)
    with Storage(tmp_path) as s:
        s.add_vectors(x[:3], modality="image", paths=[f"/c/{i}.jpg" for i in range(3)])
        audio = s.add_vectors(x[3:], modality="audio", paths=[f"/c/{i}.wav" for i in range(3)])
        s.remove(audio)
        s.flush()
        assert s.check() == [] and s.stale_index_files() == []
        s.rebuild_indexes()
        assert s.check() == [] and s.stale_index_files() == []
        assert s.search("audio", x[3], 5)[0] == []
    with Storage(tmp_path) as s:
        assert s.check() == [] and s.stale_index_files() == []


def test_read_only_refuses_writes(tmp_path):
    with pytest.raises(StoreError, match="no xsearch store"):
        Storage(tmp_path / "missing", read_only=True)
    x = unit(3)
    with Storage(tmp_path) as s:
        ids = s.add_vectors(x, modality="image", paths=["/r/1", "/r/2", "/r/3"])
    with Storage(tmp_path, read_only=True) as s:
        assert ids_of(s.search("image", x[1], 1)[0]) == [ids[1]]
        for write in (lambda: s.put([rec("/r/4", x[0])]), lambda: s.remove(ids), lambda: s.set_meta("a", "b"),
                      lambda: s.add_root("/r"), lambda: s.move(ids[0], "/r/9", size=1, mtime_ns=1, root=None),
                      lambda: s.add_vectors(x, modality="image", paths=["/a", "/b", "/c"]), s.flush):
            with pytest.raises(StoreError, match="read-only"):
                write()
        assert s.counts() == {"image": 3}


def test_a_directory_where_an_index_file_belongs_is_reported_and_replaced(tmp_path):
    x = unit(20, seed=10)
    with Storage(tmp_path) as s:
        ids = s.add_vectors(x, modality="image", paths=[f"/d/{i}" for i in range(20)])
    image = tmp_path / "index" / "image.faiss"
    image.unlink()
    image.mkdir()  # empty: nobody's data, so repair may remove it
    with Storage(tmp_path, read_only=True) as s:  # query, status and doctor work meanwhile
        assert ids_of(s.search("image", x[3], 1)[0]) == [ids[3]]
        assert s.index_info()["image"]["ntotal"] == 20
        assert any(f"{image}: not a file" in p and "doctor --repair" in p for p in s.check())
    with Storage(tmp_path) as s:
        s.rebuild_indexes()
        assert s.check() == [] and image.is_file()
    image.unlink()
    image.mkdir()
    (image / "notes.txt").write_text("someone's")  # not empty: never deleted
    with Storage(tmp_path) as s:
        with pytest.raises(StoreError, match=rf"{image}: a directory .* move it away"):
            s.rebuild_indexes()
        assert ids_of(s.search("image", x[4], 1)[0]) == [ids[4]]
        (image / "notes.txt").unlink()
        image.rmdir()  # moved away: the next save writes the index
    with Storage(tmp_path, read_only=True) as s:
        assert s.check() == []


def test_a_file_where_the_index_folder_belongs_is_reported_with_what_to_do(tmp_path):
    x = unit(20, seed=11)
    with Storage(tmp_path) as s:
        ids = s.add_vectors(x, modality="image", paths=[f"/d/{i}" for i in range(20)])
    index = tmp_path / "index"
    for p in index.iterdir():
        p.unlink()
    index.rmdir()
    index.write_text("not a folder")
    with Storage(tmp_path, read_only=True) as s:
        assert ids_of(s.search("image", x[5], 1)[0]) == [ids[5]]
        (problem,) = s.check()  # one problem, not one "missing" per modality
        assert problem.startswith(f"{index}: a file sits where xsearch keeps its index folder; move it away")
    s = Storage(tmp_path)
    with pytest.raises(StoreError, match=rf"{index}: a file sits where xsearch keeps its index folder; move it away"):
        s.rebuild_indexes()
    assert index.read_text() == "not a folder"
    index.unlink()
    s.rebuild_indexes()
    s.close()
    with Storage(tmp_path, read_only=True) as s:
        assert s.check() == []


def test_a_reader_says_when_nobody_will_save_its_rebuild(tmp_path, caplog):
    from xsearch.storage.lock import writer_lock

    policy = IndexPolicy(flat_max=200, tune_queries=50)
    x = unit(600, seed=11)
    with Storage(tmp_path, policy=policy) as s:
        s.add_vectors(x, modality="image", paths=[f"/c/{i}.jpg" for i in range(600)])
    (tmp_path / "index" / "image.faiss").unlink()  # as a writer killed between its commit and its save
    with Storage(tmp_path, read_only=True, policy=policy) as s, writer_lock(tmp_path):
        s.search("image", x[0], 1)
    assert not [r for r in caplog.records if "no index run is writing" in r.message]  # the writer will save it
    with Storage(tmp_path, read_only=True, policy=policy) as s:
        assert ids_of(s.search("image", x[0], 1)[0]) == [1]
    assert [r for r in caplog.records if "no index run is writing" in r.message and "doctor --repair" in r.message]


def test_a_replaced_store_never_gets_the_old_ones_indexes(tmp_path):
    import shutil

    x = unit(8, seed=12)
    old = Storage(tmp_path / "s")
    old.add_vectors(x[:4], modality="image", paths=[f"/old/{i}.jpg" for i in range(4)])
    old.flush()
    old.add_vectors(x[4:6], modality="image", paths=["/old/4.jpg", "/old/5.jpg"])  # dirty, unsaved
    shutil.rmtree(tmp_path / "s")  # the store is deleted and made again at the same path
    with Storage(tmp_path / "s") as new:
        new.add_vectors(x[6:], modality="image", paths=["/new/6.jpg", "/new/7.jpg"])
    before = (tmp_path / "s" / "index" / "image.faiss").read_bytes()
    old.close()  # must not write its 6-vector index over the new store's
    assert (tmp_path / "s" / "index" / "image.faiss").read_bytes() == before
    with Storage(tmp_path / "s") as new:
        assert new.check() == [] and len(new.items()) == 2


def test_damaged_vectors_finds_every_row_that_is_not_a_unit_vector(tmp_path):
    import warnings

    with Storage(tmp_path / "s") as s:
        ids = s.put([rec(f"/r/{i}", v) for i, v in enumerate(unit(6, seed=3))])
        assert s.damaged_vectors() == []
        row = DIM * np.dtype(vec.DTYPES[s.vector_dtype]).itemsize
    con = sqlite3.connect(tmp_path / "s" / "xsearch.db")
    damage = {ids[0]: b"\x00" * row,  # zeroed
              ids[2]: b"\xff" * row,  # NaN bits
              ids[3]: b"\x7b" * row,  # large values: far from unit length
              ids[5]: b"\x01" * (row - 2)}  # a row cut short
    for i, blob in damage.items():
        con.execute("UPDATE vectors SET data = ? WHERE item_id = ?", (blob, i))
    con.commit()
    con.close()
    with Storage(tmp_path / "s", read_only=True) as s, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(it.id for it in s.damaged_vectors()) == sorted(damage)
