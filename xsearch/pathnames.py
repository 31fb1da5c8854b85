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


# ls -b's escapes for the control characters that have one; the others (ESC, DEL, C1 codes) as octal bytes.
_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape_control(m: re.Match) -> str:
    c = m.group(0)
    return _NAMED.get(c) or "".join(f"\\{b:03o}" for b in c.encode("utf-8"))


def shown(text: str) -> str:
    """A stored path (or a line holding one) as a terminal may show it: control characters escaped as
    ``ls -b`` does (``\\n``, ``\\033``), so that a name can neither split a line nor drive the terminal
    (colours, clearing the screen). Stored names double their backslashes, so this stays unambiguous."""
    return _CONTROL.sub(_escape_control, text)


def stored_abspath(path: str | bytes | os.PathLike) -> str:
    """A user-given path (str, bytes or PathLike) as the store records it: absolute, escaped."""
    return store_path(os.path.abspath(os.fsdecode(path)))


def name_keys(name: str | bytes | os.PathLike) -> list[str]:
    """The stored spellings a user's name may have, in the order tried: as shown (a stored name, such
    as ``add_vectors``'s or one copied from the output: ``caf\\xe9.png``), as the name on disk, then
    each as a file path. ``like`` and ``remove`` agree on what a name means through this."""
    raw = os.fsdecode(name)
    try:
        raw.encode("utf-8")
        shown_keys: tuple[str, ...] = (raw, os.path.abspath(raw))
    except UnicodeEncodeError:  # bytes that are not UTF-8: only ever a name on disk
        shown_keys = ()
    return list(dict.fromkeys((*shown_keys[:1], store_path(raw), *shown_keys[1:], stored_abspath(raw))))


def byo_name(name: str | bytes | os.PathLike) -> str:
    """How ``add_vectors`` stores a name: a file path (one that exists, or is absolute, or starts with
    ``./`` or ``../``) as ``index`` stores paths, so both name one item; any other name (``byo/a``,
    ``s3://bucket/key``) as given (escaped as every stored name is)."""
    raw = os.fsdecode(name)
    if os.path.lexists(raw) or os.path.isabs(raw) or raw.startswith(("./", "../")) or raw in (".", ".."):
        return stored_abspath(raw)
    return store_path(raw)
