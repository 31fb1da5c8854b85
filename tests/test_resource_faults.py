"""Resource faults: a full disk, a read-only store, and memory over a long run.

Each fault is real, in a real `xsearch` process: the disk fills up through RLIMIT_FSIZE (with SIGXFSZ ignored,
every write past the limit fails with EFBIG, as on a full disk); the store is made read-only for root too
(a read-only bind mount, else `chattr +i`; as another user, plain permissions). Each must end in a clear
error (exit status 1, the store named, what to do, no traceback), an intact store (`xsearch doctor` ok),
and a next run that carries on. Memory: the peak RSS of indexing 2,000 small files and a 20-minute
48 kHz stereo WAV stays within a generous bound of indexing 200 files (a whole-file decode of that WAV
alone would add 440 MB; see bench/memory.py for 10,000 files and a 2-hour WAV).
"""
from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import cli_env, run_cli, write_long_wav, xsearch_cmd
from tests.corpus import write_image
from xsearch.errors import StoreError
from xsearch.storage import Storage


def _file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes in any file fail with EFBIG (a full disk, for this process)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _images(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    return [write_image(folder / f"p{i:04d}.png", seed + i, size=(48, 40)) for i in range(n)]


def _count(store: Path) -> int:
    with Storage(store, read_only=True) as s:
        return sum(s.counts().values())


def _clear_error(proc, store: Path, *words: str) -> str:
    err = " ".join(proc.stderr.split())  # undo the terminal's line wrapping
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    assert err.startswith("error: ") and str(store) in err, err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    return err


def _two_folders(tmp_path: Path, model: str, n_first: int, n_more: int, *, more_seed: int):
    """Two image folders, the store's path and the CLI options every run here passes."""
    first, more = tmp_path / "m" / "a", tmp_path / "m" / "b"
    _images(first, n_first, 0)
    _images(more, n_more, more_seed)
    store = tmp_path / "s"
    return first, more, store, ("--store", store, "--model", model, "--no-progress", "--json")


def _doctor_ok(store: Path) -> None:
    proc = run_cli("doctor", "--json", "--store", store)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"ok": True, "problems": [], "repaired": False}, \
        proc.stdout + proc.stderr


def test_disk_full_during_an_index_run(tmp_path, tiny_model):
    first, more, store, common = _two_folders(tmp_path, tiny_model, 30, 150, more_seed=1000)
    assert run_cli("index", first, *common).returncode == 0
    before = _count(store)
    # The database may not grow past its present size: the write-ahead log fills up after a few batches.
    limit = (store / "xsearch.db").stat().st_size
    full = run_cli("index", first, more, *common, preexec_fn=_file_size_limit(limit))
    _clear_error(full, store, "disk", "free some space", "xsearch index")
    # intact: whatever was committed is there, the rest is not, the indexes agree with the database
    after = _count(store)
    assert before <= after < 180
    _doctor_ok(store)
    # the next run (with room again) continues where that one stopped
    again = run_cli("index", first, more, *common)
    assert again.returncode == 0, again.stderr
    rep = json.loads(again.stdout)
    assert rep["embedded"] == 180 - after and rep["unchanged"] == after and rep["failed"] == 0
    _doctor_ok(store)
    assert _count(store) == 180


def test_disk_full_while_saving_an_index(tmp_path, tiny_model):
    """The FAISS index file cannot be written: a clear error, the old state kept, `--repair` later fixes it."""
    store = tmp_path / "s"
    with xsearch.open(store, model=tiny_model) as s:
        vecs = np.random.default_rng(0).standard_normal((2000, 24)).astype(np.float32)
        s.add_vectors(vecs, modality="image", paths=[f"/byo/{i}" for i in range(2000)])
    index_file = store / "index" / "image.faiss"
    size = index_file.stat().st_size
    assert size > 100_000
    index_file.unlink()  # e.g. lost: doctor sees it
    assert run_cli("doctor", "--store", store).returncode == 1
    # room for SQLite's 32 kB shared-memory file, not for the index
    proc = run_cli("doctor", "--repair", "--store", store, preexec_fn=_file_size_limit(100_000))
    _clear_error(proc, store, "image.faiss", "cannot write the index", "disk space")
    assert not index_file.exists() and not [p for p in index_file.parent.iterdir() if p.name.endswith(".tmp")]
    fixed = run_cli("doctor", "--repair", "--json", "--store", store)
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["repaired"] is True
    assert index_file.stat().st_size == size
    _doctor_ok(store)


