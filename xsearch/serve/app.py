"""The HTTP API and web page over one :class:`~xsearch.api.Store` (FastAPI).

``create_app(store)`` builds the app; ``xsearch serve`` runs it with uvicorn.

- ``POST /api/search``: JSON, or multipart with files under the modality's name
- ``GET /api/items/{id}``, ``GET /api/items/{id}/preview.png`` (depth, thermal, IMU; a video's poster frame)
- ``GET /media/{id}``: the file's bytes (HTTP Range works), only inside the indexed folders
- ``GET /api/status``, ``GET /docs`` (OpenAPI), ``GET /`` (the page)

Other processes' writes are picked up at most once a second (see ``_Service.current``).
"""
from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import math
import mimetypes
import os
import re
import reprlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xsearch import __version__
from xsearch.errors import MediaError, ModelError, StoreError, UsageError, XSearchError
from xsearch.pathnames import fs_path
from xsearch.query.spec import INPUT_MODALITIES, as_inputs
from xsearch.serve import apidocs
from xsearch.serve.preview import PREVIEW_MODALITIES, render_preview
from xsearch.storage.lock import is_locked

log = logging.getLogger("xsearch.serve")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1000 * 1000
MAX_K = 1000
UPLOAD_MODALITIES = ("image", "audio", "video", "depth", "thermal", "imu")
FILE_FIELDS = ("text", *UPLOAD_MODALITIES)  # a text file uploaded under "text" is read as the indexer reads it
JSON_KEYS = ("text", "like", "vector", "target", "k", "filters", "moments")
FILTER_KEYS = ("folder", "glob", "min_score", "tags")
FORM_FIELDS = ("text", "like", "target", "k", "moments") + FILTER_KEYS + tuple(f"{m}_weight" for m in FILE_FIELDS)
# What the API says of a failed file it does not serve: the indexer's reason may quote the file's content.
WITHHELD_REASON = ("could not be indexed; the reason is not shown for a file this server does not serve "
                   "(`xsearch status` on the server shows it)")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800" escapes decode to these: not encodable text
SNIPPET_CHARS = 300
TEXT_SNIFF_BYTES = 1 << 16  # read to choose a text file's charset
TOKEN_COOKIE = "xsearch_token"
PREVIEW_CACHE = 256  # rendered PNGs kept (each a few KB)
MAX_FILES, MAX_FIELDS = 32, 64  # per multipart request (documented in docs/serve.md)
MAX_ITEM_ID = 2**63 - 1  # SQLite INTEGER: larger ids cannot exist (and overflow the driver)
REFRESH_INTERVAL = 1.0  # seconds between checks for other processes' writes to the store
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "³" and "٣", which int() refuses or reads
_WHOLE_NUMBER = re.compile(r"\s*\+?[0-9]+\s*")
# RFC 9110 byte ranges: "bytes=" then first-last, first- or -suffix, comma-separated.
_RANGE_SPEC = r"\s*(?:[0-9]+-[0-9]*|-[0-9]+)\s*"
_BYTE_RANGES = re.compile(rf"\s*bytes\s*=(?:{_RANGE_SPEC},)*{_RANGE_SPEC}", re.IGNORECASE)

# Types mimetypes may not know everywhere; browsers need these to play or show the file.
_EXTRA_TYPES = {
    ".flac": "audio/flac", ".m4a": "audio/mp4", ".opus": "audio/ogg", ".oga": "audio/ogg", ".ogg": "audio/ogg",
    ".webm": "video/webm", ".mkv": "video/x-matroska", ".m4v": "video/mp4", ".webp": "image/webp",
    ".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".csv": "text/csv; charset=utf-8",
    ".npy": "application/octet-stream", ".npz": "application/octet-stream",
}
_SAFE_EXT = re.compile(r"\.[a-z0-9]{1,10}")


class ApiError(Exception):
    """An error answered as ``{"detail": message}`` with ``status``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class UploadTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body is larger than the server's upload limit of {limit} bytes")
        self.limit = limit


def error_status(exc: XSearchError) -> int:
    """HTTP status of a library error: bad media 400, bad request 422, store/model trouble 503."""
    if isinstance(exc, MediaError):
        return 400
    if isinstance(exc, UsageError):
        return 422
    if isinstance(exc, (StoreError, ModelError)):
        return 503
    return 500


def _api_reference(app: FastAPI) -> str:
    page = getattr(app.state, "api_reference", None)
    if page is None:  # the schema is fixed once the app is built: render it once
        page = app.state.api_reference = apidocs.render(app.openapi())
    return page


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 6, 6, 3


def show(value: Any) -> str:
    """A bounded repr for error messages: a request may send a huge or deeply nested value."""
    return _short.repr(value)


def parse_item_id(text: str) -> int | None:
    """An item id written in ASCII digits within SQLite's integer range, else None."""
    if not _DIGITS.fullmatch(text) or len(text) > 19:  # 19 digits: 2**63 - 1, and int() stays cheap
        return None
    value = int(text)
    return value if value <= MAX_ITEM_ID else None


