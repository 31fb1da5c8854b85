"""Walking a corpus: every file under the given folders, symlinks followed, loops not."""
from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Collection, Iterator

from xsearch.pathnames import store_path


@dataclass(frozen=True)
class Entry:
    path: str  # absolute, as stored and shown (see store_path), not resolved through symlinks
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None  # why the entry cannot be read (dangling symlink, permission...)
    fs: str | None = None  # the path to open, where it differs from `path` (a name that is not valid UTF-8)
    folder: bool = False  # an unreadable folder (with `error`): what it holds is unknown this run

    @property
    def fspath(self) -> str:
        """The path to open the file with."""
        return self.path if self.fs is None else self.fs


def _entry(path: str) -> Entry | None:
    shown = store_path(path)
    fs = None if shown == path else path
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            reason = "symlink loop" if getattr(e, "errno", None) == 40 else "dangling symlink (its target does not exist)"
        else:
            reason = f"cannot stat file ({e.strerror or e})"
        return Entry(shown, error=reason, fs=fs)
    if not stat_mod.S_ISREG(st.st_mode):
        return None  # sockets, fifos, devices: never media
    return Entry(shown, st.st_size, st.st_mtime_ns, fs=fs)


def walk(root: str, keep: Collection[str] = (), elsewhere: Collection[str] = ()) -> Iterator[Entry]:
    """Yield every regular file under ``root`` (or ``root`` itself if it is a file), sorted by path.

    Hidden files and folders (names starting with '.') are skipped, except those whose path is in
    ``keep`` (ones the user named to index). Symlinked folders are followed once; a folder already
    visited (same device and inode) is not entered again, nor is a symlink to a folder whose real
    path is in ``elsewhere`` (indexed in its own right: its files are listed under that spelling).
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        e = _entry(root)
        if e is not None:
            yield e
        return
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                names = sorted(it, key=lambda d: d.name)
        except OSError as e:
            # Said, not skipped: the caller must not take the files it held for deleted.
            shown = store_path(folder)
            yield Entry(shown, error=f"cannot read folder ({e.strerror or e})", fs=None if shown == folder else folder,
                        folder=True)
            continue
        subdirs = []
        for d in names:
            if d.name.startswith(".") and d.path not in keep:
                continue
            try:
                is_dir = d.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if elsewhere and d.is_symlink() and os.path.realpath(d.path) in elsewhere:
                    continue
                subdirs.append(d.path)
            else:
                e = _entry(d.path)
                if e is not None:
                    yield e
        stack.extend(reversed(subdirs))
