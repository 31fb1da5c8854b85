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


def atomic_write(path: Path, data: bytes | memoryview) -> None:
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