def valid_range(header: str) -> bool:
    """Whether a Range header is well-formed (RFC 9110 14.1.1), with first <= last in every range."""
    if not _BYTE_RANGES.fullmatch(header):
        return False
    for spec in header.partition("=")[2].split(","):
        first, _, last = spec.strip().partition("-")
        if first and last and int(first) > int(last):
            return False
    return True


class MediaFileResponse(FileResponse):
    """A FileResponse that ignores an invalid Range header and sends the whole file (RFC 9110 allows it),
    where Starlette answers a plain-text 400, and answers a range beyond the file with JSON like every error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers") or []
        rng = next((v for k, v in headers if k == b"range"), None)
        if rng is not None:
            text, ignore = rng.decode("latin-1"), not valid_range(rng.decode("latin-1"))
            if not ignore:
                size = os.stat(self.path).st_size
                try:
                    self._parse_range_header(text, size)
                except MalformedRangeHeader:
                    ignore = True
                except RangeNotSatisfiable:
                    detail = f"the range {show(text)} lies beyond the file, which has {size} bytes"
                    response = JSONResponse({"detail": detail}, status_code=416, headers={"Content-Range": f"bytes */{size}"})
                    return await response(scope, receive, send)
            if ignore:
                scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"range"]}
        await super().__call__(scope, receive, send)


def media_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    kind = _EXTRA_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    if kind.startswith("text/"):
        from xsearch.engine.preprocess.text import read_text_head

        # The charset the indexer read it with: a Latin-1 note must not show as mojibake.
        try:
            kind = f"{kind.split(';')[0]}; charset={read_text_head(path, TEXT_SNIFF_BYTES)[1]}"
        except OSError:
            pass
    return kind


# --------------------------------------------------------------------------- search requests


@dataclass
class SearchRequest:
    """A parsed search: store.search keyword arguments plus the names to show for uploaded files."""

    inputs: dict[str, list[Any]] = field(default_factory=dict)  # kind -> values for as_inputs
    target: Any = "all"
    k: int = 10
    folder: str | None = None
    glob: str | None = None
    min_score: float | None = None
    tags: list[str] = field(default_factory=list)  # only items carrying every one of these tags
    labels: dict[str, str] = field(default_factory=dict)  # temp path -> uploaded file name
    text_files: dict[str, str] = field(default_factory=dict)  # an uploaded text file's content -> its name
    moments: bool = False  # results are moments (start/end inside recordings) instead of files

    def add(self, kind: str, value: Any) -> None:
        self.inputs.setdefault(kind, []).append(value)

    def relabel(self, text: str) -> str:
        """Show uploaded files by their own names, never the server's temp paths."""
        for tmp, name in self.labels.items():
            text = text.replace(tmp, name)
        return text

    def describe(self) -> dict[str, Any]:
        inputs = []
        for kind, values in self.inputs.items():
            for inp in as_inputs(kind, values):
                d = inp.describe()
                if kind == "text" and d["value"] in self.text_files:
                    d["value"] = self.text_files[d["value"]]  # the file's name, not its whole content
                elif isinstance(d["value"], str):
                    d["value"] = self.relabel(d["value"])
                inputs.append(d)
        filters = {"folder": self.folder, "glob": self.glob, "min_score": self.min_score,
                   **({"tags": self.tags} if self.tags else {})}
        return {"inputs": inputs, "target": self.target, "k": self.k, "filters": filters,
                **({"moments": True} if self.moments else {})}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _is_text_pair(value: Any) -> bool:
    """``["a dog", 2]``: one weighted text (a list of two texts has a string second)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def _parse_k(value: Any) -> int:
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value):  # ASCII digits: int() refuses "²"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise ApiError(422, f"k must be a whole number from 1 to {MAX_K}, not {show(value)}")
    return value


def _parse_target(value: Any) -> str | list[str]:
    """A modality name (or "all", or a comma list) or a non-empty list of them."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(t, str) and t.strip() for t in value):
        return value
    raise ApiError(422, f'target must be "all", a modality name or a non-empty list of modality names, not {show(value)}')


def _parse_number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ApiError(422, f"{name} must be a finite number, not {show(value)}")
    return number


