"""xsearch: cross-modal vector search over media folders, built on ImageBind.

    import xsearch
    store = xsearch.open()
    store.index(["./media"])
    for hit in store.search(audio="dog.wav", target="image"):
        print(hit.score, hit.path)
"""
from __future__ import annotations

__version__ = "0.1.0"

from xsearch.errors import MediaError, ModelError, StoreError, UsageError, XSearchError


def open(path=None, **kwargs):  # noqa: A001 - the API's name
    """Open (creating if needed) a store; see :class:`xsearch.api.Store`."""
    from xsearch.api import open as _open

    return _open(path, **kwargs)


def __getattr__(name: str):
    # Heavy imports (torch, faiss) only when these are used.
    if name in ("Store",):
        from xsearch import api

        return getattr(api, name)
    if name in ("Hit", "QuerySpec"):
        from xsearch import query

        return getattr(query, name)
    if name == "Embedder":
        from xsearch.engine.embedder import Embedder

        return Embedder
    raise AttributeError(name)


__all__ = ["open", "Store", "Hit", "QuerySpec", "Embedder", "XSearchError", "MediaError", "ModelError", "StoreError", "UsageError"]
