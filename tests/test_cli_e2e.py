"""`xsearch index` / `xsearch query` / `xsearch status` end to end on a corpus of every modality.

Real files, real SQLite, real FAISS, the real (tiny, fixture) ImageBind checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.corpus import build_corpus, write_image
from xsearch.cli.main import app

runner = CliRunner()


def cli(*args: str, code: int | None = 0):
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    if code is not None:
        assert res.exit_code == code, f"exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res


def cli_json(*args: str, code: int | None = 0):
    res = cli(*args, "--json", code=code)
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, golden_dir, tiny_model):
    root = tmp_path_factory.mktemp("corpus")
    files = build_corpus(root, golden_dir)
    store = root / "store"
    common = ("--store", store, "--model", tiny_model, "--no-progress")
    r1 = cli_json("index", root / "media", *common)
    r2 = cli_json("index", root / "depth", "--modality", "depth", *common)
    r3 = cli_json("index", root / "thermal", "--modality", "thermal", *common)
    r4 = cli_json("index", root / "imu", *common)  # detected from the CSV header
    return {"root": root, "files": files, "store": store, "model": tiny_model, "reports": [r1, r2, r3, r4]}


def test_index_embeds_every_modality(indexed):
    files = indexed["files"]
    r1, r2, r3, r4 = indexed["reports"]
    media_count = sum(len(files[m]) for m in ("image", "audio", "video", "text"))
    assert r1["embedded"] == media_count and r1["failed"] == 0
    assert (r2["embedded"], r3["embedded"], r4["embedded"]) == (2, 2, 2)
    for key in ("embedded", "unchanged", "removed", "failed"):
        assert isinstance(r1[key], int)
    st = cli_json("status", "--store", indexed["store"])
    assert st["counts"] == {m: len(v) for m, v in files.items()}
    assert st["errors"] == []
    assert set(st["indexes"]) == set(files)


@pytest.mark.parametrize("modality", ["image", "audio", "video", "text", "depth", "thermal", "imu"])
def test_each_item_finds_itself_first(indexed, modality):
    for path in indexed["files"][modality]:
        value = path.read_text(encoding="utf-8").strip() if modality == "text" else path
        out = cli_json("query", f"--{modality}", value, "--target", modality, "-k", 3, "--store", indexed["store"])
        top = out["results"][0]
        assert top["path"] == str(path)
        assert top["modality"] == modality
        assert top["score"] == pytest.approx(1.0, abs=1e-3)
        assert [r["rank"] for r in out["results"]] == list(range(1, len(out["results"]) + 1))


def test_query_json_schema_and_target_filter(indexed):
    out = cli_json("query", "--text", "a dog", "--target", "image,audio", "-k", 50, "--store", indexed["store"])
    assert set(out) == {"query", "results"}
    assert out["query"]["target"] == ["image", "audio"]
    assert out["query"]["inputs"] == [{"kind": "text", "value": "a dog", "weight": 1.0}]
    mods = {r["modality"] for r in out["results"]}
    assert mods == {"image", "audio"}
    assert len(out["results"]) == len(indexed["files"]["image"]) + len(indexed["files"]["audio"])
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in scores)
    for r in out["results"]:
        assert {"rank", "score", "path", "modality"} <= set(r)
    # all targets by default
    everything = cli_json("query", "--text", "a dog", "-k", 100, "--store", indexed["store"])
    assert {r["modality"] for r in everything["results"]} == set(indexed["files"])


def test_paths_output_and_filters(indexed):
    store = indexed["store"]
    res = cli("query", "--text", "x", "--target", "all", "-k", 100, "--paths", "--folder", indexed["root"] / "media" / "photos", "--store", store)
    lines = res.stdout.strip().splitlines()
    assert sorted(lines) == sorted(str(p) for p in indexed["files"]["image"])
    res = cli("query", "--text", "x", "-k", 100, "--paths", "--glob", "*.flac", "--store", store)
    assert res.stdout.strip().splitlines() == [str(p) for p in indexed["files"]["audio"] if p.suffix == ".flac"]
    out = cli_json("query", "--image", indexed["files"]["image"][0], "-k", 100, "--min-score", 0.99, "--store", store)
    assert [r["path"] for r in out["results"]] == [str(indexed["files"]["image"][0])]


def test_composition_and_like(indexed):
    store = indexed["store"]
    a, b = indexed["files"]["image"][:2]
    both = cli_json("query", "--image", a, "--image", f"{b}@1", "--target", "image", "-k", 10, "--store", store)
    scores = {r["path"]: r["score"] for r in both["results"]}
    # a and b are symmetric around their normalised sum
    assert scores[str(a)] == pytest.approx(scores[str(b)], abs=1e-4)
    assert both["query"]["inputs"][1]["weight"] == 1.0
    # weight arithmetic: a@2 - b lands nearer a than b
    tilted = cli_json("query", "--image", f"{a}@2", "--image", f"{b}@-1", "--target", "image", "--store", store)
    s = {r["path"]: r["score"] for r in tilted["results"]}
    assert s[str(a)] > s[str(b)]
    # inputs that cancel out are a usage error
    cli("query", "--image", a, "--image", f"{a}@-1", "--store", store, code=2)
    # --like uses the stored vector: same ranking as querying by the file, minus the item itself
    like = cli_json("query", "--like", a, "--target", "image", "--store", store)
    by_file = cli_json("query", "--image", a, "--target", "image", "--store", store)
    assert [r["path"] for r in like["results"]] == [r["path"] for r in by_file["results"] if r["path"] != str(a)]
    for r1, r2 in zip(like["results"], by_file["results"][1:]):
        assert r1["score"] == pytest.approx(r2["score"], abs=1e-3)
    cli("query", "--like", indexed["root"] / "nope.jpg", "--store", store, code=2)


def test_cross_modal_text_video_audio(indexed):
    """A query in one modality returns results of another with valid cosine scores."""
    out = cli_json("query", "--audio", indexed["files"]["audio"][0], "--target", "video", "--store", indexed["store"])
    assert {r["modality"] for r in out["results"]} == {"video"}


def test_usage_errors_exit_2(indexed):
    store = indexed["store"]
    cli("query", "--text", "x", "--target", "smell", "--store", store, code=2)
    cli("query", "--store", store, code=2)  # no input
    cli("query", "--image", "/no/such/file.jpg", "--store", store, code=2)
    cli("index", "/no/such/folder", "--store", store, "--model", indexed["model"], code=2)
    cli("index", indexed["root"], "--modality", "smell", "--store", store, "--model", indexed["model"], code=2)


def test_incremental_change_rename_delete(tmp_path, golden_dir, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    imgs = [write_image(media / f"i{i}.png", i) for i in range(4)]
    (media / "t.txt").write_text("hello world", encoding="utf-8")
    common = ("--store", tmp_path / "s", "--model", tiny_model, "--no-progress")
    first = cli_json("index", media, *common)
    assert first["embedded"] == 5
    again = cli_json("index", *common)  # no paths: the remembered folders
    assert (again["embedded"], again["unchanged"], again["removed"]) == (0, 5, 0)
    # change one file
    write_image(imgs[0], 99)
    os.utime(imgs[0], ns=(1, 10**18))
    changed = cli_json("index", media, *common)
    assert (changed["embedded"], changed["unchanged"]) == (1, 4)
    hit = cli_json("query", "--image", imgs[0], "--target", "image", "--store", tmp_path / "s")["results"][0]
    assert hit["path"] == str(imgs[0]) and hit["score"] == pytest.approx(1.0, abs=1e-3)
    # rename: keeps its vector, nothing embedded
    renamed = media / "sub" / "renamed.png"
    renamed.parent.mkdir()
    shutil.move(imgs[1], renamed)
    moved = cli_json("index", media, *common)
    assert (moved["embedded"], moved["moved"], moved["removed"]) == (0, 1, 0)
    hit = cli_json("query", "--image", renamed, "--target", "image", "--store", tmp_path / "s")["results"][0]
    assert hit["path"] == str(renamed) and hit["score"] == pytest.approx(1.0, abs=1e-3)
    # delete
    imgs[2].unlink()
    gone = cli_json("index", media, *common)
    assert (gone["embedded"], gone["removed"]) == (0, 1)
    st = cli_json("status", "--store", tmp_path / "s")
    assert st["counts"] == {"image": 3, "text": 1}
    paths = cli("query", "--text", "x", "-k", 50, "--paths", "--store", tmp_path / "s").stdout.split()
    assert str(imgs[2]) not in paths and str(renamed) in paths and str(imgs[1]) not in paths


def test_corrupt_file_reported_and_exit_1(tmp_path, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    write_image(media / "good.png", 1)
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header, then nothing
    (media / "empty.wav").write_bytes(b"")
    (media / "notes.xyz").write_text("not media", encoding="utf-8")
    common = ("--store", tmp_path / "s", "--model", tiny_model, "--no-progress")
    rep = cli_json("index", media, *common, code=1)
    assert (rep["embedded"], rep["failed"], rep["skipped"]) == (1, 2, 1)
    st = cli_json("status", "--store", tmp_path / "s")
    reasons = {Path(e["path"]).name: e["reason"] for e in st["errors"]}
    assert set(reasons) == {"broken.jpg", "empty.wav"}
    assert "empty" in reasons["empty.wav"]
    assert all(r for r in reasons.values())
    assert st["counts"] == {"image": 1}
    # unchanged failures are not retried, but still reported
    rep2 = cli_json("index", media, *common, code=1)
    assert (rep2["embedded"], rep2["failed"]) == (0, 2)
    text = cli("status", "--errors", "--store", tmp_path / "s").stdout
    assert "broken.jpg" in text


def test_console_script_runs_as_a_process(indexed):
    """The installed `xsearch` entry point, as a user runs it."""
    exe = shutil.which("xsearch") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "xsearch.cli.main"]
    proc = subprocess.run(
        cmd + ["query", "--text", "a dog", "--target", "image", "--json", "--store", str(indexed["store"])],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["results"]) == len(indexed["files"]["image"])
    bad = subprocess.run(cmd + ["query", "--text", "x", "--target", "nope", "--store", str(indexed["store"])], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope" in bad.stderr


def test_python_api_matches_cli(indexed):
    import xsearch

    with xsearch.open(indexed["store"]) as store:
        hits = store.search(text="a dog", target="image", k=3)
        cli_hits = cli_json("query", "--text", "a dog", "--target", "image", "-k", 3, "--store", indexed["store"])["results"]
        assert [h.path for h in hits] == [r["path"] for r in cli_hits]
        assert all(isinstance(h.score, float) for h in hits)
        # bring-your-own vectors live beside embedded ones
        dim = len(store.storage.get_vectors([hits[0].id])[0])
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((3, dim)).astype(np.float32)
        ids = store.add_vectors(vecs, modality="image", paths=["/byo/a", "/byo/b", "/byo/c"])
        assert len(ids) == 3
        top = store.search(vector=vecs[1], target="image", k=1)[0]
        assert top.path == "/byo/b" and top.score == pytest.approx(1.0, abs=1e-3)
        assert store.remove(["/byo/a", "/byo/b", "/byo/c"]) == 3
        assert store.search(vector=vecs[1], target="image", k=1)[0].path != "/byo/b"