def _parse_text(value: Any) -> Any:
    """A text input: "VALUE@WEIGHT" or a [value, weight] pair."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _parse_number("a text weight", value[1]))
    raise ApiError(422, f'text inputs are strings ("VALUE@WEIGHT") or [value, weight] pairs, not {show(value)}')


def _parse_vector(value: Any) -> list[list[float]]:
    rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
    for row in rows:
        if not isinstance(row, list) or not row or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise ApiError(422, "vector must be a list of numbers, or a list of such lists")
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1:
        raise ApiError(422, f"vector rows must all have the same length, not lengths {show(lengths)}")
    return rows


def _refuse_surrogates(body: Any) -> None:
    """400 for a lone surrogate (``"\\ud800"``) anywhere in a JSON body: it is no text, it cannot be stored,
    searched for or echoed back. Iterative: the decoder already bounds the nesting, but not our stack."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ApiError(400, "the JSON body holds a lone surrogate escape (such as \\ud800) in a string: "
                                    "that is not valid Unicode text; send text as UTF-8")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def parse_json_search(body: Any) -> SearchRequest:
    """``{"text", "like", "vector", "target", "k", "filters": {"folder", "glob", "min_score"}}``."""
    _refuse_surrogates(body)
    if not isinstance(body, dict):
        raise ApiError(422, 'the JSON body must be an object such as {"text": "a dog", "target": "image"}')
    for m in UPLOAD_MODALITIES:
        if m in body:
            raise ApiError(422, f"{m} inputs are files: upload them as multipart/form-data under the field {m!r}")
    unknown = sorted(set(body) - set(JSON_KEYS))
    if unknown:
        raise ApiError(422, f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(JSON_KEYS)}")
    req = SearchRequest()
    text = body.get("text", [])
    for value in [text] if _is_text_pair(text) else _as_list(text):
        req.add("text", _parse_text(value))
    for value in _as_list(body.get("like", [])):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ApiError(422, f"like takes item ids or indexed paths, not {show(value)}")
        req.add("like", value)
    if body.get("vector") is not None:
        for row in _parse_vector(body["vector"]):
            req.add("vector", row)
    if body.get("target") is not None:
        req.target = _parse_target(body["target"])
    if "k" in body:
        req.k = _parse_k(body["k"])
    if body.get("moments") is not None:
        if not isinstance(body["moments"], bool):
            raise ApiError(422, f"moments must be true or false, not {show(body['moments'])}")
        req.moments = body["moments"]
    filters = body.get("filters") or {}
    if not isinstance(filters, dict) or set(filters) - set(FILTER_KEYS):
        raise ApiError(422, f"filters must be an object with keys among {', '.join(FILTER_KEYS)}, not {show(filters)}")
    _set_filters(req, filters)
    return req


def _set_filters(req: SearchRequest, filters: dict[str, Any]) -> None:
    for key in ("folder", "glob"):
        value = filters.get(key)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise ApiError(422, f"{key} must be a string, not {show(value)}")
            if key == "folder" and not os.path.isabs(value):
                # Resolved here it would mean the server's working directory, which a client cannot know.
                raise ApiError(422, f"folder must be an absolute path, not {show(value)}")
            setattr(req, key, value)
    if filters.get("min_score") not in (None, ""):
        req.min_score = _parse_number("min_score", filters["min_score"])
    req.tags = _parse_tags(filters.get("tags"))


def _parse_tags(value: Any) -> list[str]:
    """A tag or a list of tags, all required; empty ones are ignored."""
    values = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
        raise ApiError(422, f"tags must be a string or a list of strings, not {show(value)}")
    return list(dict.fromkeys(t.strip() for t in values if t.strip()))


def _upload_suffix(upload: UploadFile) -> str:
    """The uploaded name's extension (loaders look at it), else one guessed from the content type."""
    ext = os.path.splitext(os.path.basename(upload.filename or ""))[1].lower()
    if _SAFE_EXT.fullmatch(ext):
        return ext
    guessed = mimetypes.guess_extension((upload.content_type or "").split(";")[0].strip()) or ""
    return guessed if _SAFE_EXT.fullmatch(guessed) else ""


def _save_upload(upload: UploadFile, dest: str) -> int:
    upload.file.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
        return out.tell()


def parse_form_search(form: FormData, tmpdir: str) -> SearchRequest:
    """Multipart fields: files under text/image/audio/video/depth/thermal/imu, ``<modality>_weight``,
    ``text`` (repeatable, VALUE@WEIGHT), ``like``, ``target``, ``k``, ``folder``, ``glob``, ``min_score``.

    Uploaded files are copied into ``tmpdir`` keeping their extension (blocking: call in a thread).
    """
    req = SearchRequest()
    files: dict[str, list[UploadFile]] = {}
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in FILE_FIELDS:
                raise ApiError(422, f"unknown upload field {key!r}; upload files under one of {', '.join(FILE_FIELDS)}")
            files.setdefault(key, []).append(value)
        elif key in UPLOAD_MODALITIES:
            raise ApiError(422, f"field {key!r} must be an uploaded file, not a plain form value")
        elif key not in FORM_FIELDS:
            raise ApiError(422, f"unknown form field {key!r}; expected files under {', '.join(FILE_FIELDS)} "
                                f"or fields {', '.join(FORM_FIELDS)}")
        else:
            fields.setdefault(key, []).append(value)
    for value in fields.get("text", []):
        if value.strip():
            req.add("text", value)
    for value in fields.get("like", []):
        if value.strip():
            req.add("like", value.strip())
    if fields.get("target"):
        req.target = [t for t in fields["target"] if t.strip()] or "all"
    if fields.get("k"):
        req.k = _parse_k(fields["k"][-1])
    if fields.get("moments"):
        flag = fields["moments"][-1].strip().lower()
        if flag not in ("1", "true", "on", "0", "false", "off", ""):
            raise ApiError(422, f"moments must be true or false, not {show(fields['moments'][-1])}")
        req.moments = flag in ("1", "true", "on")
    # "tags" may be repeated (all must hold); the other filters take their last value.
    _set_filters(req, {key: fields[key] if key == "tags" else fields[key][-1] for key in FILTER_KEYS if fields.get(key)})
    for modality in FILE_FIELDS:
        if fields.get(f"{modality}_weight") and modality not in files:
            raise ApiError(422, f"{modality}_weight is the weight of uploaded {modality} files, and no {modality} "
                                f"file was uploaded: upload one under the field {modality!r}, or drop the weight")
    n = 0
    for modality, uploads in files.items():
        weights = [_parse_number(f"{modality}_weight", w) for w in fields.get(f"{modality}_weight", [])]
        if len(weights) not in (0, 1, len(uploads)):
            raise ApiError(422, f"{len(weights)} {modality}_weight values for {len(uploads)} {modality} files; "
                                "give one weight for all, or one per file")
        for i, upload in enumerate(uploads):
            name = os.path.basename(upload.filename or "") or f"(unnamed {modality} upload)"
            dest = os.path.join(tmpdir, f"upload{n}{_upload_suffix(upload)}")
            n += 1
            if _save_upload(upload, dest) == 0:
                raise ApiError(400, f"uploaded {modality} file {name!r} is empty")
            weight = weights[i] if len(weights) == len(uploads) else (weights[0] if weights else 1.0)
            if modality == "text":
                text = _read_text_upload(dest, name)
                req.text_files[text] = name
                req.add("text", (text, weight))
                continue
            req.labels[dest] = name
            req.add(modality, (dest, weight))
    return req


