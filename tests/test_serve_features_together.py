"""Where the server meets tags, moments, duplicates and re-embedding (real server, real stores)."""
from __future__ import annotations

import os
import time

import httpx

import xsearch
from tests.corpus import write_audio, write_image
from tests.helpers.models import random_model
from xsearch.engine.weights import model_id
from xsearch.serve import BackgroundServer

CROSS_SITE = {"sec-fetch-site": "cross-site", "origin": "https://evil.example"}


def test_the_api_shows_no_tags_or_moments_of_a_file_it_does_not_serve(tmp_path, tiny_model):
    media, outside = tmp_path / "media", tmp_path / "outside"
    media.mkdir(), outside.mkdir()
    write_image(media / "mine.png", 1)
    write_image(outside / "secret.png", 2)
    os.symlink(outside / "secret.png", media / "link.png")  # indexed, but outside the served folders
    write_audio(media / "tone.wav", 330.0, seconds=5.0)
    os.symlink(media / "tone.wav", outside / "tone.wav")
    os.symlink(outside / "tone.wav", media / "tone-link.wav")
    with xsearch.open(tmp_path / "store", model=tiny_model, device="cpu") as store:
        store.index([media], moments=True)
        store.tag(["dog", "cat"], name="pets", top=1)
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
            images = c.post("/api/search", json={"text": "a dog", "target": "image", "k": 10}).json()["results"]
            by_name = {os.path.basename(r["path"]): r for r in images}
            assert by_name["mine.png"]["tags"] and by_name["mine.png"]["media_url"]
            assert by_name["link.png"]["media_url"] is None and by_name["link.png"]["tags"] == []
            moments = c.post("/api/search", json={"text": "a tone", "target": "audio", "k": 10, "moments": True}).json()
            served = [r for r in moments["results"] if r["media_url"] is not None]
            assert served and all("start" in r for r in served)
            assert all("start" not in r and "end" not in r for r in moments["results"] if r["media_url"] is None)
            dups = c.get("/api/duplicates", params={"threshold": -1}).json()["groups"]
            members = [m for g in dups for m in g["members"]]
            assert members and all(m["tags"] == [] for m in members if m["media_url"] is None)


def test_another_sites_page_cannot_ask_for_duplicates(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    write_image(media / "a.png", 1)
    with xsearch.open(tmp_path / "store", model=tiny_model, device="cpu") as store:
        store.index([media])
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
            assert c.get("/api/duplicates", params={"cross": "true"}, headers=CROSS_SITE).status_code == 403
            assert c.get("/api/duplicates", params={"cross": "true"}).status_code == 200  # not a browser: fine
            assert c.get("/", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # a link to the page


def test_a_running_server_follows_a_reembed_made_by_another_process(tmp_path, tiny_model):
    other = random_model(tmp_path / "other", tiny_model, seed=11, out_embed_dim=16)
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        write_image(media / f"{i}.png", i)
    (media / "note.txt").write_text("a dog on a beach")
    with xsearch.open(tmp_path / "store", model=tiny_model, device="cpu") as store:
        store.index([media])
        with BackgroundServer(store) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
            assert c.post("/api/search", json={"text": "a dog", "k": 2}).status_code == 200
            with xsearch.open(tmp_path / "store", device="cpu") as writer:
                assert writer.reembed(other).switched
            time.sleep(1.1)  # the server looks at the store at most once a second
            r = c.post("/api/search", json={"text": "a dog", "k": 2})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["path"] == str(media / "note.txt")
            assert c.get("/api/status").json()["model"] == model_id(other)
