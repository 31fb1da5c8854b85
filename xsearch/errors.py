"""The project's error types. Every error a user can cause names the file and what to do."""
from __future__ import annotations

import os
import re

_ERRNO = re.compile(r"\[Errno -?\d+\] ")


class XSearchError(Exception):
    """Base class of every error xsearch raises on purpose (the CLI prints these without a traceback)."""


class MediaError(XSearchError):
    """A file could not be read or decoded as the modality asked for."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fsdecode(path)
        # A decoder's OSError text carries its raw error code ("[Errno 1094995529] Invalid data..."): noise.
        self.reason = _ERRNO.sub("", reason)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


class ModelError(XSearchError):
    """A model could not be found, downloaded or loaded."""


class StoreError(XSearchError):
    """The store is missing, locked, read-only or damaged."""


class UsageError(XSearchError):
    """The caller asked for something that makes no sense (bad option, unknown modality...)."""
