"""Queries as users run them (Python API, HTTP): nothing per query grows with the store except the index
search, and the folder/glob filters return what a brute-force filter over every item returns."""
from __future__ import annotations

import fnmatch
import os
import posixpath
import sqlite3
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

import xsearch
from xsearch.errors import UsageError
from xsearch.pathnames import store_path, stored_abspath
from xsearch.query import QuerySpec, as_inputs, filters
from xsearch.serve import BackgroundServer
from xsearch.storage import IndexPolicy, Storage
from xsearch.storage import tags as stored_tags
from xsearch.storage.store import _successor

DIM = 32
FIXED = 24  # items in /data/fixed/ (the folder filtered on), the same in every store size


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def layout(n: int) -> tuple[list[str], list[str]]:
    """(image paths, audio paths) for a store of n items: FIXED images in /data/fixed/, 4 sounds in
    /data/tiny/, the rest in /data/bulk/ (100 images a folder, names alternately .jpg and .png)."""
    images = [f"/data/fixed/{i:03d}.jpg" for i in range(FIXED)]
    images += [f"/data/bulk/{i // 100:03d}/{i:06d}.{'jpg' if i % 2 else 'png'}" for i in range(n - FIXED - n // 10)]
    audio = [f"/data/tiny/{i}.wav" for i in range(4)] + [f"/data/bulk/sound/{i:06d}.wav" for i in range(n // 10 - 4)]
    return images, audio


def make_store(path: Path, n: int, dim: int = DIM, policy: IndexPolicy | None = None) -> xsearch.Store:
    """The layout's items, tagged: "rare" on the FIXED images and on /data/tiny/0.wav, "even" on every
    other item (by id), "bulk" on every item in /data/bulk (tags written directly: no model needed)."""
    images, audio = layout(n)
    store = xsearch.open(path)
    if policy is not None:
        store.storage.policy = policy
    store.add_vectors(unit(len(images), 1, dim), modality="image", paths=images)
    store.add_vectors(unit(len(audio), 2, dim), modality="audio", paths=audio)
    items = [it for m in ("image", "audio") for it in store.storage.items(modality=m)]
    tags = [[(label, 0.9) for label, on in (("rare", it.path.startswith("/data/fixed/") or it.path == "/data/tiny/0.wav"),
                                            ("even", it.id % 2 == 0), ("bulk", it.path.startswith("/data/bulk/")))
             if on] for it in items]
    stored_tags.save_label_set(store.storage, "test", ["rare", "even", "bulk"], {}, {})
    stored_tags._write(store.storage, "test", [(it.id, it.indexed_at) for it in items], tags)
    return store


def count_steps(storage: Storage, fn) -> tuple[int, list[str]]:
    """(SQLite virtual-machine instructions, SELECT statements) of a second call of ``fn`` (the first warms:
    indexes loaded). Both are seen by the driver, on every connection of the store's pool, whatever thread
    uses it (the HTTP server's too) and whether or not SQLAlchemy issues the statement."""
    steps, statements, on = [0], [], [False]

    def handler() -> int:
        steps[0] += on[0]
        return 0

    def trace(sql: str) -> None:
        if on[0] and sql.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append(sql)

    def connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.set_progress_handler(handler, 1)
        dbapi_conn.set_trace_callback(trace)  # statements with their parameters filled in

    engine = storage.engine
    engine.dispose()  # pooled connections are made again, through "connect"
    sa.event.listen(engine, "connect", connect)
    try:
        fn()
        on[0] = True
        fn()
        on[0] = False
    finally:
        sa.event.remove(engine, "connect", connect)
        engine.dispose()
    return steps[0], statements


QUERIES = {
    "vector, one target": lambda s, q: s.search(vector=q, target="image", k=10),
    "vector, all targets": lambda s, q: s.search(vector=q, k=10),
    "like by path": lambda s, q: s.search(like="/data/fixed/003.jpg", k=10),
    "like by id": lambda s, q: s.search(like=s.storage.item_by_path("/data/fixed/003.jpg").id, target="image"),
    "folder": lambda s, q: s.search(vector=q, folder="/data/fixed", k=10),
    # A glob on names is tested on candidates: bounded work where candidates pass often enough (here every
    # other image). A target modality with few matches is the worst case (docs/storage.md): not bounded.
    "glob on names (candidates tested)": lambda s, q: s.search(vector=q, glob="*.jpg", target="image", k=10),
    "glob with a folder part (range)": lambda s, q: s.search(vector=q, glob="/data/fixed/01*.jpg", k=5),
    "folder + glob + min_score": lambda s, q: s.search(vector=q, folder="/data/fixed", glob="*[0-4].jpg",
                                                      min_score=-1.0, k=5),
    "tag carried by the same few items (selection)": lambda s, q: s.search(vector=q, tags="rare", k=10),
    "tag carried by half the items (candidates tested)": lambda s, q: s.search(vector=q, tags="even", k=10),
}


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    small, large = make_store(root / "small", 300), make_store(root / "large", 6_000)  # 20x the items
    yield small, large
    small.close()
    large.close()


@pytest.mark.parametrize("name", list(QUERIES))
def test_no_statement_of_a_query_grows_with_the_number_of_items(two_sizes, name):
    q = unit(1, 99)[0]
    counted = []
    for store in two_sizes:
        steps, statements = count_steps(store.storage, lambda: QUERIES[name](store, q))
        assert steps > 0, "the progress handler saw nothing: the test measures nothing"
        assert statements, "no statement seen: the test measures nothing"
        for sql in statements:  # and no statement's plan reads a whole table or index of items
            plan = " | ".join(r[-1] for r in _explain(store, sql))
            assert "SCAN items" not in plan and "SCAN vectors" not in plan, (sql, plan)
        counted.append(steps)
    small, large = counted
    # 20x the items: a statement that visits every item (or a share of them) costs thousands of steps
    # more; what may grow is the depth of a B-tree (a few steps per lookup).
    assert large <= small * 1.25 + 100, f"{name}: {small} SQLite steps at 300 items, {large} at 6,000"


def _explain(store: xsearch.Store, statement: str) -> list[tuple]:
    con = sqlite3.connect(store.storage.directory / "xsearch.db")
    try:
        return con.execute("EXPLAIN QUERY PLAN " + statement).fetchall()
    finally:
        con.close()


def test_the_step_count_notices_a_scan(two_sizes):
    """The measure itself: Storage.counts() as it was (a GROUP BY over every item) is caught."""
    def scan(store):
        with store.storage.engine.connect() as conn:
            conn.exec_driver_sql("SELECT modality, count(*) FROM items WHERE status = 'ok' GROUP BY modality").all()
    small, large = (count_steps(s.storage, lambda s=s: scan(s))[0] for s in two_sizes)
    assert large > small * 1.25 + 100


def test_http_like_query_does_not_grow_with_the_store(two_sizes):
    counted = []
    for store in two_sizes:
        item = store.storage.item_by_path("/data/fixed/003.jpg").id
        with BackgroundServer(store, log_level="error") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            def ask() -> None:
                r = c.post("/api/search", json={"like": item, "k": 10, "filters": {"folder": "/data/fixed"}})
                assert r.status_code == 200 and len(r.json()["results"]) == 10, r.text
            counted.append(count_steps(store.storage, ask)[0])
    small, large = counted
    assert large <= small * 1.25 + 100, counted


# --------------------------------------------------------------------------- filters vs brute force

def brute_force(storage: Storage, q: np.ndarray, k: int, keep, modalities=("image", "audio"),
                min_score: float | None = None, exclude: set[int] = frozenset()) -> list[tuple[str, float]]:
    items = [it for m in modalities for it in storage.items(modality=m, status="ok")]
    items = [it for it in items if keep(it.path) and it.id not in exclude]
    if not items:
        return []
    scores = storage.get_vectors([it.id for it in items]) @ q
    ranked = sorted(zip(scores.tolist(), [it.path for it in items]), key=lambda t: -t[0])
    return [(p, s) for s, p in ranked if min_score is None or s >= min_score][:k]


def glob_test(pattern: str):
    whole = "/" in pattern
    return lambda p: fnmatch.fnmatchcase(p if whole else posixpath.basename(p), pattern)


def tag_test(store: xsearch.Store, kwargs: dict):
    labels = [kwargs["tags"]] if isinstance(kwargs["tags"], str) else kwargs["tags"]
    items = [it for m in ("image", "audio") for it in store.storage.items(modality=m)]
    tags = store.tags_of([it.id for it in items])
    carrying = {it.path for it in items if set(labels) <= {t["label"] for t in tags.get(it.id, [])}}
    inside = under(kwargs["folder"]) if "folder" in kwargs else (lambda p: True)
    return lambda p: p in carrying and inside(p)


def under(folder: str):
    prefix = os.path.join(stored_abspath(folder), "")
    return lambda p: p.startswith(prefix)


CASES = {  # name: (search keywords, brute-force test of a path), k=10
    "folder, 100 items": ({"folder": "/data/bulk/002"}, under("/data/bulk/002")),
    "folder, fewer than k": ({"folder": "/data/tiny"}, under("/data/tiny")),
    "folder and glob, fewer than k": ({"folder": "/data/fixed", "glob": "00[0-5].jpg"},
                                      lambda p: under("/data/fixed")(p) and glob_test("00[0-5].jpg")(p)),
    "folder, many": ({"folder": "/data/bulk"}, under("/data/bulk")),
    "folder, none": ({"folder": tempfile.gettempdir()}, under(tempfile.gettempdir())),  # a folder, nothing indexed
    "glob on names, many": ({"glob": "*.png"}, glob_test("*.png")),
    "glob on names, fewer than k": ({"glob": "00001?.jpg"}, glob_test("00001?.jpg")),
    "glob on names, none": ({"glob": "*.gif"}, glob_test("*.gif")),
    "glob with folders, few": ({"glob": "/data/fixed/01?.jpg"}, glob_test("/data/fixed/01?.jpg")),
    "glob with folders, many": ({"glob": "/data/bulk/*/*5.jpg"}, glob_test("/data/bulk/*/*5.jpg")),
    "glob with a wildcard first, many": ({"glob": "*/0[0-2]?/*.jpg"}, glob_test("*/0[0-2]?/*.jpg")),
    "glob and folder, many": ({"glob": "*.jpg", "folder": "/data/bulk"},
                              lambda p: under("/data/bulk")(p) and p.endswith(".jpg")),
    "min_score with a glob": ({"glob": "*.png", "min_score": 0.3}, glob_test("*.png")),
    "tag, fewer than k": ({"tags": ["rare", "even"]}, None),
    "tag, many": ({"tags": "even"}, None),
    "tags and folder, many": ({"tags": ["bulk", "even"], "folder": "/data/bulk/sound"}, None),
    "tag, none": ({"tags": ["rare", "bulk"]}, None),
}


@pytest.fixture(scope="module", params=["flat", "ivfpq"])
def filtered_store(request, tmp_path_factory):
    """5,000 items: exact (flat) indexes, or an IVF-PQ image index (128-d, built past flat_max=1000)."""
    root = tmp_path_factory.mktemp(f"filters-{request.param}")
    if request.param == "flat":
        store = make_store(root / "s", 5_000)
    else:
        store = make_store(root / "s", 5_000, dim=128, policy=IndexPolicy(flat_max=1_000))
        assert store.storage.index_info()["image"]["type"] == "ivfpq"
    yield request.param, store
    store.close()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("select_min", [filters.SELECT_MIN, 8])  # 8: every filter tests candidates
def test_filtered_results_equal_a_brute_force_filter(filtered_store, case, select_min, monkeypatch):
    kind, store = filtered_store
    monkeypatch.setattr(filters, "SELECT_MIN", select_min)
    if select_min == 8:
        monkeypatch.setattr(filters, "SELECT_SHARE", 10**9)
    kwargs, keep = CASES[case]
    if keep is None:  # a tag filter: the brute force reads every item's tags
        keep = tag_test(store, kwargs)
    for seed in range(3):
        q = unit(1, 100 + seed, store.storage.dim)[0]
        hits = store.search(vector=q, k=10, **kwargs)
        want = brute_force(store.storage, q, 10, keep, min_score=kwargs.get("min_score"))
        got = [(h.path, h.score) for h in hits]
        assert all(keep(p) for p, _ in got), case
        if kind == "flat" or len(want) < 10:
            # exact indexes, or a filter that keeps fewer than k: every passing item, in order, exactly
            assert [p for p, _ in got] == [p for p, _ in want], (case, seed)
            assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        else:  # approximate index, many pass: k of them, best first (recall is the index's, see bench/)
            assert len(got) == 10 and [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_few_passing_items_fall_back_to_a_full_selection(filtered_store, monkeypatch):
    """A glob that keeps 3 items of 5,000 ends in the last resort (its ids listed), and still finds all 3."""
    _, store = filtered_store
    calls = []
    real = filters.PathGlob.select
    monkeypatch.setattr(filters.PathGlob, "select", lambda self, s, limit: calls.append(limit) or real(self, s, limit))
    q = unit(1, 7, store.storage.dim)[0]
    hits = store.search(vector=q, glob="00000[024].png", k=3, target="image")
    want = brute_force(store.storage, q, 3, glob_test("00000[024].png"), modalities=("image",))
    assert [h.path for h in hits] == [p for p, _ in want] and len(want) == 3
    assert calls[-1] is None  # resolved in full after the candidate rounds


def test_like_is_excluded_and_filters_apply_to_it(filtered_store):
    _, store = filtered_store
    path = "/data/fixed/007.jpg"
    me = store.storage.item_by_path(path)
    q = store.storage.get_vectors([me.id])[0]
    hits = store.search(like=path, folder="/data/fixed", k=5)
    want = brute_force(store.storage, q / np.linalg.norm(q), 5, under("/data/fixed"), exclude={me.id})
    assert [h.path for h in hits] == [p for p, _ in want] and path not in [h.path for h in hits]
    assert [h.path for h in store.search(like=me.id, folder="/data/fixed", k=5)] == [h.path for h in hits]


# --------------------------------------------------------------------------- escaped names

def test_folder_filter_on_escaped_names(tmp_path):
    """Stored names escape undecodable bytes as \\xNN and double backslashes: the range over a folder's
    stored spelling holds exactly the items below it, whatever its name is made of."""
    names = {
        b"/m/caf\xe9/a.jpg": "byte", b"/m/caf\xe9/sub/b.jpg": "byte", b"/m/caf\xe9x/c.jpg": "sibling",
        b"/m/caf\\xe9/d.jpg": "backslash", b"/m/caf\xc3\xa9/e.jpg": "utf8", b"/m/caf/f.jpg": "short",
        b"/m/caf\xe9\xff/g.jpg": "two bytes", "/m/\U0010ffff/h.jpg".encode(): "max",
        "/m/\U0010ffff\U0010ffff/i.jpg".encode(): "max2",
    }
    stored = {store_path(os.fsdecode(raw)): tag for raw, tag in names.items()}
    with xsearch.open(tmp_path / "s") as store:  # names as on disk: add_vectors stores them escaped
        store.add_vectors(unit(len(stored), 3), modality="image", paths=[os.fsdecode(raw) for raw in names])
        assert {it.path for it in store.storage.items()} == set(stored)
        q = unit(1, 4)[0]
        for folder, tags in ((b"/m/caf\xe9", {"byte"}), (b"/m/caf\\xe9", {"backslash"}), ("/m/café", {"utf8"}),
                             (b"/m/caf", {"short"}), (b"/m/caf\xe9\xff", {"two bytes"}),
                             ("/m/\U0010ffff", {"max"}), ("/m", set(names.values()))):
            shown = os.fsdecode(folder)
            got = {stored[h.path] for h in store.search(vector=q, folder=shown, k=50)}
            assert got == tags, (folder, got)
        # a glob's literal part ending in U+10FFFF: the range's upper end is "/m0"
        got = {stored[h.path] for h in store.search(vector=q, glob="/m/\U0010ffff*", k=50)}
        assert got == {"max", "max2"}


def test_successor():
    assert _successor("/a/") == "/a0"
    assert _successor("a\U0010ffff") == "b" and _successor("\U0010ffff") is None and _successor("") is None
    assert _successor("\ud7ff") == "\ue000"
    for prefix in ("/a/", "x\U0010ffff", "caf\\xe9/", "é/"):
        nxt = _successor(prefix)
        assert prefix < nxt and all(not s.startswith(prefix) for s in (nxt, nxt + "a"))
        assert (prefix + "\U0010ffff" * 3) < nxt  # above everything that starts with the prefix


# --------------------------------------------------------------------------- counters, inputs resolved once

def test_counters_follow_every_write_and_doctor_checks_them(tmp_path):
    from xsearch.storage import ItemRecord

    def rec(path, modality="image", vector=None, error=None):
        return ItemRecord(path=path, modality=modality, size=1, mtime_ns=1, vector=vector, error=error,
                          root="/r" if path.startswith("/r/") else None)

    x = unit(8, 5)
    with Storage(tmp_path) as s:
        def check(expected):
            assert s.counts() == expected
            with s.engine.connect() as conn:
                real = dict(conn.exec_driver_sql(
                    "SELECT modality, count(*) FROM items WHERE status = 'ok' GROUP BY modality").all())
            assert real == expected and s.check() == []

        s.put([rec("/r/a", vector=x[0]), rec("/r/b", vector=x[1]), rec("/r/c", "audio", x[2])])
        check({"audio": 1, "image": 2})
        s.put([rec("/r/a", "audio", x[3]), rec("/r/b", error="broken"), rec("/r/d", error="broken")])
        check({"audio": 2})  # a moved to audio, b failed (its vector gone), d never had one
        s.put([rec("/r/b", vector=x[4]), rec("/r/b", vector=x[5])])  # the last record for a path wins
        check({"audio": 2, "image": 1})
        s.move(s.item_by_path("/r/b").id, "/r/c", size=1, mtime_ns=2, root="/r")  # replaces audio c
        check({"audio": 1, "image": 1})
        s.remove([s.item_by_path("/r/a").id])
        check({"image": 1})
        s.add_root("/r")
        s.remove_root("/r")
        check({})
        s.add_vectors(x[6:], modality="depth", paths=["k1", "k2"])
        check({"depth": 2})
        with pytest.raises(UsageError):
            s.set_meta("count:depth", "7")
        with s.engine.begin() as conn:  # damage: a counter that is wrong
            conn.exec_driver_sql("UPDATE meta SET value = '7' WHERE key = 'count:depth'")
        assert s.counts() == {"depth": 7} and any("counter says 7" in p for p in s.check())
        s.rebuild_indexes()  # what doctor --repair runs
        check({"depth": 2})


def test_each_like_input_is_resolved_once_and_the_spec_validated_once(tmp_path, monkeypatch):
    from xsearch.query import search as search_mod
    from xsearch.query import spec as spec_mod

    looked, validated = [], []
    real_find, real_validate = search_mod._find_like, spec_mod.QuerySpec.validate
    monkeypatch.setattr(search_mod, "_find_like", lambda v, s: looked.append(v) or real_find(v, s))
    monkeypatch.setattr(spec_mod.QuerySpec, "validate", lambda self: validated.append(1) or real_validate(self))
    with make_store(tmp_path / "s", 200) as store:
        me = store.storage.item_by_path("/data/fixed/001.jpg")
        hits = store.search(like=["/data/fixed/001.jpg", (me.id + 1, 0.5)], k=5)
        assert looked == ["/data/fixed/001.jpg", me.id + 1] and validated == [1]
        assert {me.id, me.id + 1}.isdisjoint({h.id for h in hits}) and len(hits) == 5
        spec = QuerySpec(inputs=as_inputs("like", me.id), k=3)
        spec.validate()
        validated.clear()
        assert len(store.query(spec, validated=True)) == 3 and validated == []
        with pytest.raises(UsageError, match="no item with id 999999"):
            store.search(like=999999)
