"""One writer per store: ``<store>/index.lock``, an advisory ``flock`` holding the writer's pid.

An index run (and every other writer: ``add_vectors``, ``remove``, ``doctor --repair``) takes the lock
before its first write. A second writer either fails at once, naming the holder's pid, or waits for it.
The kernel drops a ``flock`` when its holder dies, so a lock file left behind by a killed process never
blocks anyone: only a live holder does. Readers (queries, status) never take it; SQLite's WAL gives them
a consistent snapshot while the writer writes.

Within one process the lock is re-entrant per store folder, and threads queue on it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xsearch.errors import StoreError

LOCK_FILENAME = "index.lock"


class StoreLockedError(StoreError):
    """Another live process (or thread) is writing to this store."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class _Held:
    """This process's hold on one lock file: a thread lock, a re-entry count and the open file."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


def lock_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / LOCK_FILENAME


def holder_pid(directory: str | os.PathLike) -> int | None:
    """The pid written in the lock file (the last holder's; it may be dead), or None."""
    try:
        text = lock_path(directory).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(directory: str | os.PathLike) -> bool:
    """Whether a live writer holds the store's lock (probes with a non-blocking flock of our own)."""
    try:
        fd = os.open(lock_path(directory), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _busy_message(directory: Path, pid: int | None, what: str, hint: str) -> str:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"another {what} ({who}) is writing to {directory}; {hint}"


def _open_lock_file(directory: Path) -> int:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(lock_path(directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StoreError(
                f"{directory}: the store cannot be written ({exc.strerror}); it is on a read-only file system or "
                "not writable by you: make it writable, or index into another --store") from exc
        raise StoreError(f"{lock_path(directory)}: cannot create the store's lock file ({exc.strerror}); "
                         "check free disk space and permissions") from exc


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only a courtesy to the next writer's message; the flock itself is what locks


@contextmanager
def writer_lock(directory: str | os.PathLike, *, wait: bool = False, what: str = "xsearch index",
                hint: str = "wait for it or pass --wait",
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the store's writer lock for the block.

    ``wait=False``: raise :class:`StoreLockedError` at once when another process (or thread) holds it.
    ``wait=True``: block until it is free; ``on_wait`` is first called with a line saying who we wait for.
    """
    directory = Path(directory)
    key = os.path.abspath(lock_path(directory))
    with _registry_lock:
        held = _registry.setdefault(key, _Held())
    if not held.thread_lock.acquire(blocking=False):
        if not wait:
            # Our own pid, or "pass --wait", would send the user looking for another process: there is none.
            raise StoreLockedError(f"another thread of this process is writing to {directory}; try again when it "
                                   "has finished, or pass wait=True to wait for it", os.getpid())
        if on_wait is not None:
            on_wait(f"waiting for another writer in this process to finish with {directory} ...")
        held.thread_lock.acquire()
    try:
        if held.depth == 0:
            fd = _open_lock_file(directory)
            try:
                _flock(fd, directory, wait=wait, what=what, hint=hint, on_wait=on_wait)
            except BaseException:
                os.close(fd)
                raise
            _write_pid(fd)
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                try:
                    os.ftruncate(fd, 0)  # no pid: nobody holds it
                except OSError:
                    pass
                os.close(fd)  # closing the last descriptor releases the flock
    finally:
        held.thread_lock.release()


def _flock(fd: int, directory: Path, *, wait: bool, what: str, hint: str,
           on_wait: Callable[[str], None] | None) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"{lock_path(directory)}: cannot lock the store ({exc.strerror})") from exc
    pid = holder_pid(directory)
    if not wait:
        raise StoreLockedError(_busy_message(directory, pid, what, hint), pid)
    if on_wait is not None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        on_wait(f"waiting for another {what} ({who}) to finish writing to {directory} ...")
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; Ctrl-C interrupts it (KeyboardInterrupt)
