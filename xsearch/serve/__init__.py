"""``xsearch serve``: the HTTP API and web page (FastAPI + uvicorn).

    from xsearch.serve import create_app
    app = create_app(xsearch.open("store"))          # mount it anywhere, or:
    xsearch.serve.run(store, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
import time
from typing import Any

from xsearch.errors import UsageError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
TOKEN_ENV = "XSEARCH_TOKEN"
MIN_TOKEN_CHARS = 16  # `openssl rand -hex 16` gives 32


def create_app(*args: Any, **kwargs: Any):
    """See :func:`xsearch.serve.app.create_app` (imported lazily: FastAPI is only needed to serve)."""
    from xsearch.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_token(token: str | None) -> None:
    """Refuse a token that guards nothing: blank, padded with spaces, or short enough to guess."""
    if not token:  # none given ("" from an empty $XSEARCH_TOKEN too)
        return
    if not token.strip():
        raise UsageError(f"the token is made of whitespace only: give a random one of at least {MIN_TOKEN_CHARS} "
                         "characters, e.g. --token $(openssl rand -hex 16)")
    if token != token.strip():
        raise UsageError("the token starts or ends with whitespace, which HTTP clients drop from the Authorization "
                         "header: give it without the spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"the token has {len(token)} characters; give a random one of at least {MIN_TOKEN_CHARS}, "
                         "e.g. --token $(openssl rand -hex 16)")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, or with a weak one."""
    check_token(token)
    if not is_loopback(host) and not token:
        raise UsageError(
            f"refusing to serve on {host!r} without a token: other machines could search and read every indexed "
            f"file. Give --token TOKEN (or set ${TOKEN_ENV}), or listen on 127.0.0.1"
        )


class _RedactToken(logging.Filter):
    """Access-log lines print URLs; media URLs carry ?token=..., which must not land in logs."""

    _pattern = re.compile(r"(token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _require_server_packages() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"xsearch serve needs fastapi, uvicorn and python-multipart ({e}); "
                         "pip install fastapi uvicorn python-multipart") from e


def _config(store: Any, host: str, port: int, token: str | None, max_upload_bytes: int | None,
            refresh_interval: float | None = None, **uvicorn_kw: Any):
    _require_server_packages()
    import uvicorn

    from xsearch.serve.app import DEFAULT_MAX_UPLOAD_BYTES, REFRESH_INTERVAL

    check_bind(host, token)
    # No token on loopback: only loopback Host headers, so a web page cannot reach us by DNS rebinding.
    # The address listened on is one of them (any of 127.0.0.0/8): a DNS name never arrives as an IP literal.
    allowed = None if token else [*LOOPBACK_NAMES, host]
    app = create_app(store, token=token, max_upload_bytes=max_upload_bytes or DEFAULT_MAX_UPLOAD_BYTES, allowed_hosts=allowed,
                     refresh_interval=REFRESH_INTERVAL if refresh_interval is None else refresh_interval)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactToken) for f in access.filters):
        access.addFilter(_RedactToken())
    return uvicorn.Config(app, host=host, port=port, **uvicorn_kw)


def run(
    store: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_upload_bytes: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``store`` until interrupted (blocking). ``port=0`` picks a free port (logged)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    config = _config(store, host, port, token, max_upload_bytes, log_level=log_level)
    import uvicorn

    uvicorn.Server(config).run()


class BackgroundServer:
    """A real uvicorn server in a thread, on a free loopback port (tests, benchmarks, notebooks).

        with BackgroundServer(store) as srv:
            httpx.get(srv.url + "/api/status")
    """

    def __init__(self, store: Any, *, host: str = "127.0.0.1", token: str | None = None,
                 max_upload_bytes: int | None = None, log_level: str = "warning", refresh_interval: float | None = None):
        check_bind(host, token)
        _require_server_packages()
        import uvicorn

        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.bind((host.strip("[]"), 0))  # bound now: no window for another process to take the port
        self.host, self.port = host, self._sock.getsockname()[1]
        config = _config(store, host, self.port, token, max_upload_bytes, refresh_interval, log_level=log_level)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["BackgroundServer", "check_bind", "check_token", "create_app", "is_loopback", "run", "LOOPBACK_NAMES"]
