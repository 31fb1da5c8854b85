"""The `xsearch` command at its edges: file names that look like Rich markup, long paths through a pipe,
query inputs that are empty, out of range or of the wrong kind, and `index` without paths.

Real files, real SQLite and FAISS, the real command (as a process where terminal detection matters).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import cli_env, run_cli
from tests.corpus import write_image
from tests.test_bad_input import _no_traceback
from tests.test_cli_e2e import cli, cli_json
from xsearch.errors import UsageError

# Names Rich would read as markup (a closing tag that closes nothing, styles) or as an emoji code.
LOUD = Path("[bold]Loud") / "[red]c.png"
CLOSING = Path("x[/y]") / "b.png"
EMOJI = Path(":smile:.png")
BAD = Path("[red]:x:bad.jpg")


@pytest.fixture(scope="module")
def marked(tmp_path_factory, tiny_model):
    """A folder whose own name and file names are markup, indexed; one file fails to decode."""
    root = tmp_path_factory.mktemp("marked")
    media = root / "media[/z]"  # a folder "media[" holding "z]"
    for i, rel in enumerate((LOUD, CLOSING, EMOJI, Path("plain.png"))):
        (media / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(media / rel, i)
    (media / BAD).write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header, then nothing
    store = root / "store"
    proc = run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    assert proc.returncode == 1, proc.stderr
    return {"media": media, "store": store, "index": proc}


def test_markup_in_names_is_printed_verbatim(marked):
    media, store = marked["media"], marked["store"]
    failed = [ln for ln in marked["index"].stderr.splitlines() if "failed:" in ln]
    assert failed == [f"  failed: {media / BAD}: not a readable image (unknown or corrupt format)"]

    proc = run_cli("query", "--text", "x", "-k", 10, "--store", store)
    assert proc.returncode == 0, proc.stderr
    _no_traceback(proc)
    for rel in (LOUD, CLOSING, EMOJI):
        assert str(media / rel) in proc.stdout, proc.stdout

    proc = run_cli("status", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert f"folder {media}" in proc.stdout.splitlines()
    proc = run_cli("status", "--errors", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert f"{media / BAD}: not a readable image (unknown or corrupt format)" in proc.stdout.splitlines()


def test_markup_in_error_lines(marked, tmp_path):
    store = marked["store"]
    proc = run_cli("index", tmp_path / "nope[/x]", "--store", store, "--no-progress")
    assert proc.returncode == 2
    _no_traceback(proc)
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope[/x]'}: no such file or folder"
    proc = run_cli("query", "--image", "shots[red]/x.jpg", "--store", store)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: shots[red]/x.jpg: no such file"), proc.stderr


def test_doctor_shows_markup_names(tmp_path, tiny_model):
    media = tmp_path / "v[/y]"  # a folder "v[" holding "y]"
    media.mkdir(parents=True)
    gone = write_image(media / "[red]:smile:gone.png", 1)
    write_image(media / "kept.png", 2)
    store = tmp_path / "store"
    cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    gone.unlink()
    proc = run_cli("doctor", "--store", store)
    assert proc.returncode == 1
    _no_traceback(proc)
    assert f"[vanished] {gone}: no longer on disk; `xsearch index` drops it" in proc.stdout.splitlines()


def test_error_lines_stay_whole_through_a_pipe(tmp_path, tiny_model):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8)
    deep.mkdir(parents=True)
    bad = deep / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    write_image(deep / "ok.png", 0)
    store = tmp_path / "store"
    env = cli_env(COLUMNS="80")  # what a pipe gets when nothing says otherwise
    proc = run_cli("index", tmp_path, "--store", store, "--model", tiny_model, "--no-progress", env=env)
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"  failed: {bad}: not a readable image (unknown or corrupt format)"]
    missing = deep / "missing.png"
    proc = run_cli("query", "--image", missing, "--store", store, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {missing}: no such file (image input)"]
    # the table on stdout keeps each path whole on its row too
    proc = run_cli("query", "--image", deep / "ok.png", "-k", 1, "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    assert any(ln.rstrip().endswith(str(deep / "ok.png")) for ln in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_a_usage_error(marked, text):
    res = cli("query", "--text", text, "--store", marked["store"], code=2)
    assert "empty text query" in res.stderr


@pytest.mark.parametrize("weight", ["1e400", "1e-300", "1e-400", "nan", "inf", "-inf"])
def test_weights_out_of_range_are_named(marked, weight):
    res = cli("query", "--text", f"x@{weight}", "--store", marked["store"], code=2)
    assert f"weight {weight} is" in res.stderr and "cancel out" not in res.stderr, res.stderr
    image = marked["media"] / "plain.png"
    res = cli("query", "--image", f"{image}@{weight}", "--store", marked["store"], code=2)
    assert f"weight {weight} is" in res.stderr, res.stderr


def test_tiny_weights_still_compose(marked):
    """Only ratios of weights matter: 2e-6 and -1.9e-6 of one image is that image at 0.05, not "cancels out"."""
    image, store = marked["media"] / "plain.png", marked["store"]
    out = cli_json("query", "--image", f"{image}@2e-6", "--image", f"{image}@-1.9e-6", "-k", 1, "--store", store)
    assert out["results"][0]["path"] == str(image)
    assert out["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_folder_as_query_file(marked):
    res = cli("query", "--image", marked["media"], "--store", marked["store"], code=2)
    assert f"{marked['media']}: is a folder, not a file" in res.stderr


def test_like_names_why(marked):
    media, store = marked["media"], marked["store"]
    res = cli("query", "--like", media / BAD, "--store", store, code=2)
    assert "failed to index (not a readable image (unknown or corrupt format))" in res.stderr, res.stderr
    res = cli("query", "--like", media / "never.png", "--store", store, code=2)
    assert f"like: {media / 'never.png'} is not indexed in this store" in res.stderr


def test_api_errors_are_usage_errors_without_cli_flags(marked):
    media = marked["media"]
    with xsearch.open(marked["store"], create=False, read_only=True) as store:
        bad_calls = [
            dict(text=5), dict(text=[b"x"]), dict(image=3.5), dict(text=[("x", "heavy")]), dict(text=("x", float("nan"))),
            dict(vector="abc"), dict(vector=5.0), dict(like=str(media / BAD)), dict(like=str(media / "never.png")),
            dict(image=str(media)), dict(text="x", k=0), dict(),
        ]
        for kwargs in bad_calls:
            with pytest.raises(UsageError) as e:
                store.search(**kwargs)
            assert "--" not in str(e.value), (kwargs, str(e.value))  # the API is no CLI: no flags in its messages
        with pytest.raises(UsageError, match=r"text: expected a string.*not 5 \(int\)"):
            store.search(text=5)


def test_index_without_paths(tmp_path, tiny_model):
    fresh = tmp_path / "fresh"
    res = cli("index", "--store", fresh, "--model", tiny_model, "--no-progress", code=2)
    assert "no folders indexed yet: xsearch index PATH" in res.stderr
    assert not fresh.exists()  # a mistyped command creates nothing

    media = tmp_path / "m"
    media.mkdir()
    write_image(media / "a.png", 0)
    store = tmp_path / "store"
    res = cli("index", "--modality", "depth", "--store", store, "--model", tiny_model, "--no-progress", code=2)
    assert "a modality applies to the folders given with it" in res.stderr

    # a store that exists but holds only vectors brought in by hand has no folders to re-index either
    byo = tmp_path / "byo"
    with xsearch.open(byo) as s:
        s.add_vectors(np.eye(1, 8, dtype=np.float32), modality="image", paths=["/byo/a"])
    res = cli("index", "--store", byo, "--model", tiny_model, "--no-progress", code=2)
    assert "no folders indexed yet" in res.stderr

    cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    assert cli_json("index", "--store", store, "--no-progress")["unchanged"] == 1


def test_index_help_names_every_modality():
    res = cli("index", "--help")
    help_text = " ".join(res.stdout.split())
    for m in ("depth", "thermal", "imu", "image", "audio", "video", "text"):
        assert m in help_text.split("--modality", 1)[1].split("--store", 1)[0], help_text


def _indexed_one_image(tmp_path: Path, tiny_model: str, name: str = "a.png") -> tuple[Path, Path]:
    """(folder, store): a folder holding one image, indexed."""
    media = tmp_path / "m"
    media.mkdir()
    write_image(media / name, 0)
    store = tmp_path / "store"
    cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    return media, store


def test_missing_folder_is_reported_and_kept(tmp_path, tiny_model):
    media, store = _indexed_one_image(tmp_path, tiny_model)
    media.rename(tmp_path / "elsewhere")  # a renamed folder, or an unmounted drive
    res = cli("index", "--store", store, "--no-progress", code=1)
    assert f"missing: {media}: indexed folder not on disk" in res.stderr
    assert f"xsearch remove {media}" in res.stderr
    rep = cli_json("index", "--store", store, "--no-progress", code=1)
    assert rep["missing"] == [str(media)] and rep["removed"] == 0
    st = cli_json("status", "--store", store)
    assert st["counts"] == {"image": 1} and st["roots"] == [{"path": str(media), "modality": None, "missing": True}]
    doc = cli_json("doctor", "--store", store, code=1)
    assert [p["kind"] for p in doc["problems"]] == ["missing"]  # one line for the folder, not one per file
    assert "its 1 items are kept" in doc["problems"][0]["detail"]


def test_null_separated_paths_are_the_names_on_disk(tmp_path, tiny_model):
    import os
    import subprocess

    from tests.awkward import xsearch_cmd

    media = tmp_path / "m"
    media.mkdir()
    names = [b"a\nb.png", b"caf\xe9.png", b"plain.png"]  # a newline, and bytes that are not UTF-8
    for i, n in enumerate(names):
        write_image(Path(os.fsdecode(os.path.join(os.fsencode(media), n))), i)
    store = tmp_path / "store"
    cli("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    proc = subprocess.run(xsearch_cmd() + ["query", "--text", "x", "-k", "10", "--null", "--store", str(store)],
                          capture_output=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.split(b"\0")
    assert got[-1] == b"" and sorted(got[:-1]) == sorted(os.fsencode(media) + b"/" + n for n in names)
    assert all(os.path.exists(p) for p in got[:-1])


def test_a_name_spelled_like_an_escape_stays_its_own_file(tmp_path, tiny_model):
    import os

    media = tmp_path / "m"
    media.mkdir()
    names = [b"caf\xe9.png", b"caf\\xe9.png", b"back\\\\slash.png"]  # a byte, and names spelling escapes
    for i, n in enumerate(names):
        write_image(Path(os.fsdecode(os.path.join(os.fsencode(media), n))), i)
    store = tmp_path / "store"
    first = cli_json("index", media, "--store", store, "--model", tiny_model, "--no-progress")
    assert first["embedded"] == 3
    again = cli_json("index", "--store", store, "--no-progress")
    assert (again["embedded"], again["unchanged"]) == (0, 3)
    with xsearch.open(store) as s:
        shown = sorted(it.path for it in s.storage.items())
        assert shown == sorted(str(media) + "/" + n for n in ["caf\\xe9.png", "caf\\\\xe9.png", "back\\\\\\\\slash.png"])
        assert s.doctor()["ok"]  # each stored name maps back to its own file


def test_a_store_from_before_backslashes_were_escaped_catches_up_without_embedding(tmp_path, tiny_model):
    media, store = _indexed_one_image(tmp_path, tiny_model, "back\\slash.png")
    with xsearch.open(store) as s:  # the spelling earlier versions stored: the name as it is
        it = s.storage.items()[0]
        assert it.path == f"{media}/back\\\\slash.png"
        s.storage.move(it.id, f"{media}/back\\slash.png", size=it.size, mtime_ns=it.mtime_ns, root=it.root)
    rep = cli_json("index", "--store", store, "--no-progress")
    assert (rep["embedded"], rep["moved"], rep["removed"]) == (0, 1, 0)  # same content: the vector is kept
