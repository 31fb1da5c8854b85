"""`xsearch serve`: the HTTP API against a real uvicorn server on a loopback port.

Real store (tiny fixture ImageBind model, a corpus of every modality), real sockets, real uploads.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import xsearch
from tests.helpers.serve import index_corpus, item_id, post_form, raw_get, raw_request
from xsearch.cli.main import app as cli_app
from xsearch.errors import UsageError
from xsearch.serve import BackgroundServer, check_bind, create_app, is_loopback

UPLOAD_LIMIT = 2_000_000  # small, so the 413 test stays cheap; every corpus file is far below it
UPLOAD_MODALITIES = ("image", "audio", "video", "depth", "thermal", "imu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, golden_dir, tiny_model):
    root = tmp_path_factory.mktemp("serve")
    store, files = index_corpus(root, golden_dir, tiny_model)
    yield {"root": root, "store": store, "files": files, "model": tiny_model}
    store.close()


@pytest.fixture(scope="module")
def server(corpus):
    with BackgroundServer(corpus["store"], max_upload_bytes=UPLOAD_LIMIT) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def upload_dirs() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("xsearch-upload-")}


# --------------------------------------------------------------------------- searching


def test_text_search_json(client, corpus):
    r = client.post("/api/search", json={"text": "a dog", "target": "image", "k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = corpus["store"].search(text="a dog", target="image", k=3)
    assert [x["path"] for x in results] == [h.path for h in expected]
    for rank, x in enumerate(results, 1):
        assert {"id", "path", "modality", "score", "media_url", "facts", "rank"} <= set(x)
        assert x["modality"] == "image" and x["rank"] == rank
        assert x["media_url"] == f"/media/{x['id']}"
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)


def test_targets_filters_weights_and_snippets(client, corpus):
    body = {"text": ["a dog@2", ["rain", -0.5]], "target": ["image", "text"], "k": 50,
            "filters": {"folder": str(corpus["root"] / "media" / "notes")}}
    r = client.post("/api/search", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert [(i["value"], i["weight"]) for i in data["query"]["inputs"]] == [("a dog", 2.0), ("rain", -0.5)]
    assert {x["modality"] for x in data["results"]} == {"text"}
    assert sorted(x["path"] for x in data["results"]) == sorted(str(p) for p in corpus["files"]["text"])
    snippets = {x["facts"]["snippet"].strip() for x in data["results"]}
    assert "a dog barking at the mailman" in snippets
    r = client.post("/api/search", json={"text": "x", "k": 50, "filters": {"glob": "*.flac", "min_score": -1}})
    assert [x["path"] for x in r.json()["results"]] == [str(p) for p in corpus["files"]["audio"] if p.suffix == ".flac"]


@pytest.mark.parametrize("modality", UPLOAD_MODALITIES)
def test_upload_each_modality_finds_the_same_file(client, corpus, modality):
    before = upload_dirs()
    path = corpus["files"][modality][0]
    with open(path, "rb") as f:
        r = client.post("/api/search", data={"target": modality, "k": "3"}, files={modality: (path.name, f)})
    assert r.status_code == 200, r.text
    data = r.json()
    top = data["results"][0]
    assert top["id"] == item_id(corpus["store"], path)
    assert top["modality"] == modality and top["score"] == pytest.approx(1.0, abs=1e-3)
    # the echo names the uploaded file, never the server's temp copy
    assert data["query"]["inputs"] == [{"kind": modality, "value": path.name, "weight": 1.0}]
    assert upload_dirs() <= before  # the temp copy is gone
    if modality in ("depth", "thermal", "imu", "video"):
        assert top["preview_url"] == f"/api/items/{top['id']}/preview.png"


def test_upload_weights_and_mixed_inputs(client, corpus):
    a, b = corpus["files"]["image"][:2]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        r = client.post(
            "/api/search",
            data={"target": "image", "k": "10", "image_weight": ["2", "-1"], "text": "a dog@0.5"},
            files=[("image", (a.name, fa)), ("image", (b.name, fb))],
        )
    assert r.status_code == 200, r.text
    data = r.json()
    weights = {i["value"]: i["weight"] for i in data["query"]["inputs"]}
    assert weights == {a.name: 2.0, b.name: -1.0, "a dog": 0.5}
    scores = {x["path"]: x["score"] for x in data["results"]}
    assert scores[str(a)] > scores[str(b)]


def test_like_by_id_and_by_path(client, corpus):
    store = corpus["store"]
    a = corpus["files"]["image"][0]
    by_id = client.post("/api/search", json={"like": item_id(store, a), "target": "image"}).json()["results"]
    by_path = client.post("/api/search", json={"like": str(a), "target": "image"}).json()["results"]
    expected = store.search(like=str(a), target="image")
    assert [x["path"] for x in by_id] == [x["path"] for x in by_path] == [h.path for h in expected]
    assert str(a) not in [x["path"] for x in by_id]
    form = post_form(client, {"like": str(item_id(store, a)), "target": "image"}).json()["results"]
    assert [x["path"] for x in form] == [h.path for h in expected]


# --------------------------------------------------------------------------- items and media


def test_item_metadata(client, corpus):
    path = corpus["files"]["video"][0]
    i = item_id(corpus["store"], path)
    r = client.get(f"/api/items/{i}")
    assert r.status_code == 200
    data = r.json()
    assert (data["id"], data["path"], data["modality"], data["media_url"]) == (i, str(path), "video", f"/media/{i}")
    assert data["status"] == "ok" and isinstance(data["facts"], dict)
    assert client.get("/api/items/999999").status_code == 404
    assert client.get("/api/items/abc").status_code == 404


@pytest.mark.parametrize(
    ("modality", "content_type"),
    [("image", "image/jpeg"), ("audio", "audio/x-wav"), ("video", "video/mp4"), ("text", "text/plain")],
)
def test_media_bytes_type_and_range(client, corpus, modality, content_type):
    path = corpus["files"][modality][0]
    r = client.get(f"/media/{item_id(corpus['store'], path)}")
    assert r.status_code == 200
    assert r.content == path.read_bytes()
    assert r.headers["content-type"].split(";")[0] in (content_type, content_type.replace("x-wav", "wav"))
    part = client.get(f"/media/{item_id(corpus['store'], path)}", headers={"Range": "bytes=4-13"})
    assert part.status_code == 206 and part.content == path.read_bytes()[4:14]
    head = client.head(f"/media/{item_id(corpus['store'], path)}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == path.stat().st_size


@pytest.mark.parametrize("modality", ["depth", "thermal", "imu", "video"])
def test_previews_are_pngs(client, corpus, modality):
    i = item_id(corpus["store"], corpus["files"][modality][0])
    r = client.get(f"/api/items/{i}/preview.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.mode == "RGB" and img.width > 0 and img.height > 0
    if modality in ("depth", "thermal"):  # false colour: not a grey image
        rgb = np.asarray(img).reshape(-1, 3)
        assert (rgb.max(axis=1) != rgb.min(axis=1)).any()


def test_no_preview_for_viewable_modalities(client, corpus):
    i = item_id(corpus["store"], corpus["files"]["image"][0])
    assert client.get(f"/api/items/{i}/preview.png").status_code == 404


def test_path_traversal_refused(server, corpus):
    for path in (
        "/media/../../etc/passwd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/..%2f..%2f..%2fetc%2fpasswd",
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/../../../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/media/-1",
        "/media/1.0",
        "/media/%00",
    ):
        status, body = raw_get(server.port, path)
        assert status == 404, (path, status)
        assert b"root:" not in body


def test_items_outside_the_indexed_folders_are_not_served(client, server, corpus):
    store = corpus["store"]
    outside = corpus["root"] / "outside.txt"  # beside the indexed folders, not in them
    outside.write_text("secret\n", encoding="utf-8")
    link = corpus["root"] / "media" / "photos" / "escape.jpg"  # inside a root, pointing out of it
    link.symlink_to(outside)
    dim = store.storage.dim
    ids = store.add_vectors(np.ones((3, dim), np.float32), modality="text",
                            paths=[str(outside), str(link), "/etc/passwd"])
    try:
        for i in ids:
            assert client.get(f"/media/{i}").status_code == 404
            assert client.get(f"/api/items/{i}").json()["media_url"] is None
        hits = client.post("/api/search", json={"vector": [1.0] * dim, "target": "text", "k": 3}).json()["results"]
        assert {h["id"] for h in hits} == set(ids)
        assert all(h["media_url"] is None and "snippet" not in h["facts"] for h in hits)
    finally:
        store.remove([str(outside), str(link), "/etc/passwd"])
        link.unlink()


# --------------------------------------------------------------------------- bad requests


def _post_file(client, field: str, name: str, data: bytes, **form: str) -> httpx.Response:
    return client.post("/api/search", data=form, files={field: (name, data)})


def test_bad_uploads_get_4xx_with_a_reason(client, corpus):
    wav_header = b"RIFF\x24\x00\x00\x00WAVEfmt "
    zeros_depth = io.BytesIO()
    Image.new("I;16", (8, 8)).save(zeros_depth, format="PNG")
    cases = [
        ("image", "broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, 400),
        ("image", "empty.png", b"", 400),
        ("audio", "noise.wav", wav_header + os.urandom(512), 400),
        ("video", "noise.mp4", os.urandom(4096), 400),
        ("depth", "holes.png", zeros_depth.getvalue(), 400),
        ("thermal", "text.png", b"not a picture", 400),
        ("imu", "nocols.csv", b"a,b,c\n1,2,3\n", 400),
        ("smell", "rose.jpg", b"\xff\xd8\xff", 422),
    ]
    for field, name, data, status in cases:
        r = _post_file(client, field, name, data)
        assert r.status_code == status, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail
        assert "xsearch-upload-" not in detail and tempfile.gettempdir() + "/" not in detail
        if status == 400:
            assert name in detail, detail


def test_bad_requests_get_4xx(client):
    cases = [
        ({"json": {"text": "x", "k": 0}}, 422),
        ({"json": {"text": "x", "target": "smell"}}, 422),
        ({"json": {}}, 422),
        ({"json": ["text"]}, 422),
        ({"json": {"image": "/etc/passwd"}}, 422),
        ({"json": {"text": "x", "colour": "red"}}, 422),
        ({"json": {"like": 999999}}, 422),
        ({"json": {"text": "x", "filters": {"folder": 3}}}, 422),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"files": {"image": (None, "not a file")}}, 422),
        ({"files": {"text": (None, "x"), "k": (None, "many")}}, 422),
        ({"files": {"text": (None, "x"), "flavour": (None, "sweet")}}, 422),
    ]
    for kwargs, status in cases:
        r = client.post("/api/search", **kwargs)
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        assert r.json()["detail"]
    # A relative folder would mean the server's working directory, which no client can know.
    for kwargs in ({"json": {"text": "x", "filters": {"folder": "media/notes"}}},
                   {"files": {"text": (None, "x"), "folder": (None, "media")}}):
        r = client.post("/api/search", **kwargs)
        assert r.status_code == 422 and "absolute path" in r.json()["detail"], (kwargs, r.text)


def test_upload_over_the_limit_is_413(client):
    big = os.urandom(UPLOAD_LIMIT + 500_000)
    r = _post_file(client, "image", "huge.jpg", big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # no Content-Length: the body is counted as it streams in
    body = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="huge.jpg"\r\n\r\n'
            + big + b"\r\n--xyz--\r\n")
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    r = client.post("/api/search", content=chunks, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413


# --------------------------------------------------------------------------- the rest of the surface


def test_status_page_and_docs(client, corpus):
    st = client.get("/api/status").json()
    assert st["counts"] == {m: len(v) for m, v in corpus["files"].items()}
    assert st["server"]["token_required"] is False and st["server"]["max_upload_bytes"] == UPLOAD_LIMIT
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs/swagger").status_code == 200  # Swagger UI (its scripts come from a CDN)


def test_api_reference_page_needs_nothing_from_outside(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" not in page and "src=" not in page and "cdn" not in page.lower()  # self-contained
    for path in client.get("/openapi.json").json()["paths"]:
        assert f">{path}<" in page  # every endpoint is listed
    # the search body's fields, their types and limits, and the example request
    for text in ("POST", "multipart/form-data", "application/json", "<td>k</td>", "maximum 1000",
                 "image_weight", "file", "&quot;a dog&quot;", "item_id"):
        assert text in page, text


def test_foreign_host_header_refused(server):
    """Without a token only loopback names are served: a DNS-rebinding page gets nothing."""
    assert raw_get(server.port, "/api/status", {"Host": "attacker.example:80"})[0] == 400
    assert raw_get(server.port, "/api/status", {"Host": f"localhost:{server.port}"})[0] == 200


def test_eight_concurrent_clients(server, corpus):
    image = corpus["files"]["image"][0].read_bytes()
    audio_id = item_id(corpus["store"], corpus["files"]["audio"][0])
    errors: list[str] = []

    def client_session(n: int) -> int:
        done = 0
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for j in range(4):
                kind = (n + j) % 4
                if kind == 0:
                    r = c.post("/api/search", json={"text": f"query {n} {j}", "k": 5})
                elif kind == 1:
                    r = c.post("/api/search", data={"target": "image"}, files={"image": ("q.jpg", image)})
                elif kind == 2:
                    r = c.get(f"/media/{audio_id}")
                else:
                    r = c.post("/api/search", json={"like": audio_id, "target": "audio", "k": 2})
                if r.status_code != 200 or (kind != 2 and not r.json()["results"]):
                    errors.append(f"client {n} request {j}: {r.status_code} {r.text[:200]}")
                done += 1
        return done

    with ThreadPoolExecutor(8) as pool:
        done = sum(pool.map(client_session, range(8)))
    assert errors == []
    assert done == 32


# --------------------------------------------------------------------------- tokens


def test_non_loopback_without_token_refuses_to_start(corpus):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.com")
    with pytest.raises(UsageError, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret-s3cret-s3cret")
    check_bind("127.0.0.1", None)
    with pytest.raises(UsageError, match="token"):
        BackgroundServer(corpus["store"], host="0.0.0.0")
    env = {k: v for k, v in os.environ.items() if k != "XSEARCH_TOKEN"}
    res = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--store", str(corpus["root"] / "store")], env=env)
    assert res.exit_code == 2 and "token" in res.stderr


@pytest.fixture(scope="module")
def token_server(corpus):
    """`xsearch serve --token` as a user runs it, as a process, on a port it picks (--port 0)."""
    token = "s3cret/+token-0123456789"
    cmd = [sys.executable, "-m", "xsearch.cli.main", "serve", "--port", "0", "--token", token,
           "--store", str(corpus["root"] / "store")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    url, seen = None, []
    while url is None:
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            break
        seen.append(line)
        m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        url = m.group(1) if m else None
    try:
        assert url, "server did not start:\n" + "".join(seen)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(30)


def test_token_required_on_every_request(token_server):
    url, token = token_server
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=120) as c:
        for path in ("/api/status", "/", "/static/app.js", "/docs", "/media/1"):
            assert c.get(path).status_code == 401, path
        assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/api/search", json={"text": "a dog"}).status_code == 401
        assert c.get("/api/status", headers=bearer).status_code == 200
        hits = c.post("/api/search", json={"text": "a dog", "target": "image"}, headers=bearer).json()["results"]
        media_url = hits[0]["media_url"]
        assert "token=" in media_url
        assert c.get(media_url).status_code == 200  # <img src> carries it in the URL
        assert c.get(media_url.split("?")[0]).status_code == 401
    with httpx.Client(base_url=url, timeout=120) as browser:
        page = browser.get("/", params={"token": token})  # opening the page with ?token= sets a cookie
        assert page.status_code == 200 and "xsearch_token" in browser.cookies
        assert browser.get("/static/app.js").status_code == 200
        assert browser.get("/api/status").status_code == 200


def test_files_with_non_utf8_names_are_served_and_previewed(tmp_path, tiny_model):
    from tests.corpus import write_depth_png, write_image

    photos, depths = tmp_path / "m", tmp_path / "d"
    photos.mkdir()
    depths.mkdir()
    # Latin-1 bytes, not valid UTF-8: Python names them with lone surrogates, the store escapes them.
    photo = Path(os.fsdecode(os.fsencode(photos) + b"/caf\xe9.png"))
    depth = Path(os.fsdecode(os.fsencode(depths) + b"/d\xe9pth.png"))
    other = write_image(photos / "other.png", 9)
    write_image(photo, 5)
    write_depth_png(depth, 6)
    with xsearch.open(tmp_path / "s", model=tiny_model) as store:
        store.index([photos])
        store.index([depths], modality="depth")
        photo_id = store.storage.item_by_path(str(photos / "caf\\xe9.png")).id  # stored as `ls -b` shows it
        depth_id = store.storage.item_by_path(str(depths / "d\\xe9pth.png")).id
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.get(f"/media/{photo_id}")
            assert r.status_code == 200 and r.content == photo.read_bytes()
            item = c.get(f"/api/items/{photo_id}").json()
            assert item["media_url"] == f"/media/{photo_id}" and item["path"].endswith("caf\\xe9.png")
            preview = c.get(f"/api/items/{depth_id}/preview.png")
            assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).format == "PNG"
            hits = c.post("/api/search", json={"like": str(other), "target": "image", "k": 1}).json()["results"]
            assert [h["id"] for h in hits] == [photo_id] and hits[0]["media_url"] == f"/media/{photo_id}"


# --------------------------------------------------------------------------- found by exploratory testing


def test_unservable_text_leaks_no_content(tmp_path, tiny_model):
    """A symlink inside an indexed folder pointing out of it: no media, and no snippet of the target either."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "dog.txt").write_text("a dog barking\n", encoding="utf-8")
    secret = tmp_path / "secret.txt"  # beside the indexed folder, not in it
    secret.write_text("root:x:0:0 the secret words\n", encoding="utf-8")
    (notes / "leak.txt").symlink_to(secret)
    with xsearch.open(tmp_path / "store", model=tiny_model) as store:
        store.index([notes])
        leak = store.storage.item_by_path(str(notes / "leak.txt"))
        assert leak is not None and "secret" in leak.facts.get("snippet", "")  # the store itself holds it
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            item = c.get(f"/api/items/{leak.id}").json()
            assert item["media_url"] is None and item["facts"] == {}
            hits = c.post("/api/search", json={"text": "secret words", "target": "text"}).json()["results"]
            assert {h["name"] for h in hits} == {"dog.txt", "leak.txt"}
            assert "secret" not in str(hits)
            dog = next(h for h in hits if h["name"] == "dog.txt")
            assert dog["facts"]["snippet"].strip() == "a dog barking"  # servable files keep theirs


