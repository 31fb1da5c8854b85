"""Concurrent use: queries (other processes and threads) while an index run writes, and two index runs on one
store (the second fails with a clear message or waits; they never interleave; a dead holder never blocks).

Real processes and threads, real SQLite (WAL) and FAISS files, the tiny fixture model. Where a test needs an
index run to be at a known point, the run's own progress hook (Store.index(progress=...)) pauses it there.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import cli_env, run_cli, xsearch_cmd
from tests.corpus import write_image
from xsearch.storage import Storage
from xsearch.storage.lock import StoreLockedError, holder_pid, is_locked

ROOT = Path(__file__).resolve().parents[1]

# An index run in its own process, through the library's progress hook: it writes "<gate>.started" when
# the run starts (the writer lock is held by then), sleeps `throttle` seconds per committed batch, and
# pauses while "<gate>.hold" exists (at the start, or once `pause_at` of the files are done).
WRITER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import xsearch

    store, folder, model, gate, throttle, pause_at = sys.argv[1:7]
    throttle, pause_at = float(throttle), float(pause_at)

    def hold():
        deadline = time.time() + 240
        while os.path.exists(gate + ".hold") and time.time() < deadline:
            time.sleep(0.01)

    class Hook:
        done = total = 0
        def start(self, total, description):
            self.total = total
            open(gate + ".started", "w").close()
            if pause_at == 0:
                hold()
        def advance(self, n=1):
            self.done += n
            time.sleep(throttle)
            if pause_at and self.done >= pause_at * self.total:
                hold()
        def stop(self):
            pass

    with xsearch.open(store, model=model) as s:
        report = s.index([folder], progress=Hook(), batch_size=4)
    print(json.dumps(report.to_dict()))
""").format(root=str(ROOT))


