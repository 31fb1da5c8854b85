"""Decoder noise (libtiff errors on fd 2, Pillow's UserWarnings, FFmpeg's log) stays off the terminal during
`xsearch index` and `xsearch query --audio`; each file's is kept with it and shown by
`xsearch status --errors --verbose`."""
from __future__ import annotations

import json

import pytest

from tests.awkward import run_cli
from tests.corpus import write_image
from tests.helpers.formats import (write_corrupt_mp3, write_tiff_libtiff_rejects, write_tiff_pillow_logs_an_error,
                                   write_tiff_pillow_warns)

NOISE = ("PlanarConfiguration", "TIFF", "samples per pixel", "UserWarning", "warnings.warn", "Truncated File Read", "mp3float",
         "Header missing", "Illegal Audio-MPEG-Header")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("noisy")
    media = root / "media"
    media.mkdir()
    files = {
        "mp3": write_corrupt_mp3(media / "damaged.mp3"),
        "libtiff": write_tiff_libtiff_rejects(media / "bad_planar.tif"),
        "pillow": write_tiff_pillow_warns(media / "truncated_tag.tif"),
        "pillow_log": write_tiff_pillow_logs_an_error(media / "many_samples.tif"),
        "clean": write_image(media / "clean.png", seed=3),
    }
    store = root / "store"
    # One decoding thread: files are decoded one at a time, so what C code prints is attributed exactly.
    index = run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress", "--workers", "1")
    return {"files": files, "store": store, "index": index, "model": tiny_model}


def _noise_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in NOISE)]


def test_index_keeps_decoder_noise_off_the_terminal(noisy):
    proc = noisy["index"]
    assert proc.returncode == 1, proc.stderr  # two of the TIFFs cannot be decoded: failed files
    assert _noise_in(proc.stderr) == []
    # What remains on stderr is xsearch's own report of the failed files.
    assert sorted(line.strip() for line in proc.stderr.splitlines() if line.strip()) == [
        f"failed: {noisy['files']['libtiff']}: corrupt or truncated image (decoder error -2)",
        f"failed: {noisy['files']['pillow_log']}: not a readable image (unknown or corrupt format)"]


def test_status_errors_verbose_shows_each_files_decoder_warnings(noisy):
    proc = run_cli("status", "--errors", "--verbose", "--store", noisy["store"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    blocks: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("    decoder said: "):
            blocks[current].append(line.removeprefix("    decoder said: "))
        elif line.startswith(str(noisy["files"]["mp3"].parent)):
            current = line.split(": ")[0]
            blocks[current] = []
    f = {k: str(v) for k, v in noisy["files"].items()}
    assert any("PlanarConfiguration" in w for w in blocks[f["libtiff"]])  # libtiff, written to fd 2
    assert "UserWarning: Truncated File Read" in blocks[f["pillow"]]  # a Python warning from Pillow
    assert "PIL.TiffImagePlugin: More samples per pixel than can be decoded: 65535" in blocks[f["pillow_log"]]
    assert any("damaged audio packet" in w for w in blocks[f["mp3"]])  # FFmpeg skipped the garbage
    assert any("Header missing" in w for w in blocks[f["mp3"]])  # FFmpeg's own log line
    assert f["clean"] not in blocks
    # Decoded one at a time: nobody else's lines, and no "may be theirs" note.
    assert not any("PlanarConfiguration" in w for w in blocks[f["mp3"]] + blocks[f["pillow"]])
    assert not any("may be theirs" in w for ws in blocks.values() for w in ws)


def test_status_json_verbose_carries_the_warnings(noisy):
    proc = run_cli("status", "--errors", "--verbose", "--json", "--store", noisy["store"])
    st = json.loads(proc.stdout)
    by_path = {w["path"]: w for w in st["warnings"]}
    assert by_path[str(noisy["files"]["pillow"])]["status"] == "ok"
    failed = {e["path"]: e for e in st["errors"]}
    assert any("PlanarConfiguration" in w for w in failed[str(noisy["files"]["libtiff"])]["warnings"])


def test_the_damaged_mp3_is_embedded_not_failed(noisy):
    st = json.loads(run_cli("status", "--json", "--store", noisy["store"]).stdout)
    assert st["counts"].get("audio") == 1
    assert str(noisy["files"]["mp3"]) not in {e["path"] for e in st["errors"]}


def test_query_by_a_damaged_mp3_keeps_the_terminal_clean(noisy):
    proc = run_cli("query", "--audio", noisy["files"]["mp3"], "--json", "--store", noisy["store"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


def test_index_with_parallel_decoders_still_keeps_the_terminal_clean(noisy, tmp_path):
    media = noisy["files"]["mp3"].parent
    proc = run_cli("index", media, "--store", tmp_path / "s", "--model", noisy["model"], "--no-progress",
                   "--workers", "4")
    assert _noise_in(proc.stderr) == []


def test_fd2_output_during_a_capture_is_kept_with_it_not_printed(capfd):
    import os

    from xsearch.engine.preprocess.noise import capture, quiet

    with quiet(), capture("x.tif") as found:
        os.write(2, b"libfoo: bad header in x\n")
    assert found == ["libfoo: bad header in x"]
    assert "libfoo" not in capfd.readouterr().err


def test_a_capture_outside_quiet_leaves_fd2_to_the_other_threads(capfd):
    """The web server decodes query files with a bare capture: its own log lines must still show."""
    import os
    import warnings

    from xsearch.engine.preprocess.noise import capture

    with capture("q.wav") as found:
        os.write(2, b"INFO: 127.0.0.1 GET /api/search 200\n")
        warnings.warn("odd header in q.wav")
    assert "GET /api/search" in capfd.readouterr().err
    assert found == ["UserWarning: odd header in q.wav"]


def test_fd2_output_while_no_file_is_decoding_passes_through(capfd):
    import os

    from xsearch.engine.preprocess.noise import quiet

    with quiet():
        os.write(2, b"not decoder noise\n")
    assert "not decoder noise" in capfd.readouterr().err


def test_each_threads_python_warnings_go_to_its_own_file():
    import threading
    import warnings

    from xsearch.engine.preprocess.noise import capture, quiet

    found: dict[str, list[str]] = {}
    both_inside = threading.Barrier(2)

    def decode(name: str) -> None:
        with capture(name) as lines:
            both_inside.wait()  # both captures open at once
            warnings.warn(f"odd header in {name}")  # the same place in the code for both files
            both_inside.wait()
        found[name] = lines

    with quiet():
        threads = [threading.Thread(target=decode, args=(n,)) for n in ("a.png", "b.png")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert found == {"a.png": ["UserWarning: odd header in a.png"], "b.png": ["UserWarning: odd header in b.png"]}