def test_malformed_ids_and_values_get_json_4xx(client, server, corpus):
    huge = "99999999999999999999999"
    image_id = item_id(corpus["store"], corpus["files"]["image"][0])
    for path in (f"/api/items/{huge}", f"/media/{huge}", f"/api/items/{huge}/preview.png",
                 "/api/items/%C2%B3", "/media/%C2%B3", "/api/items/%D9%A3"):  # "³", and Arabic-Indic 3
        status, body = raw_get(server.port, path)
        assert status == 404 and b'"detail"' in body, (path, status, body)
    cases = [
        ({"like": "³"}, 422), ({"like": int(huge)}, 422), ({"like": huge}, 422), ({"like": -1}, 422),
        ({"text": "x", "target": 5}, 422), ({"text": "x", "target": True}, 422), ({"text": "x", "target": [1]}, 422),
        ({"text": "x", "target": ["image", None]}, 422), ({"text": "x", "target": []}, 422),
        ({"text": "x", "target": {"image": 1}}, 422),
    ]
    for body, status in cases:
        r = client.post("/api/search", json=body)
        assert r.status_code == status and r.json()["detail"], (body, r.status_code, r.text)
    deep = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/api/search", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["detail"]
    r = post_form(client, {"text": "dog", "k": "²"})
    assert r.status_code == 422 and "k must be" in r.json()["detail"]
    # an upload beside a bad field: the error names the field, not the (fine) upload
    photo = corpus["files"]["image"][0]
    for like in ("³", huge):
        r = _post_file(client, "image", photo.name, photo.read_bytes(), like=like)
        assert r.status_code == 422 and "like" in r.json()["detail"] and "decode" not in r.json()["detail"], r.text
    assert client.post("/api/search", json={"like": str(image_id), "target": "image"}).status_code == 200