def _read_text_upload(path: str, name: str) -> str:
    """An uploaded text file's text, decoded as the indexer decodes text files (so it finds itself)."""
    from xsearch.engine.preprocess.text import load_text

    try:
        return load_text(path)
    except MediaError as e:
        raise ApiError(400, f"uploaded text file {name!r}: {e.reason}") from e


# --------------------------------------------------------------------------- middleware


class BodyLimit:
    """413 for request bodies over ``limit`` bytes, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": str(UploadTooLarge(self.limit))}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class TokenAuth:
    """Every request needs the token: ``Authorization: Bearer``, ``?token=`` (media tags), or the
    cookie set when the page was opened with ``?token=``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token.encode()

    def _matches(self, candidate: str | bytes | None) -> bool:
        if candidate is None:
            return False
        raw = candidate if isinstance(candidate, bytes) else candidate.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(raw, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        # Compared as bytes: a non-ASCII token arrives as its UTF-8 bytes, which a latin-1 decode would garble.
        bearer = auth[7:].strip() if auth[:7].lower() == b"bearer " else None
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = parse_qs(query_string).get("token", [None])[-1]
        # Form decoding turns "+" into a space: a base64 token pasted into the URL unencoded still works.
        raw_query = _raw_param(query_string, "token")
        cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"), TOKEN_COOKIE)
        if not any(self._matches(c) for c in (bearer, query, raw_query, cookie)):
            detail = "missing or wrong token: send 'Authorization: Bearer <token>' or add ?token=<token> to the URL"
            response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if scope["path"] == "/" and (self._matches(query) or self._matches(raw_query)):
            query = self.token.decode("utf-8", "surrogateescape")
            # The page was opened as /?token=...: remember it so its scripts, styles and /docs work too.
            cookie_header = f"{TOKEN_COOKIE}={quote(query, safe='')}; Path=/; HttpOnly; SameSite=Strict".encode()

            async def send_with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie_header)]}
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        await self.app(scope, receive, send)


class SecurityHeaders:
    """On every answer, errors included: no content-type sniffing (a served file is only ever what its type
    says) and no framing by other sites (clickjacking)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"content-security-policy", b"frame-ancestors 'none'")]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SameOriginWrites:
    """403 for a POST (or any /api/ request) made by another site's page. A form or fetch on any web page can POST to a loopback
    server without a token (it cannot read the answer, but it runs the model); browsers say where a request
    comes from in Sec-Fetch-Site, older ones in Origin. Clients that are not browsers send neither."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every method under /api/ too: GET /api/duplicates?cross=true runs the model.
        if scope["type"] == "http" and (scope["method"] not in ("GET", "HEAD", "OPTIONS")
                                        or scope.get("path", "").startswith("/api/")):
            headers = dict(scope["headers"])
            site, origin = headers.get(b"sec-fetch-site"), headers.get(b"origin")
            if site is not None:
                cross = site.strip().lower() not in (b"same-origin", b"none")
            elif origin is not None:  # "null" (a sandboxed frame, a file) has no host: cross-site too
                cross = urlsplit(origin.decode("latin-1").strip()).netloc.lower() != headers.get(b"host", b"").decode("latin-1").lower()
            else:
                cross = False
            if cross:
                detail = "cross-site request refused: only this server's own page (or a client that is not a browser) may search"
                return await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


