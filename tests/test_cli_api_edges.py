"""The CLI and the Python API as a demanding user drives them: names that are not UTF-8 or hold control
characters, doctor while an index run writes and on damaged vectors, paths given to add_vectors, JSON
shapes, hidden files and symlinked folders, and the checks on query and remove arguments.

Real files, real SQLite and FAISS, the tiny fixture model, the real command (in-process).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.corpus import write_image
from tests.helpers.cli import cli, cli_json, indexed_images, on_disk
from xsearch.errors import StoreError, UsageError
from xsearch.storage.lock import writer_lock

# ------------------------------------------------------------------ names


def test_like_and_remove_accept_names_that_are_not_utf8(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, [b"caf\xe9.png", b"plain.png", b"d\xe9r/x.png"])
    cafe = on_disk(media, b"caf\xe9.png")
    shown = f"{media}/caf\\xe9.png"
    got = cli_json("query", "--like", cafe, "-k", 5, "--store", store)
    assert shown not in [r["path"] for r in got["results"]] and len(got["results"]) == 2
    with xsearch.open(store, read_only=True) as s:
        assert len(s.search(like=os.fsencode(cafe), k=5)) == 2
        with pytest.raises(UsageError, match=r"like: .*/nope\\xe9\.png is not indexed"):
            s.search(like=os.fsencode(media) + b"/nope\xe9.png")
    assert cli("remove", cafe, "--store", store).stdout.strip() == "removed 1"
    assert cli("remove", on_disk(media, b"d\xe9r"), "--store", store).stdout.strip() == "removed 1"
    assert [r["path"] for r in cli_json("query", "--text", "x", "--store", store)["results"]] == [f"{media}/plain.png"]


CONTROL_NAMES = {"red\x1b[31mALERT\x1b[0m.png": "red\\033[31mALERT\\033[0m.png", "a\nb.png": "a\\nb.png",
                 "c\rd.png": "c\\rd.png"}


def test_control_characters_in_names_never_reach_the_terminal(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, list(CONTROL_NAMES))
    (media / "bad\x1b[2J.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    res = cli("index", "--store", store, "--no-progress", code=1)
    assert f"  failed: {media}/bad\\033[2J.jpg: " in res.stderr and "\x1b" not in res.stderr
    shown = sorted(f"{media}/{s}" for s in CONTROL_NAMES.values())
    paths = cli("query", "--text", "x", "--paths", "--store", store).stdout
    assert sorted(paths.splitlines()) == shown  # one line each: a newline in a name does not split it
    table = cli("query", "--text", "x", "--store", store).stdout
    assert all(p in table for p in shown) and not {"\x1b", "\r"} & set(table)
    errors = cli("status", "--errors", "--store", store).stdout
    assert f"{media}/bad\\033[2J.jpg: not a readable image (unknown or corrupt format)" in errors.splitlines()
    assert "\x1b" not in errors
    # JSON and --null keep the names as stored and as on disk
    assert sorted(r["path"] for r in cli_json("query", "--text", "x", "--store", store)["results"]) == \
        sorted(f"{media}/{n}" for n in CONTROL_NAMES)


# ------------------------------------------------------------------ doctor


def test_doctor_from_the_command_line_says_an_index_run_is_writing(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png", "b.png"])
    (store / "index" / "image.faiss").unlink()  # as an index run's files trail its commits
    with writer_lock(store):  # an index run holds the store
        doc = cli_json("doctor", "--store", store, code=1)
        text = cli("doctor", "--store", store, code=1).stdout
    assert doc["problems"][0]["kind"] == "busy" and "is writing to this store" in doc["problems"][0]["detail"]
    assert "--repair" not in text.splitlines()[-1] and "run `xsearch doctor` again" in text.splitlines()[-1]


def _damage_vector(store: Path, item_id: int) -> None:
    """40 random bytes over a stored vector, written behind xsearch's back (SQLite's pages stay valid)."""
    con = sqlite3.connect(store / "xsearch.db")
    (blob,) = con.execute("SELECT data FROM vectors WHERE item_id = ?", (item_id,)).fetchone()
    noise = np.random.default_rng(item_id).integers(0, 256, 40, dtype=np.uint8).tobytes()
    con.execute("UPDATE vectors SET data = ? WHERE item_id = ?", (noise + blob[40:], item_id))
    con.commit()
    con.close()


def test_doctor_finds_damaged_vectors_and_repair_embeds_their_files_again(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png", "b.png", "c.png"])
    with xsearch.open(store) as s:
        a = s.storage.item_by_path(f"{media}/a.png")
        good = s.storage.get_vectors([a.id])[0]
        dim = s.storage.dim
        (byo,) = s.add_vectors(np.ones((1, dim)), modality="image", paths=["byo/one"])
    _damage_vector(store, a.id)
    _damage_vector(store, byo)
    with xsearch.open(store, read_only=True) as s:
        assert s.storage.check() == []  # the database itself is sound: only values are wrong
    doc = cli_json("doctor", "--store", store, code=1)
    assert sorted((p["kind"], p["detail"].split(":")[0]) for p in doc["problems"]) == \
        [("vector", f"{media}/a.png"), ("vector", "byo/one")]
    assert "--repair" in cli("doctor", "--store", store, code=1).stdout.splitlines()[-1]
    fixed = cli_json("doctor", "--repair", "--store", store)
    assert fixed["ok"] and fixed["repaired"]
    with xsearch.open(store, read_only=True) as s:
        again = s.storage.item_by_path(f"{media}/a.png")
        assert again.status == "ok" and np.allclose(s.storage.get_vectors([again.id])[0], good, atol=1e-3)
        lost = s.storage.item_by_path("byo/one")
        assert lost.status == "failed" and "damaged" in lost.error
        assert s.search(like=f"{media}/b.png", k=5)[0].path in (f"{media}/a.png", f"{media}/c.png")


def test_doctor_repair_says_which_damaged_files_failed_to_embed_again(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png", "b.png"])
    with xsearch.open(store, read_only=True) as s:
        a = s.storage.item_by_path(f"{media}/a.png")
    _damage_vector(store, a.id)
    (media / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # and the file is no image any more
    doc = cli_json("doctor", "--repair", "--store", store, code=1)
    assert doc["repaired"] and [p["kind"] for p in doc["problems"]] == ["vector"]
    assert doc["problems"][0]["detail"].startswith(f"{media}/a.png: embedding it again failed (")
    assert cli_json("status", "--store", store)["errors"][0]["path"] == f"{media}/a.png"


def test_doctor_json_reports_a_database_it_cannot_open(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    (store / "xsearch.db").write_bytes(b"this is not a database, just text" * 200)
    for name in ("xsearch.db-wal", "xsearch.db-shm"):
        (store / name).unlink(missing_ok=True)
    doc = cli_json("doctor", "--store", store, code=1)
    assert doc["ok"] is False and doc["repaired"] is False
    assert [p["kind"] for p in doc["problems"]] == ["database"] and "damaged" in doc["problems"][0]["detail"]


# ------------------------------------------------------------------ add_vectors and JSON


def test_add_vectors_stores_a_file_path_as_index_does(tmp_path, tiny_model, monkeypatch):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    with xsearch.open(store) as s:
        x = np.random.default_rng(0).normal(size=(3, s.storage.dim))
        with pytest.raises(UsageError, match="indexed from"):  # ./m/a.png is the indexed file, not a new item
            s.add_vectors(x[:1], modality="image", paths=["./m/a.png"])
        s.add_vectors(x, modality="image", paths=["./other/b.png", "byo/a", "s3://bucket/k.jpg"])
        names = sorted(it.path for it in s.storage.items())
        assert names == sorted([f"{media}/a.png", f"{tmp_path}/other/b.png", "byo/a", "s3://bucket/k.jpg"])
        s.add_vectors(x[:1], modality="image", paths=[tmp_path / "other" / "b.png"])  # the same item again
        assert len(s.storage.items()) == 4
        assert s.remove("./other/b.png") == 1 and s.storage.item_by_path("byo/a") is not None


def test_add_vectors_refuses_complex_numbers_and_takes_large_ones_quietly(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    with xsearch.open(store) as s, warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning or ComplexWarning fails the test
        dim = s.storage.dim
        (big,) = s.add_vectors(np.full((1, dim), 1e30), modality="image", paths=["byo/big"])
        assert np.isclose(np.linalg.norm(s.storage.get_vectors([big])[0]), 1, atol=1e-3)
        with pytest.raises(UsageError, match="complex numbers; give real-valued"):
            s.add_vectors(np.ones((1, dim)) * (1 + 1j), modality="image", paths=["byo/c"])
        with pytest.raises(UsageError, match="finite"):
            s.add_vectors(np.full((1, dim), np.inf), modality="image", paths=["byo/inf"])
        assert s.storage.item_by_path("byo/c") is None


def test_index_json_lists_every_failed_file_on_every_run(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    (media / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    first = cli_json("index", "--store", store, "--no-progress", code=1)
    again = cli_json("index", "--store", store, "--no-progress", code=1)
    for rep in (first, again):
        assert rep["failed"] == len(rep["errors"]) == 1 and rep["errors"][0]["path"] == f"{media}/bad.jpg"
    assert "failed: " in cli("index", "--store", store, "--no-progress", code=1).stderr


def test_query_json_always_carries_facts(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    with xsearch.open(store) as s:
        s.add_vectors(np.random.default_rng(1).normal(size=(2, s.storage.dim)), modality="image",
                      paths=["byo/a", "byo/b"])
    results = cli_json("query", "--like", "byo/a", "--store", store)["results"]
    assert [r["facts"] for r in results if r["path"] == "byo/b"] == [{}]
    assert all("facts" in r for r in results)


# ------------------------------------------------------------------ query inputs


def test_search_refuses_a_files_bytes_or_an_open_file_as_a_media_input(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    with xsearch.open(store, read_only=True) as s:
        with pytest.raises(UsageError) as data:
            s.search(image=(media / "a.png").read_bytes())
        assert len(str(data.value)) < 200 and "bytes of data, not a file path" in str(data.value)
        with (media / "a.png").open("rb") as f, pytest.raises(UsageError, match="open file .*pass its path"):
            s.search(image=f)
        assert len(s.search(image=os.fsencode(media / "a.png"))) == 1  # bytes that are a path still are one


# ------------------------------------------------------------------ walking


def test_a_hidden_file_named_to_index_stays_indexed(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png", ".dot.png"])
    assert cli_json("index", media / ".dot.png", "--store", store, "--no-progress")["embedded"] == 1
    rep = cli_json("index", "--store", store, "--no-progress")
    assert (rep["removed"], rep["unchanged"]) == (0, 2)
    assert cli_json("status", "--store", store)["counts"] == {"image": 2}


def test_a_symlink_to_an_indexed_folder_indexes_nothing_twice(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png", "sub/b.png"])
    (tmp_path / "link").symlink_to(media)
    rep = cli_json("index", tmp_path / "link", "--store", store, "--no-progress")
    assert (rep["embedded"], rep["unchanged"]) == (0, 2)
    rep = cli_json("index", tmp_path / "link" / "sub", "--store", store, "--no-progress")
    assert (rep["embedded"], rep["unchanged"]) == (0, 1)
    st = cli_json("status", "--store", store)
    assert [r["path"] for r in st["roots"]] == [str(media)] and st["counts"] == {"image": 2}
    assert len(cli_json("query", "--text", "x", "--store", store)["results"]) == 2
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "own.png", 9)
    (other / "to-media").symlink_to(media)  # a symlink inside another folder, into the indexed one
    assert cli_json("index", other, "--store", store, "--no-progress")["embedded"] == 1
    paths = sorted(r["path"] for r in cli_json("query", "--text", "x", "--store", store)["results"])
    assert paths == sorted([f"{media}/a.png", f"{media}/sub/b.png", f"{other}/own.png"])


def test_a_copy_of_the_model_folder_under_another_name_is_the_same_model(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    copy = tmp_path / "my-model"
    shutil.copytree(tiny_model, copy)
    write_image(media / "b.png", 7)
    rep = cli_json("index", "--store", store, "--model", copy, "--no-progress")
    assert (rep["embedded"], rep["unchanged"]) == (1, 1)  # a.png is not embedded again: same weights
    assert len(cli_json("query", "--text", "x", "--model", copy, "--store", store)["results"]) == 2


# ------------------------------------------------------------------ checks and messages


@pytest.mark.parametrize("args, words", [
    (("--min-score", "nan"), "min_score must be a finite number"),
    (("-t", ""), "empty target"),
    (("--folder", "/nonexistent/folder"), "/nonexistent/folder: no such folder, and nothing indexed under it"),
])
def test_query_refuses_arguments_that_would_silently_find_nothing(tmp_path, tiny_model, args, words):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    res = cli("query", "--text", "x", *args, "--store", store, code=2)
    assert words in res.stderr and res.stdout == ""


def test_a_folder_filter_on_an_unmounted_indexed_folder_still_finds_its_items(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    media.rename(tmp_path / "elsewhere")
    assert len(cli_json("query", "--text", "x", "--folder", media, "--store", store)["results"]) == 1


def test_remove_of_a_path_not_in_the_store_fails_and_removes_nothing(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    res = cli("remove", media / "a.png", "/nonexistent", "--store", store, code=1)
    assert res.stderr.startswith("error: /nonexistent: not in the store") and "nothing removed" in res.stderr
    assert cli_json("status", "--store", store)["counts"] == {"image": 1}
    with xsearch.open(store) as s:
        assert s.remove("/nonexistent") == 0  # the API's default: nothing to forget is no error
        with pytest.raises(StoreError, match="/nonexistent: not in the store"):
            s.remove(["/nonexistent"], missing_ok=False)


def test_messages_name_no_internals_and_no_raw_error_codes(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    (media / "junk.mp4").write_text("a film script, not a film\n" * 30, encoding="utf-8")
    rep = cli_json("index", "--store", store, "--no-progress", code=1)
    assert rep["errors"][0]["path"].endswith("junk.mp4") and "[Errno" not in rep["errors"][0]["reason"]
    (store / "index" / "image.faiss").unlink()
    for p in cli_json("doctor", "--store", store, code=1)["problems"]:
        assert "Storage" not in p["detail"], p
    s = xsearch.open(store, model=tiny_model)
    with pytest.raises(UsageError) as bad:
        s.index([media], modality="smell")
    assert "--" not in str(bad.value)
    s.close()
    with pytest.raises(StoreError) as closed:
        s.status()
    assert "Storage" not in str(closed.value) and "closed" in str(closed.value)


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:  # it has exited
        return False


def test_a_query_interrupted_again_and_again_says_only_interrupted(tmp_path, tiny_model):
    """Readers end at once on Ctrl-C: no KeyboardInterrupt through native code, no atexit noise."""
    import signal
    import subprocess
    import time

    from tests.awkward import cli_env, xsearch_cmd

    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    proc = subprocess.Popen(xsearch_cmd() + ["query", "--text", "a dog", "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    while proc.poll() is None and not _has_loaded(proc.pid, "libtorch"):
        time.sleep(0.01)  # until torch is loaded: the query is then in its native-code part
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, err, out) == (130, "interrupted\n", "")