def _writer(tmp: Path, store: Path, folder: Path, model: str, *, throttle: float, pause_at: float) -> tuple[subprocess.Popen, Path]:
    script = tmp / "writer.py"
    script.write_text(WRITER)
    gate = tmp / f"gate{time.monotonic_ns()}"
    (gate.parent / (gate.name + ".hold")).touch()
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(folder), model, str(gate), str(throttle),
                             str(pause_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    return proc, gate


def _wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _release(gate: Path) -> None:
    (gate.parent / (gate.name + ".hold")).unlink()


def _started(gate: Path) -> bool:
    return (gate.parent / (gate.name + ".started")).exists()


def _corpus(root: Path, n: int, seed: int) -> list[str]:
    root.mkdir(parents=True)
    return [str(write_image(root / f"p{i:04d}.png", seed + i, size=(40, 32))) for i in range(n)]


def _count(store: Path) -> int:
    with Storage(store, read_only=True) as s:
        return sum(s.counts().values())


def _check_hits(hits, known: set[str], k: int) -> None:
    assert len(hits) <= k
    paths = [h.path for h in hits]
    assert len(set(paths)) == len(paths), "an item came back twice"
    assert set(paths) <= known, f"results outside the indexed files: {set(paths) - known}"
    scores = [h.score for h in hits]
    assert all(math.isfinite(s) and -1.001 <= s <= 1.001 for s in scores)
    assert scores == sorted(scores, reverse=True)


def test_queries_while_an_index_run_writes(tmp_path, tiny_model):
    seed_dir, big = tmp_path / "seed", tmp_path / "big"
    seed = _corpus(seed_dir, 20, 100)
    (seed_dir / "note.txt").write_text("a red bicycle leaning on a wall", encoding="utf-8")
    seed.append(str(seed_dir / "note.txt"))
    more = _corpus(big, 300, 5000)
    known = set(seed) | set(more)
    store = tmp_path / "store"
    with xsearch.open(store, model=tiny_model) as s:
        assert s.index([seed_dir]).embedded == len(seed)

    writer, gate = _writer(tmp_path, store, big, tiny_model, throttle=0.08, pause_at=0.5)  # pauses half way

    errors: list[BaseException] = []
    stop = threading.Event()
    done = {"vector": 0, "text": 0, "seen": 0}

    def vector_searches() -> None:
        try:
            rng = np.random.default_rng(0)
            with xsearch.open(store, read_only=True) as s:
                dim = s.storage.dim
                while not stop.is_set():
                    s.storage.refresh()  # see what the writer committed since
                    v = rng.standard_normal(dim).astype(np.float32)
                    q = v / np.linalg.norm(v)
                    for target, k in (("image", 10), ("all", 25)):
                        hits = s.search(vector=v, target=target, k=k)
                        _check_hits(hits, known, k)
                        assert hits
                        # each score is the cosine with that item's stored vector: no half-written index
                        stored = s.storage.get_vectors([h.id for h in hits])
                        assert np.allclose(stored @ q, [h.score for h in hits], atol=2e-3)
                    done["seen"] = max(done["seen"], sum(s.storage.counts().values()))
                    done["vector"] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def text_searches() -> None:
        try:
            with xsearch.open(store, read_only=True) as s:
                while not stop.is_set():
                    s.storage.refresh()
                    _check_hits(s.search(text="a red bicycle", k=15), known, 15)
                    _check_hits(s.search(like=seed[0], target="image", k=5), known, 5)
                    done["text"] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=vector_searches), threading.Thread(target=text_searches)]
    for t in threads:
        t.start()
    try:
        # Once the writer has committed some of the big folder, query it from other processes too.
        _wait_for(lambda: _started(gate) and _count(store) > len(seed) + 20, writer)
        cmds = [("--text", "a red bicycle", "-k", 30), ("--image", more[0], "--target", "image", "-k", 10),
                ("--like", seed[1], "-k", 40)]
        queries = [subprocess.Popen(xsearch_cmd() + ["query", *map(str, c), "--json", "--store", str(store)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
                   for c in cmds]
        outs = [q.communicate(timeout=240) for q in queries]
        mid_run = writer.poll() is None  # the writer is paused half way: these queries overlapped its run
        _release(gate)
        w_out, w_err = writer.communicate(timeout=240)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=240)
        if writer.poll() is None:
            writer.kill()
    assert not errors, errors[0]
    assert mid_run
    assert writer.returncode == 0, w_err
    assert json.loads(w_out.strip().splitlines()[-1])["embedded"] == len(more)
    for q, (out, err) in zip(queries, outs):
        assert q.returncode == 0 and "Traceback" not in err, err
        results = json.loads(out)["results"]
        assert results and {r["path"] for r in results} <= known
        assert all(-1.001 <= r["score"] <= 1.001 for r in results)
    assert done["vector"] > 0 and done["text"] > 0
    # after the run: everything is visible, and the store is consistent
    with xsearch.open(store, read_only=True) as s:
        assert s.storage.counts() == {"image": 320, "text": 1}
        assert len(s.search(vector=np.ones(s.storage.dim, np.float32), target="image", k=1000)) == 320
        assert s.storage.check() == []


def test_a_second_index_run_exits_with_a_clear_message_or_waits(tmp_path, tiny_model):
    media = tmp_path / "m"
    files = _corpus(media, 40, 1)
    store = tmp_path / "store"
    first, gate = _writer(tmp_path, store, media, tiny_model, throttle=0.0, pause_at=0)  # holds at its start
    try:
        _wait_for(lambda: _started(gate), first)
        assert is_locked(store) and holder_pid(store) == first.pid

        # no --wait: exits at once, naming the holder, without touching the store
        second = run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
        assert second.returncode == 1 and "Traceback" not in second.stderr
        msg = " ".join(second.stderr.split())
        assert f"another xsearch index (pid {first.pid}) is writing to {store}; wait for it or pass --wait" in msg
        # --wait: waits for the first run to finish, then finds nothing left to do
        err_file = tmp_path / "third.err"
        with open(err_file, "w") as err:
            third = subprocess.Popen(xsearch_cmd() + ["index", str(media), "--store", str(store), "--model", tiny_model,
                                                      "--no-progress", "--json", "--wait"],
                                     stdout=subprocess.PIPE, stderr=err, text=True, env=cli_env())
        _wait_for(lambda: "waiting for another xsearch index" in err_file.read_text(), third)
        assert f"pid {first.pid}" in err_file.read_text()
        assert third.poll() is None
        _release(gate)
        out1, err1 = first.communicate(timeout=240)
        out3, _ = third.communicate(timeout=240)
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert first.returncode == 0, err1
    assert json.loads(out1.strip().splitlines()[-1])["embedded"] == len(files)
    assert third.returncode == 0, err_file.read_text()
    rep3 = json.loads(out3)
    assert (rep3["embedded"], rep3["unchanged"]) == (0, len(files))  # it ran after the first, not beside it
    assert not is_locked(store)
    with Storage(store, read_only=True) as s:
        assert s.counts() == {"image": len(files)} and s.check() == []


def test_a_killed_holder_does_not_block(tmp_path, tiny_model):
    media = tmp_path / "m"
    files = _corpus(media, 12, 1)
    store = tmp_path / "store"
    dead, gate = _writer(tmp_path, store, media, tiny_model, throttle=0.0, pause_at=0)
    try:
        _wait_for(lambda: _started(gate), dead)
        assert holder_pid(store) == dead.pid
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.communicate(timeout=60)
    assert (store / "index.lock").exists() and holder_pid(store) == dead.pid  # the stale file stays...
    assert not is_locked(store)  # ...but the kernel dropped the lock with its process
    proc = run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == len(files)


def test_writers_in_threads_of_one_process(tmp_path, tiny_model):
    """In one process the lock is per store: a second writer thread fails (or waits with wait=True)."""
    media = tmp_path / "m"
    _corpus(media, 6, 1)
    entered, release = threading.Event(), threading.Event()

    class Hold:
        def start(self, total, description):
            entered.set()
            release.wait(60)

        def advance(self, n=1):
            pass

        def stop(self):
            pass

    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("first", store.index([media], progress=Hold())))
        t.start()
        assert entered.wait(60)
        with pytest.raises(StoreLockedError, match="^another thread of this process is writing to .*wait=True") as busy:
            store.index([media])
        assert "pid" not in str(busy.value) and "--wait" not in str(busy.value)
        with pytest.raises(StoreLockedError):
            store.add_vectors(np.ones((1, 24), np.float32), modality="image", paths=["/x"])
        waited = {}
        t2 = threading.Thread(target=lambda: waited.setdefault(
            "second", store.index([media], wait=True, on_wait=lambda line: waited.setdefault("line", line))))
        t2.start()
        _wait_for(lambda: "line" in waited)
        release.set()
        t.join(60)
        t2.join(60)
        assert result["first"].embedded == 6
        assert (waited["second"].embedded, waited["second"].unchanged) == (0, 6)
