"""Bad input: a corpus of awkward files of every modality, indexed by the real `xsearch` command.

Every valid file is embedded, every invalid one is recorded with a reason a person understands, no
traceback reaches the user, and everything else indexes normally. Also: files deleted or rewritten
while a run is in progress, hostile file names (never given to a shell), and no pickle anywhere.

Real processes, real files, real SQLite and FAISS, the tiny fixture model.
"""
from __future__ import annotations

import ast
import json
import os
import pickletools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xsearch
from tests.awkward import BAD_NAME, build_awkward, display_path, run_cli
from tests.corpus import write_image
from xsearch.engine.preprocess.image import center_crop, resize_center_crop, resize_short_side
from xsearch.storage import Storage
from xsearch.storage.faiss_index import ModalityIndex

PACKAGE = Path(__file__).resolve().parents[1] / "xsearch"


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def awkward(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("awkward")
    expect = build_awkward(root)
    store = root / "store"
    reports = {}
    for folder, extra in (("media", ()), ("depth", ("--modality", "depth")), ("thermal", ("--modality", "thermal")),
                          ("imu", ("--modality", "imu"))):
        proc = run_cli("index", root / folder, *extra, "--store", store, "--model", tiny_model, "--no-progress", "--json")
        _no_traceback(proc)
        assert proc.returncode == 1, f"{folder}: exit {proc.returncode} (1: some files failed)\n{proc.stderr[-3000:]}"
        reports[folder] = json.loads(proc.stdout)
    return {"root": root, "store": store, "expect": expect, "reports": reports, "model": tiny_model}


def test_corpus_is_awkward_enough(awkward):
    expect = awkward["expect"]
    assert sum(len(v) for v in expect.values()) >= 40
    kinds = {Path(os.fsdecode(p)).suffix for folder in expect.values() for p in folder}
    assert {".jpg", ".png", ".gif", ".wav", ".mp4", ".txt", ".md", ".npy", ".csv"} <= kinds


def test_every_file_embedded_or_failed_with_a_reason(awkward):
    expect, reports = awkward["expect"], awkward["reports"]
    with Storage(awkward["store"], read_only=True) as s:
        items = {it.path: it for it in s.items()}
        for folder, files in expect.items():
            rep = reports[folder]
            n_ok = sum(e.ok for e in files.values())
            assert rep["embedded"] + rep["copied"] == n_ok, (folder, rep)
            assert rep["failed"] == len(files) - n_ok, (folder, rep["errors"])
            assert rep["interrupted"] is False
            for path, e in files.items():
                shown = display_path(path)
                it = items.get(shown)
                assert it is not None, f"{shown}: not in the store"
                if e.ok:
                    assert it.status == "ok", f"{shown}: failed ({it.error}) but is a valid file"
                    assert it.error is None
                else:
                    assert it.status == "failed", f"{shown}: embedded but is invalid"
                    reason = (it.error or "").lower()
                    assert len(reason) >= 8, f"{shown}: reason {it.error!r} says nothing"
                    assert any(w in reason for w in e.words), f"{shown}: reason {it.error!r} lacks {e.words}"
                    assert "traceback" not in reason
        # nothing else got in (the folder symlink back up the tree was not walked again)
        assert len(items) == sum(len(v) for v in expect.values())
        # every ok item is in its index, nothing else is
        assert s.check() == []


def test_status_errors_lists_every_failure_for_a_person(awkward):
    proc = run_cli("status", "--errors", "--store", awkward["store"])
    _no_traceback(proc)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # the table wraps long lines
    failed = [display_path(p) for files in awkward["expect"].values() for p, e in files.items() if not e.ok]
    for shown in failed:
        assert shown in text, f"{shown} missing from `xsearch status --errors`"
    with xsearch.open(awkward["store"], create=False) as store:
        st = store.status()
    assert sorted(e["path"] for e in st["errors"]) == sorted(failed)
    assert all(e["reason"] for e in st["errors"])


def test_valid_awkward_files_are_searchable(awkward):
    """Odd but valid files are real search results: each finds itself first by its stored vector."""
    expect = awkward["expect"]
    with Storage(awkward["store"], read_only=True) as s:
        for files in expect.values():
            for path, e in files.items():
                if not e.ok:
                    continue
                it = s.item_by_path(display_path(path))
                vec = s.get_vectors([it.id])
                assert np.isfinite(vec).all() and abs(float(np.linalg.norm(vec)) - 1) < 1e-3
                hits = s.search(it.modality, vec, 50)[0]
                top_score = hits[0][1]
                assert top_score == pytest.approx(1.0, abs=1e-3)
                assert it.id in [i for i, sc in hits if sc >= top_score - 1e-4], f"{it.path} does not find itself"


def test_name_that_is_not_utf8_is_embedded_and_found(awkward):
    root, store = awkward["root"], awkward["store"]
    real = os.path.join(os.fsencode(root / "media" / "images"), BAD_NAME)
    shown = display_path(real)
    assert shown.endswith("caf\\xe9.png")  # shown as `ls -b` shows it
    proc = run_cli("query", "--image", real, "--target", "image", "-k", 3, "--json", "--store", store)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["results"][0]
    assert top["path"] == shown and top["score"] == pytest.approx(1.0, abs=1e-3)
    with xsearch.open(store, create=False) as s:  # --like takes the name as shown
        like = s.search(like=shown, target="image", k=3)
    assert like and shown not in [h.path for h in like]
    # doctor maps the stored name back to the file on disk: it has not vanished
    doc = run_cli("doctor", "--json", "--store", store)
    _no_traceback(doc)
    assert json.loads(doc.stdout) == {"ok": True, "problems": [], "repaired": False}


def test_a_second_run_is_quiet(awkward):
    """Failed files are remembered, not retried; nothing is re-embedded; the exit status still says 1."""
    with xsearch.open(awkward["store"], create=False) as store:
        rep = store.index([awkward["root"] / "media"])
    n = len(awkward["expect"]["media"])
    n_bad = sum(not e.ok for e in awkward["expect"]["media"].values())
    assert (rep.embedded, rep.removed, rep.failed, rep.unchanged) == (0, 0, n_bad, n - n_bad)


def test_extreme_aspect_ratio_is_resized_in_bounded_memory():
    """A 6000 x 3 strip is not blown up to 448000 x 224 before cropping; normal images are untouched."""
    rng = np.random.default_rng(0)
    normal = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(resize_center_crop(normal)), np.asarray(center_crop(resize_short_side(normal))))
    for w, h in ((4000, 11), (11, 4000)):  # still affordable the long way, for comparison
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        fast = np.asarray(resize_center_crop(img), dtype=np.int16)
        slow = np.asarray(center_crop(resize_short_side(img)), dtype=np.int16)
        assert fast.shape == slow.shape == (224, 224, 3)
        assert np.abs(fast - slow).max() <= 2 and np.abs(fast - slow).mean() < 0.05  # rounding only
    strip = Image.fromarray(rng.integers(0, 255, (3, 6000, 3), dtype=np.uint8))
    assert resize_center_crop(strip).size == (224, 224)


