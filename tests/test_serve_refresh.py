"""`xsearch serve` keeps up with the store on disk: other processes' index runs, a store created anew.

Real servers on loopback ports over real stores (tiny fixture model); the other writer is a real
`xsearch index` process, or a second Store object holding the real writer lock.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

import xsearch
from tests.corpus import write_image
from xsearch.serve import BackgroundServer
from xsearch.storage.lock import writer_lock


def image_store(root: Path, model: str, n: int = 3) -> xsearch.Store:
    photos = root / "photos"
    photos.mkdir(parents=True)
    for i in range(n):
        write_image(photos / f"p{i}.png", i)
    store = xsearch.open(root / "store", model=model)
    store.index([photos])
    return store


def image_paths(c: httpx.Client) -> set[str]:
    r = c.post("/api/search", json={"text": "a photo", "target": "image", "k": 1000})
    assert r.status_code == 200, r.text
    return {x["path"] for x in r.json()["results"]}


def test_an_index_run_by_another_process_shows_up(tmp_path, tiny_model):
    store = image_store(tmp_path, tiny_model)
    with store, BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        assert len(image_paths(c)) == 3  # indexes loaded before the new files exist
        added = [write_image(tmp_path / "photos" / f"new{i}.png", 10 + i) for i in range(4)]
        subprocess.run([sys.executable, "-m", "xsearch.cli.main", "index", "--store", str(tmp_path / "store")],
                       check=True, capture_output=True)
        # Picked up at the next check (at most a second away): wait for it rather than assume a delay.
        deadline = time.monotonic() + 60
        while len(image_paths(c)) != 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {str(p) for p in added} <= image_paths(c)
        st = c.get("/api/status").json()
        assert st["counts"]["image"] == st["indexes"]["image"]["ntotal"] == 7


def test_no_reload_while_an_index_run_holds_the_lock(tmp_path, tiny_model):
    """While a run writes, the server keeps its consistent snapshot; the run's changes appear when it ends."""
    store = image_store(tmp_path, tiny_model)
    dim = store.storage.dim
    query = {"vector": [1.0] * dim, "target": "image", "k": 1000}
    with store, BackgroundServer(store, refresh_interval=0) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        assert len(c.post("/api/search", json=query).json()["results"]) == 3
        with xsearch.open(tmp_path / "store") as other, writer_lock(tmp_path / "store"):
            other.add_vectors(np.ones((2, dim), np.float32), modality="image", paths=["byo:a", "byo:b"])
            assert len(c.post("/api/search", json=query).json()["results"]) == 3
            assert c.get("/api/status").json()["indexes"]["image"]["ntotal"] == 3
        hits = c.post("/api/search", json=query).json()["results"]
        assert {"byo:a", "byo:b"} <= {h["path"] for h in hits} and len(hits) == 5


def test_a_store_deleted_and_created_again_is_reopened(tmp_path, tiny_model):
    store = image_store(tmp_path, tiny_model)
    notes = tmp_path / "notes"
    notes.mkdir()
    for i, line in enumerate(["a dog barking", "rain on a roof", "a quiet library"]):
        (notes / f"n{i}.txt").write_text(line + "\n", encoding="utf-8")
    path = tmp_path / "store"
    with store, BackgroundServer(store, refresh_interval=0) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        before = c.post("/api/search", json={"text": "a dog", "k": 100}).json()["results"]
        assert {x["modality"] for x in before} == {"image"}
        service = srv.server.config.app.state.service
        embedder = service.store._embedder
        assert embedder is not None  # loaded by the text search

        shutil.rmtree(path)
        for r in (c.get("/api/status"), c.get("/api/items/1"), c.post("/api/search", json={"text": "a dog"})):
            assert r.status_code == 503 and "gone" in r.json()["detail"], r.text

        with xsearch.open(path, model=tiny_model) as new:
            new.index([notes])
        after = c.post("/api/search", json={"text": "a dog", "k": 100}).json()["results"]
        assert sorted(x["path"] for x in after) == sorted(str(p) for p in notes.iterdir())
        assert c.get("/api/items/1").json()["path"].startswith(str(notes))
        assert c.get("/api/status").json()["counts"] == {"text": 3}
        assert service.store is not store and service.store._embedder is embedder  # the model was not read again
