"""Shared by the `xsearch serve` tests: a store over the whole corpus, raw HTTP, multipart forms."""
from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import httpx

import xsearch
from tests.corpus import build_corpus


def index_corpus(root: Path, golden: Path, model: str) -> tuple[xsearch.Store, dict[str, list[Path]]]:
    files = build_corpus(root, golden)
    store = xsearch.open(root / "store", model=model)
    store.index([root / "media"])
    store.index([root / "depth"], modality="depth")
    store.index([root / "thermal"], modality="thermal")
    store.index([root / "imu"])
    return store, files


def item_id(store: xsearch.Store, path: Path) -> int:
    return store.storage.item_by_path(str(path)).id


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, host: str = "127.0.0.1") -> http.client.HTTPResponse:
    """A request sent byte for byte (httpx would normalise ``..`` away); the response is read."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.body = resp.read()
        return resp
    finally:
        conn.close()


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    resp = raw_request(port, "GET", path, headers=headers)
    return resp.status, resp.body


def post_form(client: httpx.Client, fields: dict[str, Any] | list[tuple[str, Any]], **kwargs: Any) -> httpx.Response:
    """POST /api/search as multipart/form-data with plain fields only (httpx sends a form without files
    urlencoded, which the server refuses as a cross-site form)."""
    items = fields.items() if isinstance(fields, dict) else fields
    parts = [(k, (None, str(v))) for k, values in items for v in (values if isinstance(values, list) else [values])]
    return client.post("/api/search", files=parts + list(kwargs.pop("files", [])), **kwargs)