class HostCheck:
    """400 unless the Host header names one of ``allowed`` (port ignored; IPv6 in brackets works)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app, self.allowed = app, {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
            if name not in self.allowed:
                detail = f"Host {host!r} is not served here; use http://127.0.0.1 or http://localhost"
                return await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)


def _raw_param(query_string: str, name: str) -> str | None:
    """The last ``name=`` value of a query string, percent-decoded but with "+" kept as "+"."""
    found = None
    for part in query_string.split("&"):
        key, sep, value = part.partition("=")
        if sep and key == name:
            found = unquote(value, encoding="utf-8", errors="surrogateescape")
    return found


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return unquote(value)
    return None


# --------------------------------------------------------------------------- the app


class _Service:
    """What the endpoints share: the store, the lock around model inference, the roots check.

    Endpoints take the store from :meth:`current` once per request, so one request never mixes two stores.
    """

    def __init__(self, store: Any, token: str | None, refresh_interval: float = REFRESH_INTERVAL):
        self.store = store
        self.token = token
        # One embedding at a time: torch already uses every core for one batch, and the
        # embedder's towers are loaded lazily; concurrent requests queue here, not in torch.
        self.model_lock = threading.Lock()
        self.refresh_interval = refresh_interval
        self._check_lock = threading.Lock()
        self._next_check = 0.0
        self._unavailable: str | None = None  # why the store cannot be used now (answered as 503)
        self._owned: Any = None  # a store this app opened itself (after a replacement): closed at shutdown
        # Reopening follows the new store's own record of its model; the option given is kept only when
        # the store recorded none (it was what chose the model then).
        self._model_option = None if store.storage.get_meta("model_name") == store.model_name else store.model_name

    # ------------------------------------------------------------ keeping up with the store on disk

    def current(self) -> Any:
        """The store to answer this request from, after the throttled check for outside changes.

        Between checks this costs one clock read. Requests arriving while another thread checks go on
        with the state they have rather than queue behind it.
        """
        now = time.monotonic()
        if now >= self._next_check and self._check_lock.acquire(blocking=False):
            try:
                self._next_check = now + self.refresh_interval
                self._check()
            finally:
                self._check_lock.release()
        if self._unavailable is not None:
            raise ApiError(503, self._unavailable)
        return self.store

    def _check(self) -> None:
        store = self.store
        state = store.storage.file_state()
        if state == "gone":
            self._unavailable = (f"the store {store.path} is gone (deleted or moved away); searches work again "
                                 "once `xsearch index` creates it there anew")
            return
        if state == "replaced":
            self._reopen()
            return
        self._unavailable = None  # moved away and back: the same file, so the same store
        # While an index run writes, its index files trail the database: reloading then would rebuild
        # from the database; the loaded snapshot stays consistent until the run finishes and saves.
        if not is_locked(store.path):
            store.storage.refresh()
            stored = store.storage.get_meta("model")
            if stored is not None and stored != store.model_id and store.storage.dim is not None:
                # Another process switched the store to another model (`xsearch reembed`): serve with it.
                self._model_option = None
                self._reopen()

    def _reopen(self) -> None:
        """The database file was replaced (store deleted and created again): open the new one."""
        old = self.store
        try:
            new = old.reopen(self._model_option)  # shares the loaded model when it is the same one
        except XSearchError as e:  # still being created: try again at the next check
            self._unavailable = f"the store {old.path} was replaced and cannot be opened yet: {e}"
            return
        self.store, self._unavailable = new, None
        self._owned = new  # an earlier replacement, if any, was `old`: disposed below, never closed
        log.warning("the store %s was replaced on disk (deleted and created again): reopened it", old.path)
        # Dropping the pooled connections releases the deleted database file now; closing stays with the
        # caller for the first store (Storage.flush never writes into a folder whose database was replaced).
        old.storage.engine.dispose()

    def close(self) -> None:
        """Close the store this app opened itself, if any (the caller owns the one it passed in)."""
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    # ------------------------------------------------------------ items and files

    @staticmethod
    def real_roots(store: Any) -> list[str]:
        return [os.path.realpath(fs_path(r)) for r in store.storage.roots()]

    @staticmethod
    def inside(path: str, roots: Iterable[str]) -> str | None:
        """The real path of the stored ``path`` when it is a regular file inside one of ``roots`` (symlinks
        resolved). Stored paths hold non-UTF-8 names escaped; ``fs_path`` gives the name on disk back."""
        real = os.path.realpath(fs_path(path))
        for root in roots:
            if (real == root or real.startswith(root.rstrip(os.sep) + os.sep)) and os.path.isfile(real):
                return real
        return None

    @staticmethod
    def item(store: Any, item_id: str) -> Any:
        iid = parse_item_id(item_id)
        if iid is None:
            raise ApiError(404, f"no item {show(item_id)}: item ids are whole numbers (ASCII digits) below 2**63")
        found = store.storage.get_items([iid])
        if not found:
            raise ApiError(404, f"no item with id {iid} in this store")
        return found[0]

    def servable(self, store: Any, item: Any) -> str:
        real = self.inside(item.path, self.real_roots(store))
        if real is None or not os.access(real, os.R_OK):
            # Same answer for "outside the indexed folders" and "gone": nothing to learn by probing.
            raise ApiError(404, f"item {item.id}'s file is not available (missing, or outside the indexed folders)")
        return real

    def media_url(self, item_id: int) -> str:
        return f"/media/{item_id}" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    def preview_url(self, item_id: int, modality: str) -> str | None:
        if modality not in PREVIEW_MODALITIES:
            return None
        return f"/api/items/{item_id}/preview.png" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    def describe_item(self, item: Any, roots: list[str], *, score: float | None = None, rank: int | None = None,
                      facts: dict | None = None) -> dict[str, Any]:
        real = self.inside(item.path, roots)
        if real is None:
            # Every stored fact (a text's snippet and length, an image's size, a recording's duration) was
            # read from the file: a file that is not served must not leak through them either.
            facts = {}
        else:
            facts = dict(facts if facts is not None else (getattr(item, "facts", None) or {}))
            if item.modality == "text" and "snippet" not in facts:
                facts["snippet"] = _snippet(real)
        out: dict[str, Any] = {}
        if rank is not None:
            out["rank"] = rank
        out.update({"id": item.id, "path": item.path, "name": os.path.basename(item.path), "modality": item.modality})
        if score is not None:
            out["score"] = score
        out.update({
            "media_url": self.media_url(item.id) if real is not None else None,
            "preview_url": self.preview_url(item.id, item.modality) if real is not None else None,
            "facts": facts,
        })
        return out

    # ------------------------------------------------------------ searching

    def search(self, req: SearchRequest) -> list[dict[str, Any]]:
        """Blocking: run Store.search (under the model lock when it embeds), describe the hits."""
        store = self.current()
        if "like" in req.inputs:
            req.inputs["like"] = [self._like_value(v) for v in req.inputs["like"]]
        needs_model = any(kind in INPUT_MODALITIES for kind in req.inputs)
        # like/vector searches never touch the model (and storage searches are thread-safe): no queue for them.
        with self.model_lock if needs_model else contextlib.nullcontext():
            hits = store.search(**req.inputs, target=req.target, k=req.k, folder=req.folder, glob=req.glob,
                                min_score=req.min_score, tags=req.tags or None, moments=req.moments)
        roots = self.real_roots(store)
        out = [self.describe_item(h, roots, score=h.score, rank=h.rank, facts=h.facts) for h in hits]
        for d, h in zip(out, hits):
            if h.start is not None and d["media_url"] is not None:  # a moment: its span (players start there)
                d.update(start=h.start, end=h.end)
        return self.with_tags(store, out)

    @staticmethod
    def with_tags(store: Any, described: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each described item with its current tags (``[{"label", "prob", "set"}]``)."""
        tags = store.tags_of([d["id"] for d in described])
        for d in described:
            # Tags are read from the file's content: nothing of a file this server does not serve.
            d["tags"] = tags.get(d["id"], []) if d["media_url"] is not None else []
        return described

    def duplicates(self, target: str, threshold: float, cross: bool, cross_threshold: float | None) -> list[dict[str, Any]]:
        """Blocking: Store.duplicates (under the model lock when --cross embeds sound tracks), members described."""
        store = self.current()
        with self.model_lock if cross else contextlib.nullcontext():
            groups = store.duplicates(target=target, threshold=threshold, cross=cross, cross_threshold=cross_threshold)
        roots = self.real_roots(store)
        items = {it.id: it for it in store.storage.get_items([m.id for g in groups for m in g.members])}
        out = []
        for g in groups:
            members = []
            for m in g.members:
                if m.id in items:
                    d = self.describe_item(items[m.id], roots, score=m.score)
                    d["keeper"] = m.keeper
                    members.append(d)
            out.append({"kind": g.kind, "keeper": g.keeper.path, "members": self.with_tags(store, members)})
        return out

    @staticmethod
    def _like_value(value: int | str) -> int | str:
        """``like`` takes an item id (as a number or ASCII digits) or an indexed path (``PATH@WEIGHT`` allowed):
        ids go to Store.search as ints, which looks each one up once (a missing one is a 422 from there)."""
        if isinstance(value, str) and not _DIGITS.fullmatch(value):
            return value
        iid = parse_item_id(value) if isinstance(value, str) else value
        if iid is None or not 0 <= iid <= MAX_ITEM_ID:
            raise ApiError(422, f"like: no item with id {str(value)[:40]} in this store")
        return iid