class _ChangeFilesMidRun:
    """A progress object (the library's own hook) that, at the first progress report, deletes one file and
    rewrites another that the run has planned but not yet decoded."""

    def __init__(self, delete: Path, rewrite: Path):
        self.delete, self.rewrite, self.done, self.total = delete, rewrite, False, 0

    def start(self, total: int, description: str) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        if not self.done:
            self.done = True
            self.delete.unlink()
            write_image(self.rewrite, 999, size=(70, 50))  # other content, other size

    def stop(self) -> None:
        pass


def test_files_deleted_or_rewritten_during_the_run(tmp_path, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    for i in range(24):
        write_image(media / f"a{i:02d}.png", i)
    delete = write_image(media / "zz_delete.png", 500)
    rewrite = write_image(media / "zz_rewrite.png", 501)
    hook = _ChangeFilesMidRun(delete, rewrite)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        # one decode worker, small batches: the zz_ files are decoded long after the first report
        rep = store.index([media], progress=hook, batch_size=2, workers=1)
        assert hook.done and hook.total == 26
        assert rep.embedded == 25 and rep.failed == 1, rep
        (err,) = rep.errors
        assert err["path"] == str(delete) and "deleted" in err["reason"]
        # the rewritten file holds its new content's vector, under its new size and time
        it = store.storage.item_by_path(str(rewrite))
        st = os.stat(rewrite)
        assert it.status == "ok" and (it.size, it.mtime_ns) == (st.st_size, st.st_mtime_ns)
        top = store.search(image=str(rewrite), target="image", k=1)[0]
        assert top.path == str(rewrite) and top.score == pytest.approx(1.0, abs=1e-3)
        # the next run forgets the deleted file and re-does nothing
        again = store.index([media])
        assert (again.embedded, again.removed, again.failed, again.unchanged) == (0, 1, 0, 25)
        assert store.status()["errors"] == [] and store.storage.check() == []


# ------------------------------------------------------------------ security


def test_file_names_are_data_never_shell(tmp_path, tiny_model):
    media = tmp_path / "m"
    media.mkdir()
    hostile = ["$(touch pwned).png", "; rm -rf x.png", "`touch pwned2`.png", "a'b\"c|d&e.png", "-rf.png", "x.png"]
    paths = [write_image(media / name, 10 + i) for i, name in enumerate(hostile)]
    store = tmp_path / "s"
    proc = run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress", "--json", cwd=media)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == len(hostile)
    for p in paths[:2]:  # by the command...
        q = run_cli("query", f"--image={p}", "--target", "image", "-k", 1, "--json", "--store", store, cwd=media)
        _no_traceback(q)
        assert q.returncode == 0, q.stderr
        assert json.loads(q.stdout)["results"][0]["path"] == str(p)
    with xsearch.open(store, create=False) as s:  # ...and through the API
        for p in paths:
            assert s.search(image=str(p), target="image", k=1)[0].path == str(p)
        listed = s.search(like=str(paths[0]), k=10)
    assert sorted(h.path for h in listed) == sorted(str(p) for p in paths[1:])
    # nothing was executed: no pwned files anywhere, x.png is still there
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    assert (media / "x.png").is_file() and sorted(os.listdir(media)) == sorted(hostile)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, {k.arg: k.value for k in node.keywords}


def test_no_pickle_and_no_shell_in_the_package():
    """Checkpoints only through weights_only loading (or safetensors); no pickle, no shell, anywhere."""
    bad = []
    for py in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), str(py))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                for n in names:
                    if n and n.split(".")[0] in ("dill", "cloudpickle", "joblib", "shelve", "marshal"):
                        bad.append(f"{py}: imports {n}")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                if node.attr not in ("UnpicklingError",):  # catching the error weights_only loading raises is fine
                    bad.append(f"{py}:{node.lineno}: pickle.{node.attr}")
        for owner, name, kw in _calls(tree):
            if owner == "torch" and name == "load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    bad.append(f"{py}: torch.load without weights_only=True")
            if name == "load" and owner in ("np", "numpy"):
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    bad.append(f"{py}: np.load with allow_pickle")
            if name in ("system", "popen") and owner == "os":
                bad.append(f"{py}: os.{name}")
            sh = kw.get("shell")
            if sh is not None and not (isinstance(sh, ast.Constant) and sh.value is False):
                bad.append(f"{py}: a call with shell=")
    assert bad == []


