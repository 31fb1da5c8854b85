"""Ctrl-C (SIGINT) during `xsearch index`: a clean stop that keeps every committed batch."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.corpus import write_image


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigint_stops_cleanly_and_next_run_continues(tmp_path, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    n = 300
    for i in range(n):
        write_image(media / f"{i:04d}.png", i, size=(64, 48))
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "xsearch.cli.main", "index", str(media), "--store", str(store),
           "--model", tiny_model, "--no-progress", "--json", "--batch-size", "4"]
    # The run must receive Ctrl-C even when this process was launched with SIGINT ignored (which children inherit).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _count(store / "xsearch.db") < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    if proc.returncode == 130:  # interrupted mid-run (the usual case)
        report = json.loads(out)
        assert report["interrupted"] is True
        assert 0 < report["embedded"] < n
    else:  # the run had already finished when the signal came
        assert proc.returncode == 0, err
    doctor = subprocess.run([sys.executable, "-m", "xsearch.cli.main", "doctor", "--json", "--store", str(store)],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(doctor.stdout)["ok"] is True, doctor.stdout
    rest = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr
    final = json.loads(rest.stdout)
    assert final["embedded"] + final["unchanged"] == n
    assert _count(store / "xsearch.db") == n
    os.sync()


def test_ctrl_c_between_a_commit_and_its_index_update_waits_for_the_update(tmp_path, monkeypatch):
    """A real SIGINT delivered right after a batch commits: the put finishes (index updated) first."""
    import numpy as np
    import pytest

    from xsearch.storage import Storage

    store = Storage(tmp_path / "s")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    store.add_vectors(x[:4], modality="image", paths=[f"/a/{i}" for i in range(4)])
    real_apply = Storage._apply

    def apply_after_a_signal(self, changes, gens):
        os.kill(os.getpid(), signal.SIGINT)  # arrives between the commit and the in-memory index update
        time.sleep(0.05)
        return real_apply(self, changes, gens)

    monkeypatch.setattr(Storage, "_apply", apply_after_a_signal)
    # Python's Ctrl-C handler, whatever this process was started with: a process launched with SIGINT
    # ignored (a background shell job, nohup) would otherwise ignore the signal this test sends.
    launched_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.add_vectors(x[4:], modality="image", paths=[f"/a/{i}" for i in range(4, 8)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, launched_with)
    monkeypatch.undo()
    assert store.index_info()["image"]["ntotal"] == 8  # the committed batch reached the index
    store.flush()
    assert store.check() == []
    store.close()


def test_the_ctrl_c_tests_pass_when_launched_with_sigint_ignored():
    """As under a background shell job or nohup: the process starts with SIGINT ignored."""
    ignore_then_run = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                       "os.execv(sys.executable, [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', "
                       f"{__file__ + '::test_ctrl_c_between_a_commit_and_its_index_update_waits_for_the_update'!r}])")
    run = subprocess.run([sys.executable, "-c", ignore_then_run], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
