"""The newer commands (classify, dups, reembed, query --moments) keep the CLI's rules: names shown as
`ls -b` shows them, one path a line, clear usage errors."""
from __future__ import annotations

import os
import shutil

from tests.helpers.cli import cli, cli_json, indexed_images, on_disk
from tests.helpers.models import random_model


def test_classify_shows_names_that_are_not_utf8_or_hold_a_newline(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, [b"caf\xe9.png", b"two\nlines.png"])
    res = cli("classify", on_disk(media, b"caf\xe9.png"), on_disk(media, b"two\nlines.png"),
              "--labels", "dog,cat", "--store", store)
    lines = res.stdout.splitlines()
    assert any(line.endswith("caf\\xe9.png (image)") for line in lines)
    assert any(line.endswith("two\\nlines.png (image)") for line in lines)


def test_dups_paths_prints_one_escaped_path_a_line(tmp_path, tiny_model):
    media, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    copy = on_disk(media, b"evil\nname.png")
    shutil.copy(media / "a.png", copy)
    os.utime(copy, (1e9, 1e9))  # older than a.png: a.png is the suggested keeper, the copy is listed
    cli("index", media, "--store", store, "--no-progress")
    out = cli("dups", "--threshold", "0.999", "--paths", "--store", store).stdout
    assert out.splitlines() == [f"{media}/evil\\nname.png"]


def test_null_output_refuses_moments(tmp_path, tiny_model):
    _, store = indexed_images(tmp_path, tiny_model, ["a.png"])
    res = cli("query", "--text", "x", "--moments", "--null", "--store", store, code=2)
    assert "--paths" in res.stderr


def test_reembed_names_the_label_sets_to_tag_again(tmp_path, tiny_model):
    _, store = indexed_images(tmp_path, tiny_model, ["a.png", "b.png"])
    cli("tag", "--labels", "dog,cat", "--name", "pets", "--store", store)
    other = random_model(tmp_path / "other", tiny_model, seed=5, out_embed_dim=16)
    report = cli_json("reembed", "--model", other, "--store", store, "--no-progress")
    assert report["switched"] and report["label_sets_to_tag_again"] == ["pets"]


def test_doctor_finds_a_damaged_moment_vector_and_repair_embeds_its_file_again(tmp_path, tiny_model):
    import sqlite3

    import numpy as np

    import xsearch
    from tests.corpus import write_audio

    media = tmp_path / "media"
    media.mkdir()
    write_audio(media / "long.wav", 440.0, seconds=6.0)
    store = tmp_path / "store"
    cli("index", media, "--moments", "--store", store, "--model", tiny_model, "--no-progress")
    con = sqlite3.connect(store / "xsearch.db")
    seg_id, blob = con.execute("SELECT id, data FROM segments ORDER BY id LIMIT 1").fetchone()
    con.execute("UPDATE segments SET data = ? WHERE id = ?", (b"\xff" * 40 + blob[40:], seg_id))
    con.commit()
    con.close()
    doc = cli_json("doctor", "--store", store, code=1)
    assert [(p["kind"], p["detail"].split(":")[0]) for p in doc["problems"]] == [("vector", f"{media}/long.wav")]
    assert cli_json("doctor", "--repair", "--store", store)["repaired"]
    assert cli_json("doctor", "--store", store)["ok"]
    with xsearch.open(store, read_only=True) as s:
        item = s.storage.item_by_path(f"{media}/long.wav")
        windows = s.storage.item_segments(item.id, vectors=True)
        assert item.status == "ok" and windows
        assert all(np.isfinite(w.vector).all() for w in windows)