def _is_pickle(data: bytes) -> bool:
    """Whether the bytes are a pickle stream: opcodes from the first byte to a final STOP (parsed, never loaded)."""
    try:
        for op, _arg, pos in pickletools.genops(data):
            if op.name == "STOP":
                return pos == len(data) - 1
    except Exception:
        return False
    return False


def test_store_files_hold_no_pickle(awkward):
    import faiss
    import sqlite3

    store = awkward["store"]
    seen = set()
    for f in sorted(p for p in store.rglob("*") if p.is_file()):
        data = f.read_bytes()
        assert not _is_pickle(data), f"{f} is a pickle"
        if f.suffix == ".db":
            assert data.startswith(b"SQLite format 3\x00")
        elif f.suffix == ".json":
            assert isinstance(json.loads(data), dict)
        elif f.suffix == ".faiss":
            index = faiss.read_index(str(f))  # FAISS's own format
            assert index.ntotal > 0
        elif f.name == "index.lock":
            assert data.strip() == b"" or data.strip().isdigit()
        elif f.name.endswith(("-wal", "-shm")):
            pass
        else:
            pytest.fail(f"unexpected file in the store: {f}")
        seen.add(f.suffix or f.name)
    assert {".db", ".json", ".faiss"} <= seen
    # inside the database: vectors are raw little-endian floats, facts are JSON, nothing else
    con = sqlite3.connect(f"file:{store / 'xsearch.db'}?mode=ro", uri=True)
    try:
        dim, dtype = (dict(con.execute("SELECT key, value FROM meta").fetchall())[k] for k in ("dim", "vector_dtype"))
        width = int(dim) * np.dtype(dtype).itemsize
        for (blob,) in con.execute("SELECT data FROM vectors"):  # read with np.frombuffer, never unpickled
            v = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float64)
            assert len(blob) == width and np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-2
        for (facts,) in con.execute("SELECT facts FROM items"):
            json.loads(facts)
    finally:
        con.close()
    for m in ("image", "audio", "text", "depth", "thermal", "imu", "video"):
        if (store / "index" / f"{m}.faiss").exists():
            assert ModalityIndex.load(store / "index", m).ntotal > 0
