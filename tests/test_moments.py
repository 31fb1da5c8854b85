"""Moments: the place inside long audio, video and IMU recordings.

Real files made here (tests/helpers/recordings.py), the tiny random-weight model, real SQLite and FAISS.
The tiny model's vectors mean nothing, but identical input gives identical vectors: a query by the event
itself (or by the span of an identical copy) must find the window that holds it, first.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import xsearch
from tests.awkward import cli_env, xsearch_cmd
from tests.helpers.recordings import (
    SR, event_sound, write_imu_with_pattern, write_video_with_scene, write_wav_with_event,
)
from xsearch.cli.main import app
from xsearch.engine.preprocess.moments import spans, windows
from xsearch.errors import UsageError
from xsearch.query.moments import format_span, fragment
from xsearch.storage import Storage
from xsearch.storage.faiss_index import ModalityIndex


def _store(tmp_path: Path, tiny_model: str):
    return xsearch.open(tmp_path / "store", model=tiny_model)


def _covers(hit, start: float, end: float) -> bool:
    return hit.start is not None and hit.start <= start + 1e-6 and hit.end >= end - 1e-6


def _seg_rows(store_dir: Path) -> list[tuple]:
    con = sqlite3.connect(store_dir / "xsearch.db")
    try:
        return con.execute("SELECT s.id, i.path, s.modality, s.start, s.\"end\" FROM segments s "
                           "JOIN items i ON i.id = s.item_id ORDER BY s.id").fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------- finding the moment


def test_a_sound_event_in_a_long_recording_is_found_at_its_time(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "long.wav", 90, event_at=62)
    write_wav_with_event(media / "other.wav", 30, event_at=None, seed=1)
    sf.write(tmp_path / "event.wav", event_sound(), SR)
    write_wav_with_event(tmp_path / "copy.wav", 20, event_at=10, seed=2)
    with _store(tmp_path, tiny_model) as s:
        report = s.index([media], moments=True)
        assert report.segments == 45 + 15 and report.media_seconds == pytest.approx(120)
        for query in (str(tmp_path / "event.wav"), f"{tmp_path / 'copy.wav'}#t=10,12"):
            hits = s.search(audio=query, moments=True, k=3)
            assert hits[0].path == str(media / "long.wav") and _covers(hits[0], 62, 64), hits
            assert hits[0].score > 0.999 and hits[0].end - hits[0].start < 10
        # Without moments the same store answers with whole files, as before.
        whole = s.search(audio=str(tmp_path / "event.wav"), k=3)
        assert {h.start for h in whole} == {None} and {h.path for h in whole} == {str(media / "long.wav"), str(media / "other.wav")}


def test_like_a_span_of_an_indexed_recording_looks_up_its_windows(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "a.wav", 40, event_at=8)
    write_wav_with_event(media / "b.wav", 40, event_at=30, seed=1)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        hits = s.search(like=f"{media / 'a.wav'}#t=8,10", moments=True, k=2)
        # the event's other occurrence comes first; the span asked with is never returned
        assert hits[0].path == str(media / "b.wav") and _covers(hits[0], 30, 32), hits
        assert not any(h.path == str(media / "a.wav") and h.start < 10 and h.end > 8 for h in hits)


@pytest.mark.parametrize("audio", [True, False], ids=["with-sound", "silent"])
def test_a_scene_inserted_in_a_video_is_found_at_its_time(tmp_path, tiny_model, audio):
    media = tmp_path / "media"
    media.mkdir()
    write_video_with_scene(media / "long.avi", 16, scene_at=10, audio=audio)
    write_video_with_scene(media / "plain.avi", 8, scene_at=None, audio=audio, seed=3)
    write_video_with_scene(tmp_path / "copy.avi", 4, scene_at=0, audio=audio, seed=5)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        hits = s.search(video=f"{tmp_path / 'copy.avi'}#t=0,2", moments=True, k=3)
        assert hits[0].path == str(media / "long.avi") and _covers(hits[0], 10, 12), hits
        assert hits[0].score > 0.999 and hits[0].modality == "video"
        kinds = {m for _, _, m, _, _ in _seg_rows(tmp_path / "store")}
        assert kinds == ({"video", "audio"} if audio else {"video"})
        if audio:  # the sound track is cut as audio windows: the sound under the scene finds it too
            sf.write(tmp_path / "event.wav", event_sound(), SR)
            hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=1)
            assert hits[0].path == str(media / "long.avi") and _covers(hits[0], 10, 12), hits


def test_an_imu_pattern_in_a_long_recording_is_found_at_its_time(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_imu_with_pattern(media / "run.csv", 120, pattern_at=70)
    write_imu_with_pattern(media / "walk.csv", 60, pattern_at=None, seed=1)
    write_imu_with_pattern(tmp_path / "clip.csv", 10, pattern_at=0, seed=2)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        hits = s.search(imu=f"{tmp_path / 'clip.csv'}#t=0,5", moments=True, k=3)
        assert hits[0].path == str(media / "run.csv") and _covers(hits[0], 70, 75), hits
        assert hits[0].score > 0.99


def test_adjacent_windows_that_score_alike_merge_into_one_moment(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    x = (0.05 * np.random.default_rng(0).standard_normal(60 * SR)).astype(np.float32)
    ev = event_sound()
    for at in (20, 22, 24):  # the same 2 s three times in a row: three identical windows
        x[at * SR:(at + 2) * SR] = ev
    sf.write(media / "long.wav", x, SR)
    sf.write(tmp_path / "event.wav", ev, SR)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=5)
        assert (hits[0].start, hits[0].end) == (20, 26)
        assert all(not (h.start < 26 and h.end > 20) for h in hits[1:])


# ---------------------------------------------------------------- segments live and die with their file


def test_segments_follow_a_rename_without_re_embedding_and_leave_with_their_file(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "long.wav", 30, event_at=14)
    sf.write(tmp_path / "event.wav", event_sound(), SR)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        before = _seg_rows(tmp_path / "store")
        (media / "long.wav").rename(media / "renamed.wav")
        report = s.index([media])
        assert (report.moved, report.embedded, report.segments) == (1, 0, 0)
        after = _seg_rows(tmp_path / "store")
        assert [r[0] for r in after] == [r[0] for r in before] and {r[1] for r in after} == {str(media / "renamed.wav")}
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=1)
        assert hits[0].path == str(media / "renamed.wav") and _covers(hits[0], 14, 16)

        (media / "renamed.wav").unlink()
        s.index([media])
        assert _seg_rows(tmp_path / "store") == []
        assert s.search(audio=str(tmp_path / "event.wav"), moments=True) == []
    mi = ModalityIndex.load(tmp_path / "store" / "index", "audio#seg")
    assert mi.ntotal == 0


def test_a_changed_file_gets_its_windows_again(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "long.wav", 30, event_at=4)
    sf.write(tmp_path / "event.wav", event_sound(), SR)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        write_wav_with_event(media / "long.wav", 40, event_at=26)
        os.utime(media / "long.wav", ns=(time.time_ns(), time.time_ns() + 10**9))
        assert s.index([media]).segments == 20
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=1)
        assert _covers(hits[0], 26, 28), hits
        assert len(_seg_rows(tmp_path / "store")) == 20
        assert s.storage.check() == []


def test_moments_are_remembered_per_folder_and_no_moments_drops_the_windows(tmp_path, tiny_model):
    on, off = tmp_path / "on", tmp_path / "off"
    on.mkdir()
    off.mkdir()
    write_wav_with_event(on / "a.wav", 10, event_at=None)
    write_wav_with_event(off / "b.wav", 10, event_at=None, seed=1)
    with _store(tmp_path, tiny_model) as s:
        s.index([on], moments=True)
        s.index([off])
        report = s.index()  # every folder, each with its own setting
        assert (report.embedded, report.unchanged) == (0, 2)
        assert {r[1] for r in _seg_rows(tmp_path / "store")} == {str(on / "a.wav")}
        report = s.index([on], window=["audio=4s/2s"])  # a new window re-cuts that folder's files
        assert report.embedded == 1 and [(r[3], r[4]) for r in _seg_rows(tmp_path / "store")] == \
            [(0, 4), (2, 6), (4, 8), (6, 10)]
        report = s.index([on], moments=False)
        assert (report.embedded, report.unchanged) == (0, 1)  # the windows go, the file is not embedded again
        assert _seg_rows(tmp_path / "store") == [] and s.storage.check() == []
        assert len(s.search(text="anything")) == 2  # the whole-file vectors stay
        with pytest.raises(UsageError, match="--moments"):
            s.index(moments=True)


# ---------------------------------------------------------------- window edges


def test_window_edges_short_file_last_partial_window_and_tiny_tail(tmp_path):
    assert spans(1.2, 2, 2) == [(0, 1.2)]  # shorter than one window: one window, the whole file
    assert spans(5, 2, 2) == [(0, 2), (2, 4), (4, 5)]  # the last partial window is kept
    assert spans(4.4, 2, 2) == [(0, 2), (2, 4)]  # a tail under a quarter of a window is dropped
    assert spans(5, 2, 1) == [(0, 2), (1, 3), (2, 4), (3, 5)]  # nothing past a window that reached the end
    for seconds, expect in ((1.2, [(0, 1.2)]), (5, [(0, 2), (2, 4), (4, 5)]), (4.4, [(0, 2), (2, 4)])):
        sf.write(tmp_path / "a.wav", np.zeros(int(seconds * SR), np.float32) + 0.01, SR)
        assert [(s, e) for s, e, _ in windows("audio", tmp_path / "a.wav", 2, 2)] == expect
    write_imu_with_pattern(tmp_path / "short.csv", 3, pattern_at=None)
    got = list(windows("imu", tmp_path / "short.csv", 5, 5))
    assert [(s, e) for s, e, _ in got] == [(0, 3)] and got[0][2].shape == (1, 6, 2000)
    assert got[0][2][:, :, 1200:].abs().max() == 0  # zero past the recording's end


def test_a_video_with_an_empty_sound_track_gets_frame_windows_only(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_video_with_scene(media / "v.avi", 5, scene_at=None, empty_audio=True)
    with _store(tmp_path, tiny_model) as s:
        report = s.index([media], moments=True)
    assert report.failed == 0 and report.embedded == 1
    assert [(m, a, b) for _, _, m, a, b in _seg_rows(tmp_path / "store")] == [("video", 0, 2), ("video", 2, 4), ("video", 4, 5)]


def test_a_long_recording_is_read_window_by_window_in_bounded_memory(tmp_path):
    seconds = 600
    write_wav_with_event(tmp_path / "long.wav", seconds, event_at=None)  # 38 MB as float32
    tracemalloc.start()
    try:
        n = sum(1 for _ in windows("audio", tmp_path / "long.wav", 2, 2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == seconds // 2
    assert peak < 8_000_000, peak


# ---------------------------------------------------------------- spans as inputs, the CLI


def test_spans_print_as_clock_times_and_media_fragments():
    assert format_span(2470, 2474) == "00:41:10.0-00:41:14.0"
    assert format_span(3 * 3600 + 59 * 60 + 59.96, 4 * 3600 + 1) == "04:00:00.0-04:00:01.0"  # rounding carries
    assert fragment("/r/a b.wav", 12.5, 14.5) == "/r/a b.wav#t=12.5,14.5"


def test_a_bad_span_is_one_clear_error(tmp_path, tiny_model):
    write_wav_with_event(tmp_path / "a.wav", 4, event_at=None)
    with _store(tmp_path, tiny_model) as s:
        s.index([tmp_path / "a.wav"])
        for value, words in ((f"{tmp_path / 'a.wav'}#t=3,1", "after its start"),
                             (f"{tmp_path / 'a.wav'}#t=1", "PATH#t=START,END"),
                             (f"{tmp_path / 'a.wav'}#t=9,12", "nothing in that span")):
            with pytest.raises(UsageError, match=words):
                s.search(audio=value)
        # a span of an item indexed without moments is embedded from the file
        assert s.search(like=f"{tmp_path / 'a.wav'}#t=0,2")[0].path == str(tmp_path / "a.wav")
        with pytest.raises(UsageError, match="not indexed"):
            s.search(like=f"{tmp_path / 'b.wav'}#t=0,2")


def test_cli_prints_moments_with_their_span_and_media_fragments(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "long.wav", 100, event_at=70)
    sf.write(tmp_path / "event.wav", event_sound(), SR)
    store = str(tmp_path / "store")
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(media), "--store", store, "--model", tiny_model, "--moments", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "50 moments over 100.0s of media" in r.output
    base = ["query", "--store", store, "--audio", str(tmp_path / "event.wav"), "--moments", "-k", "1"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0 and f"{media / 'long.wav'}  00:01:10.0-00:01:12.0" in r.output, r.output
    r = runner.invoke(app, base + ["--paths"])
    assert r.output == f"{media / 'long.wav'}#t=70,72\n"
    r = runner.invoke(app, base + ["--json"])
    got = json.loads(r.output)
    assert (got["results"][0]["start"], got["results"][0]["end"]) == (70, 72) and got["query"]["moments"] is True
    r = runner.invoke(app, ["query", "--store", store, "--audio", str(tmp_path / "event.wav"), "--json"])
    assert "start" not in json.loads(r.output)["results"][0]  # whole files have no span
    r = runner.invoke(app, ["status", "--store", store])
    assert "(moments)" in r.output and "audio moments" in r.output and "50" in r.output, r.output


# ---------------------------------------------------------------- crash safety


def test_segments_survive_a_kill_mid_run(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    n_files = 12
    for i in range(n_files):
        write_wav_with_event(media / f"r{i:02d}.wav", 60, event_at=2 * i, seed=i)
    store = tmp_path / "store"
    cmd = xsearch_cmd() + ["index", str(media), "--store", str(store), "--model", tiny_model, "--moments",
                           "--no-progress", "--batch-size", "1", "--json"]

    def items() -> int:
        try:
            con = sqlite3.connect(store / "xsearch.db", timeout=5)
            try:
                return con.execute("SELECT count(*) FROM items").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    deadline = time.monotonic() + 240
    while p.poll() is None and items() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, p.stderr.read().decode()  # still running after 3 files: kill it there
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    # Whatever was committed is whole: every item has all its windows, none has some.
    con = sqlite3.connect(store / "xsearch.db")
    try:
        per_item = dict(con.execute("SELECT i.path, count(s.id) FROM items i LEFT JOIN segments s ON s.item_id = i.id "
                                    "GROUP BY i.id").fetchall())
    finally:
        con.close()
    assert set(per_item.values()) <= {30}, per_item
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == n_files - len(per_item)
    rows = _seg_rows(store)
    assert len(rows) == 30 * n_files
    mi = ModalityIndex.load(store / "index", "audio#seg")
    assert sorted(mi.ids().tolist()) == [r[0] for r in rows]
    with Storage(store, read_only=True) as st:
        assert st.check() == []
    with xsearch.open(store, model=tiny_model, read_only=True, create=False) as s:
        sf.write(tmp_path / "event.wav", event_sound(), SR)
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=n_files)
        # file i has the event at 2i s: each is found at its own time
        assert {h.path: h.start for h in hits} == {str(media / f"r{i:02d}.wav"): 2.0 * i for i in range(n_files)}


# ---------------------------------------------------------------- the HTTP API, older stores


def test_the_http_api_returns_moments_and_takes_spans(tmp_path, tiny_model):
    import httpx

    from xsearch.serve import BackgroundServer

    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "long.wav", 40, event_at=24)
    write_wav_with_event(media / "copy.wav", 20, event_at=6, seed=1)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        with BackgroundServer(s) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
            r = c.post("/api/search", json={"like": f"{media / 'copy.wav'}#t=6,8", "moments": True, "k": 2})
            assert r.status_code == 200, r.text
            top = r.json()["results"][0]
            assert (top["path"], top["start"], top["end"]) == (str(media / "long.wav"), 24, 26)
            assert r.json()["query"]["moments"] is True
            with open(tmp_path / "event.wav", "wb") as f:
                sf.write(f, event_sound(), SR, format="WAV")
            with open(tmp_path / "event.wav", "rb") as f:
                r = c.post("/api/search", data={"moments": "1", "k": "1"}, files={"audio": ("event.wav", f, "audio/wav")})
            assert r.status_code == 200, r.text
            top = r.json()["results"][0]  # either file's occurrence of the event
            assert (top["path"], top["start"], top["end"]) in {(str(media / "copy.wav"), 6, 8), (str(media / "long.wav"), 24, 26)}
            r = c.post("/api/search", json={"text": "x", "moments": "yes"})
            assert r.status_code == 422 and "moments must be true or false" in r.text
            r = c.post("/api/search", json={"text": "x"})
            assert "start" not in r.json()["results"][0]


def test_a_store_from_before_moments_opens_and_gains_them(tmp_path, tiny_model):
    import sqlalchemy as sa

    from xsearch.storage import migrations

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store' / 'xsearch.db'}")
    (tmp_path / "store").mkdir()
    with engine.begin() as conn:
        migrations.migrate(conn, where="test", read_only=False, upto=2)
        conn.execute(sa.text("INSERT INTO roots (path, modality, added_at) VALUES ('/r', NULL, 1)"))
    engine.dispose()
    with Storage(tmp_path / "store") as st:
        assert st.root_moments() == {"/r": None} and st.segment_counts() == {}


def test_window_and_hop_settings_parse_per_modality_and_refuse_nonsense():
    from xsearch.indexer.moments import settings

    assert settings() == {"audio": [2.0, 2.0], "video": [2.0, 2.0], "imu": [5.0, 5.0]}
    got = settings(["audio=4s/1s", "imu=10"], ["video=500ms"])
    assert got == {"audio": [4.0, 1.0], "video": [2.0, 0.5], "imu": [10.0, 10.0]}
    for window, hop, words in ((["image=2s"], [], "MODALITY=WINDOW"), (["audio"], [], "MODALITY=WINDOW"),
                               (["audio=two"], [], "not a duration"), ([], ["audio=0.01s"], "too short")):
        with pytest.raises(UsageError, match=words):
            settings(window, hop)


def test_a_copy_of_a_recording_takes_its_stored_windows(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "a.wav", 20, event_at=6)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        (media / "b.wav").write_bytes((media / "a.wav").read_bytes())
        report = s.index([media])
        assert (report.copied, report.embedded) == (1, 0)
        rows = _seg_rows(tmp_path / "store")
        by_path = {p: [(a, b) for _, q, _, a, b in rows if q == p] for p in (str(media / "a.wav"), str(media / "b.wav"))}
        assert by_path[str(media / "a.wav")] == by_path[str(media / "b.wav")] and len(by_path[str(media / "b.wav")]) == 10
        sf.write(tmp_path / "event.wav", event_sound(), SR)
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=2)
        assert {(h.path, h.start) for h in hits} == {(str(media / "a.wav"), 6), (str(media / "b.wav"), 6)}


def test_a_moment_longer_than_the_first_candidates_comes_back_whole_with_the_next(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    x = (0.05 * np.random.default_rng(0).standard_normal(120 * SR)).astype(np.float32)
    ev = event_sound()
    for at in range(10, 60, 2):  # 25 identical windows in a row: more than the first round asks for
        x[at * SR:(at + 2) * SR] = ev
    sf.write(media / "long.wav", x, SR)
    sf.write(tmp_path / "event.wav", ev, SR)
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True)
        hits = s.search(audio=str(tmp_path / "event.wav"), moments=True, k=2)
        assert (hits[0].start, hits[0].end) == (10, 60) and len(hits) == 2
        assert not (hits[1].start < 60 and hits[1].end > 10)


def test_progress_counts_seconds_of_media_as_well_as_files(tmp_path, tiny_model):
    class Counting:
        def __init__(self) -> None:
            self.files, self.seconds = 0, 0.0

        def start(self, total: int, description: str) -> None:
            pass

        def advance(self, n: int = 1) -> None:
            self.files += n

        def media(self, seconds: float) -> None:
            self.seconds += seconds

        def stop(self) -> None:
            pass

    media = tmp_path / "media"
    media.mkdir()
    write_wav_with_event(media / "a.wav", 30, event_at=None)
    write_imu_with_pattern(media / "b.csv", 12, pattern_at=None)
    progress = Counting()
    with _store(tmp_path, tiny_model) as s:
        s.index([media], moments=True, progress=progress)
    assert progress.files == 2 and progress.seconds == pytest.approx(42)
