"""Writing the store's derived files safely: atomic replacement, and the temp files a kill leaves."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_TEMP_RE = re.compile(r"^\.[^/]+\.(\d+)\.\d+\.tmp$")  # what atomic_write names its temp files


def abandoned_temp_files(directory: Path) -> list[Path]:
    """Temp files of index saves whose process is gone (killed mid-save): safe to delete. A file of a
    live process (another writer saving right now) is left alone."""
    if not directory.is_dir():
        return []
    out = []
    for p in sorted(directory.iterdir()):
        m = _TEMP_RE.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            out.append(p)
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


class PathInTheWay(OSError):
    """Something that is not ours (a non-empty directory, a file where the index folder belongs) sits where
    a derived file goes; the message names it and says to move it away."""


def check_index_dir(directory: Path) -> None:
    """PathInTheWay when `directory` exists but is not a directory (mkdir would only say "File exists")."""
    if os.path.lexists(directory) and not directory.is_dir():
        raise PathInTheWay(f"{directory}: a file sits where xsearch keeps its index folder; move it away "
                           "(the indexes are rebuilt from the database), then run `xsearch doctor --repair`")


def clear_for_file(path: Path) -> None:
    """Make room for a derived file at `path`: a directory there (a stray mkdir, a bad copy) is removed
    when empty; anything inside it might be someone's, so a non-empty one is PathInTheWay."""
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError as exc:
            raise PathInTheWay(f"{path}: a directory sits where xsearch writes a derived index file and cannot be "
                               f"removed ({exc.strerror}); move it away (nothing in it is xsearch's), then run "
                               "`xsearch doctor --repair`") from exc


def remove_derived(path: Path) -> None:
    """Delete a derived file; an empty directory in its place goes too (PathInTheWay if not empty)."""
    clear_for_file(path)
    path.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    check_index_dir(path.parent)
    clear_for_file(path)  # os.replace cannot put a file over a directory
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
