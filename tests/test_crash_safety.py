"""Crash safety: `xsearch index` killed with SIGKILL at many moments, then run to completion, ends exactly
where one clean run ends; and `xsearch doctor` finds (and `--repair` fixes) what can go wrong on disk.

Real processes, real SQLite and FAISS files, the tiny fixture model; the kill schedule is seeded.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import xsearch
from tests.awkward import cli_env, run_cli, xsearch_cmd
from tests.corpus import write_image
from xsearch.cli.main import app
from xsearch.storage import Storage
from xsearch.storage.faiss_index import ModalityIndex

N_IMAGES, N_TEXTS = 260, 60
KILLS = 12
SEED = 20240607
TEXT_WORDS = ("dog cat rain sea car tree snow city night bird road house river mountain bread music "
              "train phone clock light").split()


def _corpus(root: Path) -> list[str]:
    files = []
    for i in range(N_IMAGES):
        folder = root / "img" / f"{i // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        files.append(str(write_image(folder / f"p{i:04d}.png", 7000 + i, size=(40, 32))))
    rng = random.Random(SEED)
    (root / "txt").mkdir()
    for i in range(N_TEXTS):
        p = root / "txt" / f"n{i:03d}.txt"
        p.write_text(f"note {i}: " + " ".join(rng.choice(TEXT_WORDS) for _ in range(8)) + "\n", encoding="utf-8")
        files.append(str(p))
    return files


def _db(store: Path) -> sqlite3.Connection | None:
    path = store / "xsearch.db"
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)


def _count(store: Path) -> int:
    con = _db(store)
    if con is None:
        return 0
    try:
        return con.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # killed before the schema was committed
        return 0
    finally:
        con.close()


def _db_invariants(store: Path) -> None:
    """What must hold after any kill: an intact database, one row per path, a vector for each ok item only."""
    con = _db(store)
    if con is None:
        return
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        if "items" not in tables:
            return
        assert con.execute("SELECT count(*) FROM (SELECT path FROM items GROUP BY path HAVING count(*) > 1)").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM items i LEFT JOIN vectors v ON v.item_id = i.id "
                           "WHERE i.status = 'ok' AND v.item_id IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM vectors v LEFT JOIN items i ON i.id = v.item_id "
                           "WHERE i.id IS NULL OR i.status != 'ok'").fetchone()[0] == 0
    finally:
        con.close()


def _index_cmd(corpus: Path, store: Path, model: str) -> list[str]:
    return xsearch_cmd() + ["index", str(corpus), "--store", str(store), "--model", model, "--no-progress", "--json",
                            "--batch-size", "4"]


def _queries(store: Path, texts: list[str], vectors: np.ndarray) -> list[list[tuple[str, float]]]:
    out = []
    with xsearch.open(store, create=False) as s:
        for t in texts:
            out.append([(h.path, h.score) for h in s.search(text=t, target="all", k=10)])
        for v in vectors:
            out.append([(h.path, h.score) for h in s.search(vector=v, target="image", k=10)])
            out.append([(h.path, h.score) for h in s.search(vector=v, target="text", k=5)])
    return out


def _same_results(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert len(a) == len(b)
    sa, sb = np.array([s for _, s in a]), np.array([s for _, s in b])
    assert np.abs(sa - sb).max() <= 1e-5
    # equal paths rank by rank, except inside a tie (scores within 1e-5), where only the set must agree
    i = 0
    while i < len(a):
        j = i + 1
        while j < len(a) and abs(sa[j] - sa[i]) <= 1e-5:
            j += 1
        assert sorted(p for p, _ in a[i:j]) == sorted(p for p, _ in b[i:j])
        i = j


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_a_clean_build(tmp_path, tiny_model):
    corpus = tmp_path / "corpus"
    files = _corpus(corpus)
    total = len(files)
    clean, killed = tmp_path / "clean", tmp_path / "killed"

    # The clean build: one uninterrupted run.
    proc = subprocess.run(_index_cmd(corpus, clean, tiny_model), capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == total

    # The kill schedule (seeded): during start-up (imports, model, planning); while batches are written
    # (at a random share of the work left, then a random few ms more, so at any point of the
    # decode -> embed -> commit cycle); and right after the last file was written (the index flush, close).
    plan = ["startup", "write", "write", "write", "startup", "write", "write", "write", "write", "write", "write", "end"]
    rng = random.Random(SEED)
    log = []
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"runs kept finishing before their kill: {log}"
        before = _count(killed)
        moment = plan[kills] if before < total else "startup"
        target = before + max(1, int(rng.uniform(0.05, 0.3) * (total - before))) if moment == "write" else total
        p = subprocess.Popen(_index_cmd(corpus, killed, tiny_model), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=cli_env())
        if moment == "startup":
            deadline = time.monotonic() + rng.uniform(0.2, 2.5)
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            while p.poll() is None and _count(killed) < target:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.04 if moment == "write" else 0.2))
        finished = p.poll() is not None
        if not finished:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=120)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        assert "Traceback" not in err, err
        if p.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert p.returncode == 0, err
        log.append((moment, before, _count(killed), "killed" if p.returncode == -signal.SIGKILL else "finished"))
        _db_invariants(killed)
    # most kills landed while the run was writing files, and they did not stop it from moving on
    assert sum(1 for m, b, a, what in log if m == "write" and what == "killed" and a > b) >= 6, log

    proc = subprocess.run(_index_cmd(corpus, killed, tiny_model), capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert final["failed"] == 0 and final["interrupted"] is False

    # Every file is in the store exactly once, ok, with one vector.
    con = _db(killed)
    try:
        rows = con.execute("SELECT path, status FROM items").fetchall()
        assert sorted(p for p, _ in rows) == sorted(files)
        assert {s for _, s in rows} == {"ok"}
        assert con.execute("SELECT count(*) FROM vectors").fetchone()[0] == total
        db_ids = {m: sorted(i for (i,) in con.execute(
            "SELECT v.item_id FROM vectors v JOIN items i ON i.id = v.item_id WHERE i.modality = ?", (m,)))
            for m in ("image", "text")}
        gens = dict(con.execute("SELECT key, value FROM meta WHERE key LIKE 'gen:%'").fetchall())
    finally:
        con.close()
    # Every stored vector is in its FAISS index file, and nothing else is.
    for m, ids in db_ids.items():
        mi = ModalityIndex.load(killed / "index", m)
        assert sorted(mi.ids().tolist()) == ids
        assert mi.gen == int(gens[f"gen:{m}"])
    with Storage(killed, read_only=True) as s:
        assert s.check() == []
    leftovers = [p.name for p in (killed / "index").iterdir() if p.suffix not in (".faiss", ".json")]
    assert leftovers == []  # temp files of saves that were killed are deleted by the next save

    # Queries give what the clean build gives.
    texts = ["a dog in the rain", "city at night", "bread and music", "note 7"]
    with Storage(clean, read_only=True) as s:
        dim = s.dim
    vectors = np.random.default_rng(SEED).standard_normal((6, dim)).astype(np.float32)
    got, want = _queries(killed, texts, vectors), _queries(clean, texts, vectors)
    assert len(got) == len(want) == len(texts) + 2 * len(vectors)
    for g, w in zip(got, want):
        assert g, "a query found nothing"
        _same_results(g, w)
    print(f"\nkill log (moment, items before, items after, outcome): {log}")


# ------------------------------------------------------------------ doctor

runner = CliRunner()


def _doctor(store: Path, *extra: str, code: int) -> dict:
    res = runner.invoke(app, ["doctor", "--store", str(store), "--json", *extra], catch_exceptions=False)
    assert res.exit_code == code, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert set(report) == {"ok", "problems", "repaired"} and report["ok"] is (code == 0)
    assert all(set(p) == {"kind", "detail"} and p["detail"] for p in report["problems"])
    return report


@pytest.fixture
def small_store(tmp_path, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    imgs = [write_image(media / f"i{i:02d}.png", 300 + i) for i in range(20)]
    for i in range(5):
        (media / f"t{i}.txt").write_text(f"text number {i} about {TEXT_WORDS[i]}", encoding="utf-8")
    store = tmp_path / "s"
    with xsearch.open(store, model=tiny_model) as s:
        assert s.index([media]).embedded == 25
    return {"media": media, "store": store, "images": imgs, "model": tiny_model}


def test_doctor_healthy_store_json(small_store):
    assert _doctor(small_store["store"], code=0) == {"ok": True, "problems": [], "repaired": False}
    res = runner.invoke(app, ["doctor", "--store", str(small_store["store"])], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.strip() == "ok"


def test_doctor_half_written_index_file_and_repair(small_store):
    store = small_store["store"]
    faiss_file = store / "index" / "image.faiss"
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])  # a write cut off half way
    report = _doctor(store, code=1)
    (p,) = report["problems"]
    assert p["kind"] == "store" and "image.faiss" in p["detail"] and "half-written" in p["detail"]
    assert "`xsearch doctor --repair`" in p["detail"]
    # without --repair the human output says how to fix it
    res = runner.invoke(app, ["doctor", "--store", str(store)], catch_exceptions=False)
    assert res.exit_code == 1 and "--repair" in res.stdout
    fixed = _doctor(store, "--repair", code=0)
    assert fixed == {"ok": True, "problems": [], "repaired": True}
    assert faiss_file.stat().st_size == len(data)
    assert _doctor(store, code=0)["ok"]
    with xsearch.open(store, create=False) as s:
        img = small_store["images"][3]
        assert s.search(image=str(img), target="image", k=1)[0].path == str(img)


def test_doctor_finds_and_repair_deletes_temp_files_of_a_killed_save(small_store):
    store = small_store["store"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a save killed mid-write leaves in its temp file's name
    tmp = store / "index" / f".image.faiss.{dead.pid}.140000.tmp"
    tmp.write_bytes(b"half of an index")
    live = store / "index" / f".image.faiss.{os.getpid()}.140001.tmp"  # a save in progress: not touched
    live.write_bytes(b"being written")
    (p,) = _doctor(store, code=1)["problems"]
    assert p["kind"] == "store" and tmp.name in p["detail"] and "killed" in p["detail"]
    assert _doctor(store, "--repair", code=0)["repaired"] is True
    assert not tmp.exists() and live.exists()
    live.unlink()


def test_doctor_store_versus_index_disagreement(small_store, tmp_path):
    """An index file from an older state of the store (e.g. restored from an old backup) is caught."""
    store, media = small_store["store"], small_store["media"]
    old = tmp_path / "old_index"
    shutil.copytree(store / "index", old)
    for i in range(3):
        write_image(media / f"new{i}.png", 900 + i)
    with xsearch.open(store) as s:
        assert s.index([media]).embedded == 3
    shutil.copy(old / "image.faiss", store / "index" / "image.faiss")
    shutil.copy(old / "image.json", store / "index" / "image.json")
    report = _doctor(store, code=1)
    (p,) = report["problems"]
    assert "image.faiss" in p["detail"] and "3 missing" in p["detail"]
    assert _doctor(store, "--repair", code=0)["repaired"] is True
    with Storage(store, read_only=True) as s:
        assert s.check() == [] and s.counts()["image"] == 23


def test_doctor_vanished_files(small_store, tiny_model):
    store = small_store["store"]
    gone = small_store["images"][5]
    gone.unlink()
    report = _doctor(store, code=1)
    (p,) = report["problems"]
    assert p["kind"] == "vanished" and str(gone) in p["detail"] and "no longer on disk" in p["detail"]
    # --repair rebuilds indexes only; the next index run drops the vanished file
    assert _doctor(store, "--repair", code=1)["repaired"] is False
    proc = run_cli("index", "--store", store, "--no-progress", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["removed"] == 1
    assert _doctor(store, code=0)["ok"]


def test_doctor_sqlite_integrity_check(small_store):
    store = small_store["store"]
    db = store / "xsearch.db"
    con = sqlite3.connect(db)
    try:
        page = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_items_content_hash'").fetchone()[0]
        chash = con.execute("SELECT content_hash FROM items ORDER BY id LIMIT 1").fetchone()[0]
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        con.close()
    data = bytearray(db.read_bytes())
    lo = (root - 1) * page
    at = data.find(chash.encode(), lo, lo + page)
    assert at >= 0
    data[at: at + len(chash)] = b"f" * len(chash)  # one key of one SQL index no longer matches its row
    db.write_bytes(bytes(data))
    report = _doctor(store, code=1)
    assert report["problems"] and all(p["kind"] == "database" for p in report["problems"])
    assert "integrity_check" in report["problems"][0]["detail"] and "backup" in report["problems"][0]["detail"]
    # an index rebuild does not pretend to fix a damaged database
    assert _doctor(store, "--repair", code=1)["repaired"] is False
