"""Re-embedding a store with another model: switched to only when done, old vectors searched meanwhile."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import cli_env, run_cli, xsearch_cmd
from tests.corpus import write_image
from tests.helpers.models import random_model
from xsearch.engine.weights import model_id
from xsearch.errors import UsageError


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_model: str) -> str:
    """Another tiny model: other random weights and 16-d vectors instead of 24."""
    return random_model(tmp_path_factory.mktemp("models") / "other", tiny_model, seed=7, out_embed_dim=16)


def make_media(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        write_image(folder / f"{i:03d}.png", i)
    (folder / "dog.txt").write_text("a dog barking on a beach")
    return folder


def vectors_by_path(store) -> dict[str, np.ndarray]:
    items = store.storage.items(status="ok")
    return dict(zip([it.path for it in items], store.storage.get_vectors([it.id for it in items])))


def hits(results) -> list[tuple[str, float]]:
    return [(h.path, round(h.score, 5)) for h in results]


def test_reembed_gives_every_item_the_new_models_vector_and_switches_the_store(tmp_path, tiny_model, other_model):
    media = make_media(tmp_path / "media", 8)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([media])
        report = store.reembed(other_model)
        assert report.switched and (report.reembedded, report.failed) == (9, 0)
        assert report.previous_model == model_id(tiny_model) and report.model == model_id(other_model)
        assert store.status()["model"] == model_id(other_model) and store.storage.dim == 16
        assert hits(store.search(text="a dog", k=3))[0][0] == str(media / "dog.txt")  # this Store uses the new model
        got = vectors_by_path(store)
        assert store.doctor()["ok"]
    with xsearch.open(tmp_path / "fresh", model=other_model) as fresh:  # what indexing with the new model gives
        fresh.index([media])
        want = vectors_by_path(fresh)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=2e-3, err_msg=path)
    with xsearch.open(tmp_path / "s") as reopened:  # the store's model from now on
        assert reopened.model_id == model_id(other_model)
        assert reopened.index([media]).unchanged == 9


class SearchWhileReembedding:
    """A progress display that, after each committed batch, searches the store through another handle."""

    def __init__(self, store_path: Path):
        self.reader = xsearch.open(store_path, read_only=True)
        self.seen: list[list[tuple[str, float]]] = []

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.seen.append(hits(self.reader.search(text="a dog", k=5)))

    def stop(self) -> None:
        pass


def test_queries_during_a_reembed_use_the_old_vectors(tmp_path, tiny_model, other_model):
    media = make_media(tmp_path / "media", 6)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([media])
        before = hits(store.search(text="a dog", k=5))
        watcher = SearchWhileReembedding(tmp_path / "s")
        assert store.reembed(other_model, progress=watcher, batch_size=2).switched
        watcher.reader.close()
    assert len(watcher.seen) >= 3 and all(seen == before for seen in watcher.seen)


def _pending(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM pending_vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_reembed_killed_mid_way_keeps_the_old_model_and_resumes(tmp_path, tiny_model, other_model):
    n = 60
    media = make_media(tmp_path / "media", n)
    store = tmp_path / "s"
    assert run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress").returncode == 0
    ask = ("query", "--text", "a dog", "--store", store, "--json", "-k", "5")
    before = json.loads(run_cli(*ask).stdout)["results"]

    cmd = xsearch_cmd() + ["reembed", "--model", other_model, "--store", str(store), "--batch-size", "1", "--workers", "1",
                           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    deadline = time.monotonic() + 120
    while _pending(store / "xsearch.db") < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = _pending(store / "xsearch.db")
    assert 5 <= done < n + 1, f"{done} items re-embedded when killed"

    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["model"] == model_id(tiny_model)  # not switched: the old model and vectors still serve
    assert status["reembed"] == {"model": model_id(other_model), "done": done, "total": n + 1}
    assert json.loads(run_cli(*ask).stdout)["results"] == before
    write_image(media / "new.png", 999)  # indexed meanwhile, with the store's (old) model
    assert run_cli("index", "--store", store, "--no-progress").returncode == 0

    rest = run_cli("reembed", "--store", store, "--json")  # no --model: continues the one under way
    assert rest.returncode == 0, rest.stderr
    report = json.loads(rest.stdout)
    assert report["switched"] and report["resumed"] == done and report["resumed"] + report["reembedded"] == n + 2
    progress = [json.loads(line) for line in rest.stderr.splitlines()]
    dones = [p["done"] for p in progress]
    assert all(p["total"] == n + 2 and p["what"] == "re-embedding" for p in progress)
    assert dones == sorted(dones) and done in dones and dones[-1] == n + 2
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["model"] == model_id(other_model) and status["counts"] == {"image": n + 1, "text": 1}
    assert status["reembed"] is None
    assert {i["dim"] for i in status["indexes"].values()} == {16}
    assert json.loads(run_cli("doctor", "--store", store, "--json").stdout)["ok"] is True


def test_a_file_that_cannot_be_embedded_again_is_a_failed_item_after_the_switch(tmp_path, tiny_model, other_model):
    media = make_media(tmp_path / "media", 3)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([media])
        (media / "001.png").write_bytes(b"not a png any more")
        report = store.reembed(other_model)
        assert report.switched and report.failed == 1 and report.errors[0]["path"] == str(media / "001.png")
        assert [it.path for it in store.storage.errors()] == [str(media / "001.png")]
        assert store.doctor()["ok"]


def test_reembed_refuses_items_that_were_added_as_vectors(tmp_path, tiny_model, other_model):
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.add_vectors(np.eye(24, dtype=np.float32)[:2], modality="image", paths=["key:a", "key:b"])
        with pytest.raises(UsageError, match="added as vectors.*key:a.*remove them first"):
            store.reembed(other_model)
        assert store.storage.reembed_target() is None and len(store.storage.items()) == 2


def test_reembed_refuses_while_an_indexed_folder_is_missing(tmp_path, tiny_model, other_model):
    media = make_media(tmp_path / "media", 2)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([media])
        media.rename(tmp_path / "elsewhere")  # an unmounted drive: its items must keep their vectors
        with pytest.raises(UsageError, match="indexed folder not on disk"):
            store.reembed(other_model)
        assert len(store.storage.items(status="ok")) == 3 and store.storage.reembed_target() is None


def test_the_switch_drops_moments_and_tags_of_the_old_model_and_the_next_index_run_brings_moments_back(
        tmp_path, tiny_model, other_model):
    from tests.corpus import write_audio

    media = make_media(tmp_path / "media", 2)
    write_audio(media / "tone.wav", 440.0, seconds=6.0)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([media], moments=True)
        assert store.status()["moments"].get("audio", 0) >= 3
        store.tag(["dog", "car"], name="pets", top=1)
        assert store.label_sets()[0]["items"] > 0
        assert store.reembed(other_model).switched
        # Nothing computed from the old model's 24-d vectors is left among the new 16-d ones.
        assert store.status()["moments"] == {} and store.label_sets()[0]["items"] == 0
        assert store.doctor()["ok"]
        report = store.index([media])  # the folder still wants moments: its recording is windowed again
        assert report.segments >= 3
        hits_ = store.search(audio=str(media / "tone.wav"), moments=True, k=3)
        assert hits_ and hits_[0].path == str(media / "tone.wav") and hits_[0].start is not None
        assert store.tag(["dog", "car"], name="pets", top=1)["tagged"] > 0  # the label set, with the new model