def _snippet(path: str) -> str:
    from xsearch.engine.preprocess.text import read_text_head

    try:
        text = read_text_head(path, 4 * SNIPPET_CHARS + 4)[0]  # UTF-8 takes up to 4 bytes a character
    except OSError:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


@functools.lru_cache(maxsize=PREVIEW_CACHE)
def _cached_preview(modality: str, path: str, size: int, mtime_ns: int) -> bytes:
    return render_preview(modality, path)  # size and mtime are in the key so an edited file re-renders


def _slash_redirect(app: FastAPI, scope: Scope) -> str | None:
    """Where ``/media/10/`` (a GET that only misses by its trailing slash) goes: a path-only Location, never
    built from the Host header (which the client chose), and without the token, which never belongs in one."""
    path = scope["path"]
    if scope["method"] not in ("GET", "HEAD") or path == "/" or not path.endswith("/"):
        return None
    stripped = "/" + path.strip("/")  # one leading slash: "//host" would be a link to another site
    probe = {**scope, "path": stripped}
    if not any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
        return None
    query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
             if k != "token"]
    return quote(stripped) + (f"?{urlencode(query)}" if query else "")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _CompleteMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary arrived: python-multipart takes a
    body cut short without a word, silently dropping the part it was in."""

    complete = False

    def on_end(self) -> None:
        self.complete = True


async def _read_form(request: Request) -> FormData:
    """The multipart form of ``request``; 400 when it is malformed, over the part limits, or truncated."""
    parser = _CompleteMultiPartParser(request.headers, request.stream(), max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"the multipart body cannot be read: {e}") from e
    if not parser.complete:
        await form.close()
        raise ApiError(400, "the multipart body is truncated (it ends before its closing boundary): "
                            "send the whole request again")
    return form


def create_app(
    store: Any,
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    allowed_hosts: Iterable[str] | None = None,
    refresh_interval: float = REFRESH_INTERVAL,
) -> FastAPI:
    """The FastAPI app serving ``store`` (an :class:`xsearch.api.Store`).

    ``token``: required on every request when set. ``max_upload_bytes``: larger request
    bodies get 413. ``allowed_hosts``: accepted ``Host`` headers (None: any); ``xsearch serve``
    limits an unauthenticated loopback server to loopback names, against DNS rebinding.
    ``refresh_interval``: seconds between checks for other processes' writes (an index run that
    finished, the store deleted or created again); 0 checks on every request.
    """
    from xsearch.serve import check_token

    check_token(token)  # as `xsearch serve` does: a blank or short token guards nothing
    if max_upload_bytes < 1:
        raise UsageError(f"max_upload_bytes must be positive, not {max_upload_bytes}")
    if not refresh_interval >= 0:
        raise UsageError(f"refresh_interval must be 0 or more seconds, not {refresh_interval}")
    from xsearch.engine.embedder import resolve_device

    # A device that does not exist would fail every search that embeds: refuse now (UsageError, exit 2).
    resolve_device(store.device)
    svc = _Service(store, token or None, refresh_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        svc.close()  # only a store the app reopened itself; the caller closes the one it passed in

    app = FastAPI(
        title="xsearch",
        summary="Cross-modal search over photos, video, sound, depth, thermal, IMU and text (ImageBind).",
        version=__version__,
        docs_url="/docs/swagger",  # Swagger UI needs its CDN; /docs below works offline
        lifespan=lifespan,
        redirect_slashes=False,  # Starlette's would build an absolute URL from the Host header: see _not_found
    )
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.detail)

    @app.exception_handler(XSearchError)
    async def _xsearch_error(_request: Request, exc: XSearchError) -> JSONResponse:
        return _error(error_status(exc), str(exc))

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _exc: ClientDisconnect) -> Response:
        # Not a server fault (a closed tab, a cancelled upload): one line, no traceback.
        logging.getLogger("uvicorn.error").info("%s %s: the client disconnected before sending the whole request",
                                                request.method, request.url.path)
        return Response(status_code=400)  # nobody is left to read it

    @app.exception_handler(HTTPException)
    async def _not_found(request: Request, exc: HTTPException) -> Response:
        location = _slash_redirect(app, request.scope) if exc.status_code == 404 else None
        if location is not None:
            return Response(status_code=307, headers={"Location": location})
        return await http_exception_handler(request, exc)

    @app.post(
        "/api/search",
        summary="Search by text, uploaded files, indexed items (like) or vectors",
        openapi_extra={"requestBody": _SEARCH_BODY_DOC},
    )
    async def search(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await _search_form(request)
        if ctype != "application/json":
            # Forms and text/plain are what another site's page may send without asking: refused.
            raise ApiError(415, f"send the search as application/json or multipart/form-data, "
                                f"not {show(ctype) if ctype else 'a body without a Content-Type'}")
        try:
            body = await request.json()
        except RecursionError as e:  # the decoder recurses per nesting level
            raise ApiError(400, "the JSON body is nested too deeply") from e
        except ValueError as e:
            raise ApiError(400, f"the body is not valid JSON ({e}); send JSON or multipart/form-data") from e
        req = parse_json_search(body)
        results = await run_in_threadpool(svc.search, req)
        return JSONResponse({"query": req.describe(), "results": results})

    async def _search_form(request: Request) -> JSONResponse:
        tmpdir = tempfile.mkdtemp(prefix="xsearch-upload-")
        try:
            form = await _read_form(request)
            try:
                req = await run_in_threadpool(parse_form_search, form, tmpdir)
            finally:
                await form.close()
            try:
                results = await run_in_threadpool(svc.search, req)
            except XSearchError as e:
                return _error(error_status(e), req.relabel(str(e)))
            except ApiError:
                raise
            except Exception as e:  # a decoder that failed without a MediaError: still the upload's fault
                if not req.labels:
                    raise
                log.exception("search with uploads failed")
                names = ", ".join(repr(n) for n in req.labels.values())
                return _error(400, f"cannot decode the uploaded file(s) {names}: {req.relabel(str(e)) or type(e).__name__}")
            return JSONResponse({"query": req.describe(), "results": results})
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    @app.get("/api/items/{item_id}", summary="An item's metadata and media URL")
    def item(item_id: str) -> dict[str, Any]:
        store = svc.current()
        it = svc.item(store, item_id)
        out = svc.describe_item(it, svc.real_roots(store))
        served = out["media_url"] is not None  # else nothing read from the file is told (see WITHHELD_REASON)
        error = getattr(it, "error", None)
        out.update({"status": getattr(it, "status", None), "error": error if served else error and WITHHELD_REASON,
                    "size": getattr(it, "size", None) if served else None,
                    "mtime_ns": getattr(it, "mtime_ns", None) if served else None})
        return out

    @app.get("/api/items/{item_id}/preview.png", response_class=Response,
             summary="Depth/thermal in false colour, IMU as a plot, a video's first frame (PNG)")
    def preview(item_id: str) -> Response:
        store = svc.current()
        it = svc.item(store, item_id)
        if it.modality not in PREVIEW_MODALITIES:
            raise ApiError(404, f"no preview for {it.modality} items; previews exist for {', '.join(PREVIEW_MODALITIES)}")
        real = svc.servable(store, it)
        try:
            st = os.stat(real)
            png = _cached_preview(it.modality, real, st.st_size, st.st_mtime_ns)
        except (MediaError, OSError) as e:
            # The request is fine: the file changed (or went) since it was indexed. Not a client error.
            raise ApiError(404, f"cannot render item {it.id} as {it.modality} (the file changed since it was "
                                f"indexed?): {e}") from e
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/media/{item_id}", summary="The item's file (Range requests work)", response_class=FileResponse)
    def media(item_id: str) -> FileResponse:
        store = svc.current()
        real = svc.servable(store, svc.item(store, item_id))
        return MediaFileResponse(real, media_type=media_type(real), headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/duplicates", summary="Groups of near-duplicate items, each with a suggested keeper first")
    def duplicates(target: str = "all", threshold: float = 0.95, cross: bool = False,
                   cross_threshold: float | None = None) -> dict[str, Any]:
        for name, value in (("threshold", threshold), ("cross_threshold", cross_threshold)):
            if value is not None and not (math.isfinite(value) and -1 <= value <= 1):
                raise ApiError(422, f"{name} must be a cosine between -1 and 1, not {show(value)}")
        return {"threshold": threshold, "groups": svc.duplicates(target, threshold, cross, cross_threshold)}

    @app.get("/api/status", summary="Counts per modality, indexes, model, failed files")
    def status() -> dict[str, Any]:
        store = svc.current()
        out = dict(store.status())
        roots = svc.real_roots(store)
        out["errors"] = [e if svc.inside(e["path"], roots) else {**e, "reason": WITHHELD_REASON} for e in out["errors"]]
        out["server"] = {
            "token_required": bool(svc.token),
            "max_upload_bytes": max_upload_bytes,
            "upload_modalities": list(FILE_FIELDS),
            "targets": ["all", *INPUT_MODALITIES],
        }
        return out

    @app.get("/docs", include_in_schema=False)
    def api_reference() -> HTMLResponse:
        return HTMLResponse(_api_reference(app))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    # HEAD on every GET endpoint (media players probe sizes with it; monitors probe /api/status).
    # Kept out of the schema (one operation per path); servers send no body for HEAD.
    for path, endpoint in (("/media/{item_id}", media), ("/api/items/{item_id}", item),
                           ("/api/items/{item_id}/preview.png", preview), ("/api/status", status),
                           ("/docs", api_reference), ("/", page)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Outermost first: security headers on every answer, the host check, cross-site refusal, the token,
    # then the body limit (never read a body before auth).
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    if token:
        app.add_middleware(TokenAuth, token=token)
    app.add_middleware(SameOriginWrites)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app


_SEARCH_BODY_DOC = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "text": {"description": 'A text, "TEXT@WEIGHT", [text, weight], or a list of these',
                             "anyOf": [{"type": "string"}, {"type": "array"}]},
                    "like": {"description": "Indexed item ids or paths whose stored vectors are used",
                             "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "array"}]},
                    "vector": {"description": "Raw embedding(s)", "type": "array"},
                    "target": {"description": '"all", a modality, or a list', "anyOf": [{"type": "string"}, {"type": "array"}]},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                    "filters": {"type": "object", "properties": {
                        "folder": {"type": "string"}, "glob": {"type": "string"}, "min_score": {"type": "number"},
                        "tags": {"description": "Only items carrying every one of these tags (xsearch tag)",
                                 "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}},
                    "moments": {"type": "boolean", "default": False, "description": (
                        "Return moments inside recordings indexed with --moments: each result then has "
                        "start and end (seconds). like and file inputs take a span as PATH#t=START,END")},
                },
                "example": {"text": "a dog", "target": "image", "k": 10},
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    **{m: {"type": "string", "format": "binary", "description": f"{m} file(s) to search by"}
                       for m in UPLOAD_MODALITIES},
                    **{f"{m}_weight": {"type": "number"} for m in FILE_FIELDS},
                    "text": {"type": "string", "description": "A text (TEXT@WEIGHT), or a text file (weight: text_weight)"},
                    "like": {"type": "string"}, "target": {"type": "string"},
                    "k": {"type": "integer"}, "folder": {"type": "string"}, "glob": {"type": "string"},
                    "min_score": {"type": "number"},
                    "tags": {"type": "string", "description": "A required tag; repeat the field for several"},
                    "moments": {"type": "boolean"},
                },
            }
        },
    },
}