def test_text_weight_pair_at_the_top_level(client):
    r = client.post("/api/search", json={"text": ["a dog", 2], "k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["inputs"] == [{"kind": "text", "value": "a dog", "weight": 2.0}]
    two = client.post("/api/search", json={"text": ["a dog", "rain"], "k": 1}).json()["query"]["inputs"]
    assert [i["value"] for i in two] == ["a dog", "rain"]  # two strings stay two texts


def test_a_device_that_does_not_exist_is_refused_at_startup(corpus):
    import torch

    env = {k: v for k, v in os.environ.items() if k != "XSEARCH_TOKEN"}
    devices = ["nonsense"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        # A process, not CliRunner: a server that starts anyway must fail the test, not block it.
        cmd = [sys.executable, "-m", "xsearch.cli.main", "serve", "--store", str(corpus["root"] / "store"),
               "--port", "0", "--device", device]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "device" in res.stderr, (device, res.returncode, res.stderr)


def test_preview_of_a_file_that_no_longer_decodes_is_404(tmp_path, tiny_model):
    from tests.corpus import write_depth_png

    depths = tmp_path / "depth"
    depths.mkdir()
    frame = write_depth_png(depths / "d.png", 3)
    with xsearch.open(tmp_path / "store", model=tiny_model) as store:
        store.index([depths], modality="depth")
        i = item_id(store, frame)
        frame.write_bytes(b"garbage")
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.get(f"/api/items/{i}/preview.png")
            assert r.status_code == 404 and "cannot render" in r.json()["detail"]


def test_invalid_range_sends_the_whole_file_and_head_works(client, corpus):
    path = corpus["files"]["image"][0]
    url = f"/media/{item_id(corpus['store'], path)}"
    for header in ("garbage", "bytes=50-10", "bytes=a-b", "items=0-3"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 200 and r.content == path.read_bytes(), header
    assert client.get(url, headers={"Range": "bytes=2-5"}).content == path.read_bytes()[2:6]
    for endpoint in ("/", "/api/status", url, "/docs"):
        r = client.head(endpoint)
        assert r.status_code == 200 and r.content == b"", endpoint


def test_tokens_with_plus_or_non_ascii_characters(corpus):
    token = "0123456789ab+c/dé"
    with BackgroundServer(corpus["store"], token=token) as srv:
        assert raw_get(srv.port, "/api/status?token=0123456789ab+c/d%C3%A9")[0] == 200  # pasted unencoded: "+" kept
        assert raw_get(srv.port, "/api/status?token=0123456789ab%2Bc%2Fd%C3%A9")[0] == 200
        assert raw_get(srv.port, "/api/status?token=0123456789ab%20c/d%C3%A9")[0] == 401
        assert raw_get(srv.port, "/api/status", {"Authorization": "Bearer 0123456789ab+c/d\u00c3\u00a9"})[0] == 200  # UTF-8
        assert raw_get(srv.port, "/api/status", {"Authorization": "Bearer 0123456789ab+c/d\u00e9"})[0] == 401  # latin-1


def test_text_in_a_legacy_encoding_is_served_with_its_charset(client, corpus):
    store = corpus["store"]
    note = corpus["root"] / "media" / "notes" / "latin1.txt"
    note.write_bytes("Caf\u00e9 cr\u00e8me \u2014 \u20ac5\n".encode("cp1252"))  # not UTF-8
    [i] = store.add_vectors(np.ones((1, store.storage.dim), np.float32), modality="text", paths=[str(note)])
    try:
        r = client.get(f"/media/{i}")
        assert r.status_code == 200 and r.headers["content-type"] == "text/plain; charset=windows-1252"
        assert r.text == "Caf\u00e9 cr\u00e8me \u2014 \u20ac5\n"  # decoded by the client as the header says
        assert client.get(f"/api/items/{i}").json()["facts"]["snippet"] == "Caf\u00e9 cr\u00e8me \u2014 \u20ac5"
        utf8 = corpus["files"]["text"][0]
        r = client.get(f"/media/{item_id(store, utf8)}")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
    finally:
        store.remove([str(note)])
        note.unlink()


# --------------------------------------------------------------------------- found by exploratory testing (issue 18)


def test_the_api_says_nothing_of_a_failed_file_it_does_not_serve(tmp_path, tiny_model):
    """A symlink in an IMU folder to a text file elsewhere: the indexer's reason quotes that file's header."""
    imu = tmp_path / "imu"
    imu.mkdir()
    secret = tmp_path / "secret.txt"  # beside the indexed folder, not in it
    secret.write_text("TOP SECRET password=hunter2\n1,2,3\n", encoding="utf-8")
    (imu / "leak.csv").symlink_to(secret)
    (imu / "inside.csv").write_text("alpha,beta\n1,2\n", encoding="utf-8")  # fails too, but is served
    with xsearch.open(tmp_path / "store", model=tiny_model) as store:
        store.index([imu], modality="imu")
        reasons = {e["path"]: e["reason"] for e in store.status()["errors"]}
        assert "hunter2" in reasons[str(imu / "leak.csv")]  # the local CLI and Python keep the detail
        leak = store.storage.item_by_path(str(imu / "leak.csv"))
        inside = store.storage.item_by_path(str(imu / "inside.csv"))
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            status = c.get("/api/status")
            assert "hunter2" not in status.text
            errors = {e["path"]: e["reason"] for e in status.json()["errors"]}
            assert "not shown" in errors[str(imu / "leak.csv")]
            assert errors[str(imu / "inside.csv")] == reasons[str(imu / "inside.csv")]  # a served file keeps it
            item = c.get(f"/api/items/{leak.id}")
            assert "hunter2" not in item.text
            data = item.json()
            assert data["status"] == "failed" and "not shown" in data["error"]
            assert data["size"] is None and data["mtime_ns"] is None and data["facts"] == {}
            served = c.get(f"/api/items/{inside.id}").json()
            assert served["error"] == inside.error and served["size"] == (imu / "inside.csv").stat().st_size


@pytest.mark.parametrize("body", [
    b'{"text": "dog \\ud800"}', b'{"text": "dog@\\ud800"}', b'{"like": "/data/\\udc80.png"}',
    b'{"text": "dog", "filters": {"folder": "/data/\\ud800"}}', b'{"text": "dog", "filters": {"glob": "*\\ud800"}}',
    b'{"text": "dog", "\\ud800": 1}',
])
def test_lone_surrogates_get_a_json_400_and_the_connection_lives_on(client, body):
    r = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["detail"], r.text
    assert client.post("/api/search", json={"text": "dog", "k": 1}).status_code == 200  # same keep-alive client


def test_only_json_and_multipart_searches_from_the_page_own_origin(client, server):
    for content, ctype in ((b'{"text": "dog"}', "text/plain"), (b"text=dog", "application/x-www-form-urlencoded"),
                           (b'{"text": "dog"}', None)):
        r = client.post("/api/search", content=content, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == 415 and "application/json" in r.json()["detail"], (ctype, r.text)
    own = f"http://127.0.0.1:{server.port}"
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}):
        r = client.post("/api/search", json={"text": "dog"}, headers=headers)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"], (headers, r.text)
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": own}, {"Origin": own}):
        assert client.post("/api/search", json={"text": "dog", "k": 1}, headers=headers).status_code == 200, headers
    for path in ("/", "/api/status", "/media/999999", "/static/app.js"):
        h = client.get(path).headers
        assert h["x-content-type-options"] == "nosniff", path
        assert h["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in h["content-security-policy"], path


def test_trailing_slash_redirects_are_relative_and_never_carry_the_token(corpus, client):
    token = "0123456789abcdef-token"
    i = item_id(corpus["store"], corpus["files"]["image"][0])
    with BackgroundServer(corpus["store"], token=token) as srv:  # with a token, any Host header is answered
        r = raw_request(srv.port, "GET", f"/media/{i}/?token={token}&x=1", headers={"Host": "evil.example"})
        assert r.status == 307 and r.getheader("location") == f"/media/{i}?x=1", (r.status, r.getheader("location"))
        r = raw_request(srv.port, "GET", f"//evil.example/?token={token}")
        assert r.status == 404 and r.getheader("location") is None
    r = client.get("/docs/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/docs"
    assert client.get("/docs/", follow_redirects=True).status_code == 200


@pytest.mark.parametrize("token", [" ", "\t\n", "x", "s3cret", "  0123456789abcdef  "])
def test_weak_tokens_are_refused(corpus, token):
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(UsageError, match="token"):
            check_bind(host, token)
    with pytest.raises(UsageError, match="token"):
        create_app(corpus["store"], token=token)  # mounted elsewhere, the same rule
    env = {k: v for k, v in os.environ.items() if k != "XSEARCH_TOKEN"}
    res = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--token", token,
                                       "--store", str(corpus["root"] / "store")], env=env)
    assert res.exit_code == 2 and "token" in res.stderr, res.output


def test_any_loopback_address_is_served_without_a_token(corpus):
    with BackgroundServer(corpus["store"], host="127.0.0.2") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert srv.url.startswith("http://127.0.0.2:")
        assert c.get("/api/status").status_code == 200
        assert c.post("/api/search", json={"text": "dog", "k": 1}).status_code == 200
        assert c.get("/api/status", headers={"Host": "attacker.example"}).status_code == 400  # still no rebinding


def test_imu_preview_draws_the_recording_on_its_own_time_axis(tmp_path, tiny_model):
    """7.5 s of a rising ramp: the model's windows (0-5 s and 2.5-7.5 s) end to end would fall back midway."""
    imu = tmp_path / "imu"
    imu.mkdir()
    t = np.arange(750) / 100.0
    rows = np.stack([t, t, np.zeros_like(t), np.zeros_like(t), np.zeros_like(t), np.zeros_like(t), t], axis=1)
    np.savetxt(imu / "ramp.csv", rows, delimiter=",", header="timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z",
               comments="", fmt="%.4f")
    with xsearch.open(tmp_path / "store", model=tiny_model) as store:
        store.index([imu])
        i = item_id(store, imu / "ramp.csv")
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.get(f"/api/items/{i}/preview.png")
    assert r.status_code == 200, r.text
    rgb = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    top = rgb[: rgb.shape[0] // 2]  # the accelerometer panel; x is drawn in red
    red = np.all(top == (220, 50, 47), axis=-1)
    cols = [x for x in range(red.shape[1]) if red[:, x].any()]
    rows_ = [float(np.flatnonzero(red[:, x]).mean()) for x in cols]
    assert len(cols) > 200  # a trace across the panel
    # a rising value is drawn higher (a smaller row) at every later column: no fall back in the middle
    assert max(b - a for a, b in zip(rows_, rows_[1:])) <= 2, rows_


def test_a_truncated_multipart_body_is_a_400_that_says_so(server):
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    whole = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\ndog\r\n' \
            b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n'
    assert raw_request(server.port, "POST", "/api/search", whole, headers).status == 200
    for cut in (whole[: whole.index(b"--b--")], whole[: whole.index(b"3\r\n")], whole[:20], b""):
        r = raw_request(server.port, "POST", "/api/search", cut, headers)
        assert r.status == 400 and b"truncated" in r.body, (cut, r.status, r.body)


def test_an_infinite_upload_limit_is_a_usage_error(corpus):
    env = {k: v for k, v in os.environ.items() if k != "XSEARCH_TOKEN"}
    for value in ("inf", "nan", "1e300"):
        res = CliRunner().invoke(cli_app, ["serve", "--max-upload-mb", value, "--store", str(corpus["root"] / "store")],
                                 env=env)
        assert res.exit_code == 2 and "--max-upload-mb" in res.stderr, (value, res.exit_code, res.output)


def test_a_client_that_goes_away_mid_upload_is_one_log_line(corpus):
    records: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    with BackgroundServer(corpus["store"], log_level="info") as srv:
        logger.addHandler(collect)
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
                s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                          b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nContent-Disposition: form-data;")
            deadline = time.monotonic() + 60
            while not any("disconnect" in r.getMessage() or r.exc_info for r in records) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            logger.removeHandler(collect)
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert len([r for r in records if "disconnected" in r.getMessage()]) == 1


def test_smaller_request_errors_are_plain_json(client, corpus):
    path = corpus["files"]["image"][0]
    r = client.get(f"/media/{item_id(corpus['store'], path)}", headers={"Range": "bytes=999999999-"})
    assert r.status_code == 416 and "beyond" in r.json()["detail"]
    assert r.headers["content-range"] == f"bytes */{path.stat().st_size}"
    r = post_form(client, {"text": "dog", "audio_weight": "2"})
    assert r.status_code == 422 and "no audio file" in r.json()["detail"], r.text
    r = client.post("/api/search", json={"vector": [[1.0, 2.0], [1.0]]})
    assert r.status_code == 422 and "same length" in r.json()["detail"] and "sequence" not in r.json()["detail"]
    dim = corpus["store"].storage.dim
    r = client.post("/api/search", json={"vector": [1.0, 2.0, 3.0], "target": "all"})
    assert r.status_code == 422 and f"store's embeddings have {dim}" in r.json()["detail"], r.text
    assert "index" not in r.json()["detail"]


def test_a_text_file_is_a_query_input_like_any_other(client, corpus):
    note = corpus["files"]["text"][0]
    with open(note, "rb") as f:
        r = client.post("/api/search", data={"target": "text", "k": "3", "text_weight": "2"},
                        files={"text": (note.name, f)})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["query"]["inputs"] == [{"kind": "text", "value": note.name, "weight": 2.0}]
    assert data["results"][0]["id"] == item_id(corpus["store"], note)
    assert data["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)  # read as the indexer read it
    r = client.post("/api/search", files={"text": ("bin.txt", b"\x00\x01\x02binary")})
    assert r.status_code == 400 and "bin.txt" in r.json()["detail"] and "xsearch-upload-" not in r.json()["detail"]
    assert "text" in client.get("/api/status").json()["server"]["upload_modalities"]
