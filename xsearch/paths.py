"""Where xsearch keeps its files: one home directory, overridable with ``$XSEARCH_HOME``.

Models (downloads and their converted caches) live under ``<home>/models``, the
default vector store under ``<home>/store``. Nothing here creates directories;
the code that writes a file creates its parent.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "XSEARCH_HOME"


def xsearch_home() -> Path:
    """``$XSEARCH_HOME`` if set (and not empty), else the platform's per-user data directory."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return Path(platformdirs.user_data_dir("xsearch"))


def models_dir() -> Path:
    """Downloaded checkpoints and their per-modality caches."""
    return xsearch_home() / "models"


def default_store_dir() -> Path:
    """The vector store used when the caller names none."""
    return xsearch_home() / "store"
