"""Indexed folders: nesting, per-folder modality overrides, missing and unreadable folders, `remove`.

Each file belongs to the innermost indexed folder that holds it; that folder's ``--modality``
decides how it is read, whatever folder a run starts from. Real files, SQLite, FAISS and the
tiny fixture model, through the Python API.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import cli_env, xsearch_cmd
from tests.corpus import write_depth_png, write_image


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    (media / "photos").mkdir(parents=True)
    (media / "depth").mkdir()
    for i in range(3):
        write_image(media / "photos" / f"p{i}.png", i)
        write_depth_png(media / "depth" / f"d{i}.png", i)
    return media


def counts(store: xsearch.Store) -> dict[str, int]:
    return store.status()["counts"]


def test_inner_modality_folder_wins_and_runs_stay_incremental(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree / "depth", modality="depth")
        first = store.index(tree)  # the parent folder, no override
        assert (first.embedded, first.unchanged) == (3, 3)
        assert counts(store) == {"depth": 3, "image": 3}
        for _ in range(3):  # plain runs walk each file once, under its innermost folder
            rep = store.index()
            assert (rep.embedded, rep.unchanged, rep.moved, rep.copied, rep.removed) == (0, 6, 0, 0, 0)
            assert counts(store) == {"depth": 3, "image": 3}
        rep = store.index([tree, tree / "depth", tree / "photos"])  # overlapping paths: still once each
        assert (rep.embedded, rep.unchanged) == (0, 6)


def test_marking_a_subfolder_later_reindexes_only_it(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree)
        assert counts(store) == {"image": 6}  # 16-bit depth PNGs read as images without an override
        rep = store.index(tree / "depth", modality="depth")
        assert (rep.embedded, rep.unchanged) == (3, 0)
        assert counts(store) == {"depth": 3, "image": 3}
        rep = store.index()
        assert (rep.embedded, rep.unchanged) == (0, 6) and counts(store) == {"depth": 3, "image": 3}
        # A subfolder of the depth folder given without --modality keeps the depth override.
        (tree / "depth" / "more").mkdir()
        write_depth_png(tree / "depth" / "more" / "d9.png", 9)
        rep = store.index(tree / "depth" / "more")
        assert rep.embedded == 1 and counts(store) == {"depth": 4, "image": 3}
        assert str(tree / "depth" / "more") not in store.storage.roots()  # walked as part of the depth folder
        # "auto" forgets a folder's setting: its files are detected (and embedded) again.
        rep = store.index(tree / "depth" / "more", modality="auto")
        assert rep.embedded == 1 and counts(store) == {"depth": 3, "image": 4}
        assert store.storage.roots()[str(tree / "depth" / "more")] is None
        rep = store.index(tree / "depth" / "more", modality="depth")
        assert rep.embedded == 1 and counts(store) == {"depth": 4, "image": 3}
        # Forgetting the depth folder forgets its files, and the next plain run reads them as images again.
        assert store.remove(tree / "depth") == 4
        assert counts(store) == {"image": 3}
        assert str(tree / "depth") not in store.storage.roots()
        rep = store.index()
        assert rep.embedded == 4 and counts(store) == {"image": 7}


def test_remove_counts_what_it_removed(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree / "depth", modality="depth")
        store.index(tree)
        assert store.remove(tree) == 6  # the folder, and the indexed folder inside it
        assert counts(store) == {} and store.storage.roots() == {}
        assert store.remove(tree) == 0


def test_a_missing_folder_keeps_its_items_and_a_moved_one_reuses_them(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree / "photos")
        moved = tmp_path / "elsewhere"
        shutil.move(tree / "photos", moved)  # renamed, or a drive that is not mounted
        rep = store.index()
        assert rep.missing == [str(tree / "photos")] and rep.removed == 0
        assert counts(store) == {"image": 3}
        rep = store.index(moved)
        assert (rep.embedded, rep.copied) == (0, 3)  # same content: the stored vectors are reused
        assert store.remove(tree / "photos") == 3
        rep = store.index()
        assert rep.missing == [] and (rep.embedded, rep.unchanged) == (0, 3)
        assert counts(store) == {"image": 3}


def test_own_vectors_by_name_and_indexed_files_are_protected(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    from xsearch.errors import UsageError

    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree / "photos")
        dim = store.storage.dim
        vecs = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
        ids = store.add_vectors(vecs, modality="image", paths=["byo/a", "byo/b", "s3://bucket/c.jpg"])
        hits = store.search(like="byo/a", target="image", k=10)
        assert "byo/a" not in [h.path for h in hits] and len(hits) == 5
        assert store.remove("byo/a") == 1
        assert store.remove(["byo", "s3://bucket/c.jpg"]) == 2
        assert counts(store) == {"image": 3} and ids
        with pytest.raises(UsageError, match="unknown modality 'smell'"):
            store.add_vectors(vecs[:1], modality="smell", paths=["x"])
        photo = str(tree / "photos" / "p0.png")
        with pytest.raises(UsageError, match="indexed from"):
            store.add_vectors(vecs[:1], modality="audio", paths=[photo])
        assert store.storage.item_by_path(photo).modality == "image"


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: root's override capabilities dropped."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test permissions as root"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def _index(*args) -> subprocess.CompletedProcess:
    cmd = _unprivileged() + xsearch_cmd() + ["index", *map(str, args), "--no-progress", "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)


def test_unreadable_folder_and_file_keep_items_and_are_retried(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    store = tmp_path / "s"
    photos, depth0 = tree / "photos", tree / "depth" / "d0.png"
    depth0.chmod(0)  # a file that cannot be read: retried on every run although size and time stay
    try:
        first = _index(tree, "--store", store, "--model", tiny_model)
        assert first.returncode == 1 and json.loads(first.stdout)["failed"] == 1, first.stderr
        photos.chmod(0)  # an indexed folder that cannot be listed: its files are unknown, not deleted
        rep = _index(tree, "--store", store)
        assert rep.returncode == 1, rep.stderr
        got = json.loads(rep.stdout)
        assert got["removed"] == 0 and got["failed"] == 2
        reasons = {e["path"]: e["reason"] for e in got["errors"]}
        assert "cannot read folder (Permission denied)" in reasons[str(photos)]
        assert "Permission denied" in reasons[str(depth0)]
        with xsearch.open(store) as s:
            assert len(s.storage.items(prefix=str(photos) + os.sep, status="ok")) == 3
    finally:
        photos.chmod(0o755)
        depth0.chmod(0o644)
    rep = _index(tree, "--store", store)
    assert rep.returncode == 0, rep.stderr
    got = json.loads(rep.stdout)
    assert (got["embedded"], got["unchanged"], got["failed"]) == (1, 5, 0)  # only the file that failed
    with xsearch.open(store) as s:
        assert s.status()["counts"] == {"image": 6} and s.status()["errors"] == []


def test_doctor_says_when_a_writer_is_at_work(tree: Path, tmp_path: Path, tiny_model: str) -> None:
    from xsearch.storage.lock import writer_lock

    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index(tree / "photos")
        assert store.doctor()["ok"]
        (tmp_path / "s" / "index" / "image.faiss").unlink()  # as a writer between commit and save
        with writer_lock(tmp_path / "s"):
            problems = store.doctor()["problems"]
            assert problems[0]["kind"] == "busy" and f"pid {os.getpid()}" in problems[0]["detail"]
        assert [p["kind"] for p in store.doctor()["problems"]] == ["store"]
