"""Content hashes: how a moved or copied file is recognised without decoding it again."""
from __future__ import annotations

import hashlib

_CHUNK = 1 << 20


def content_hash(path: str) -> str:
    """BLAKE2b-128 of the whole file, hex."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
