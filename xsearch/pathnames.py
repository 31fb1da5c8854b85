"""Path names as the store holds them: text that SQLite and a UTF-8 terminal can take.

A file name is stored and shown escaped as ``ls -b`` does (bytes that are not valid
UTF-8 as ``\\xNN``, backslashes doubled), so that every name on disk has exactly one
stored spelling and back. Every layer that turns a user's path
into a stored one (indexer, query, API) goes through ``stored_abspath``.
"""
from __future__ import annotations

import os
import re


def store_path(path: str) -> str:
    """How a path is stored and shown: as ``ls -b`` shows it.

    A name that is not valid UTF-8 reaches Python with lone surrogates, which SQLite (and a UTF-8
    terminal) cannot take: each such byte is written ``\\xNN``. Backslashes are doubled in every
    name, so that a valid name spelled ``caf\\xe9.jpg`` and the name with the byte 0xE9 stay two
    paths. ``fs_path`` turns the result back into the name on disk.
    """
    if "\\" not in path:
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # surrogates that did not come from the file system's bytes
        raw = path.encode("utf-8", "surrogatepass")
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def fs_path(stored: str) -> str:
    """The path on disk of a stored path (the inverse of ``store_path``)."""
    if "\\" not in stored:
        return stored
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(stored):
        out += stored[pos:m.start()].encode("utf-8")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    out += stored[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))


def stored_abspath(path: str | bytes | os.PathLike) -> str:
    """A user-given path (str, bytes or PathLike) as the store records it: absolute, escaped."""
    return store_path(os.path.abspath(os.fsdecode(path)))