@contextmanager
def _read_only(folder: Path):
    """Make `folder` and everything in it unwritable, for root too; undone on exit.

    root ignores permission bits, so as root: a read-only bind mount of the folder on itself (EROFS,
    what a store on read-only media gives), else the immutable attribute (`chattr +i`: EPERM for everyone).
    Any other user: plain permission bits (EACCES)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in sorted(modes, key=lambda p: -len(p.parts)):
            p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield "permissions"
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode == 0:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder), str(folder)], capture_output=True)
        try:
            assert ro.returncode == 0, ro.stderr
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    immutable = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True)
    assert immutable.returncode == 0, (
        f"cannot make {folder} read-only as root: mount --bind said {bind.stderr!r}, chattr said {immutable.stderr!r}")
    try:
        yield "chattr +i"
    finally:
        subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)


def test_read_only_store(tmp_path, tiny_model):
    first, more, store, common = _two_folders(tmp_path, tiny_model, 10, 10, more_seed=500)
    assert run_cli("index", first, *common).returncode == 0
    snapshot = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with _read_only(store) as how:
        with pytest.raises(OSError):  # it truly is read-only, for this (root) process too
            (store / "probe").write_bytes(b"x")
        proc = run_cli("index", first, more, *common)
        _clear_error(proc, store, "read-only", "make it writable")
        # Searching needs no writes: it works on read-only media (the database opened as immutable).
        found = run_cli("query", "--image", first / "p0003.png", "--store", store, "--model", tiny_model,
                        "--json", "-k", "3")
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)["results"]
        assert len(hits) == 3 and hits[0]["path"].endswith("p0003.png")
        st = run_cli("status", "--store", store, "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["counts"] == {"image": 10}, st.stderr
    assert how
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == snapshot  # untouched
    _doctor_ok(store)
    again = run_cli("index", first, more, *common)
    assert again.returncode == 0 and json.loads(again.stdout)["embedded"] == 10, again.stderr
    _doctor_ok(store)


def test_store_opened_read_only_through_the_api(tmp_path, tiny_model):
    media = tmp_path / "m"
    _images(media, 3, 0)
    with xsearch.open(tmp_path / "s", model=tiny_model) as s:
        s.index([media])
    write_image(media / "new.png", 99)
    with xsearch.open(tmp_path / "s", read_only=True) as s:
        with pytest.raises(StoreError, match="read-only"):
            s.index([media])
        with pytest.raises(StoreError, match="read-only"):
            s.remove([media / "p0000.png"])
        assert len(s.search(image=str(media / "p0001.png"), target="image", k=5)) == 3  # reading works
    with xsearch.open(tmp_path / "s") as s:
        assert s.index([media]).embedded == 1


# ------------------------------------------------------------------ memory

# Started by a fresh small interpreter: Linux seeds a child's ru_maxrss with the RSS of the process it was
# forked from (here pytest, hundreds of MB), so the helper forks the command and reads exactly its wait4 rusage.
_PEAK = r"""
import json, os, subprocess, sys
p = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
out, err = p.stdout.read(), p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "maxrss_mb": ru.ru_maxrss / 1024,
                  "out": out.decode(errors="replace"), "err": err.decode(errors="replace")[-3000:]}))
"""


def _peak_index(paths: list[Path], store: Path, model: str) -> tuple[float, dict]:
    cmd = xsearch_cmd() + ["index", *map(str, paths), "--store", str(store), "--model", model, "--no-progress", "--json"]
    r = json.loads(subprocess.run([sys.executable, "-S", "-c", _PEAK, json.dumps(cmd)], capture_output=True, text=True,
                                  env=cli_env(), timeout=600, check=True).stdout)
    assert r["rc"] == 0, r["err"]
    return r["maxrss_mb"], json.loads(r["out"])


@pytest.mark.slow
def test_peak_memory_bounded_over_many_files_and_a_long_recording(tmp_path, tiny_model):
    from PIL import Image

    rng = np.random.default_rng(0)
    corpus = tmp_path / "files"
    for i in range(2000):  # folders of 200: the first folder is the small run
        folder = corpus / f"part{i // 200:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
        else:
            (folder / f"note{i:05d}.txt").write_text(f"note {i}: " + " ".join(map(str, rng.integers(0, 999, 6))))
    (tmp_path / "long").mkdir()
    long_wav = write_long_wav(tmp_path / "long" / "twenty_minutes.wav", 20 * 60, sr=48_000, channels=2)
    assert long_wav.stat().st_size > 200e6  # 20 min of 48 kHz stereo: 440 MB as float32 samples

    small_mb, small = _peak_index([corpus / "part00"], tmp_path / "s_small", tiny_model)
    big_mb, big = _peak_index([corpus, long_wav.parent], tmp_path / "s_big", tiny_model)
    assert (small["embedded"], big["embedded"]) == (200, 2001)
    growth = big_mb - small_mb
    print(f"\npeak RSS: 200 files {small_mb:.0f} MB; 2,000 files + 20-min WAV {big_mb:.0f} MB (+{growth:.0f} MB)")
    # 10x the files and a recording whose samples alone would take 440 MB: generously bounded growth
    # (no per-file leak beyond ~80 kB a file, no whole-file decode of the recording)
    assert growth < 150, f"peak RSS grew by {growth:.0f} MB"
    long_item = Storage(tmp_path / "s_big", read_only=True)
    try:
        it = long_item.item_by_path(str(long_wav))
        assert it.status == "ok" and it.facts.get("duration") == pytest.approx(1200, abs=1)
    finally:
        long_item.close()
