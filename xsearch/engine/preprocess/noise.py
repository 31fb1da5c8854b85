"""Decoder noise: what decoding libraries say while they read a file, kept with that file, not printed.

``with capture(path) as found:`` around a decode collects, as one line each in ``found``:

- Python warnings (Pillow's UserWarnings, ...), exactly per thread: while captures run, every warning
  goes through a dispatcher that hands it to the capture of the thread that raised it;
- FFmpeg's log, exactly per thread: PyAV calls its log callback in the decoding thread; likewise
  Pillow's log records (its TIFF plugin logs errors for damaged files);
- what C libraries write straight to file descriptor 2 (libtiff's errors, libmpg123's notes, ...).
  Descriptors are shared by all threads, so inside ``quiet()`` fd 2 points at a pipe and xsearch's
  own stderr output (``sys.stderr``: progress bar, messages) goes to a duplicate of the real one. What
  arrives on the pipe is given to the file being decoded then; when several files were decoding at once
  it cannot be told whose it is, and each of them gets it with a note saying so. Output that arrives
  while no file is decoding is passed on to the real stderr unchanged: it is not decoder noise.

``quiet()`` puts that set-up in place for an index run or a CLI query (fd 2 is redirected only inside
it, never by a bare ``capture``, so a server's other threads keep their stderr) and keeps it across
many captures, so fd 2 is not switched back and forth per file. Both nest and may be entered from
any thread.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from typing import Iterator

# A note on lines that were printed while other files were decoding too.
SHARED_NOTE = " (printed while other files were decoding too; it may be theirs)"
# At most this many lines kept per file (a broken file can make a library print thousands).
MAX_LINES = 20

_lock = threading.RLock()
_local = threading.local()
_users = 0  # quiet() contexts open
_fd_users = 0  # of which redirect fd 2
_saved: dict = {}
_ALWAYS = ("always", None, Warning, None, 0)


class _Pipe:
    """The pipe fd 2 points at while captures run, and the thread that reads it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.buf = b""
        self.active: dict[int, list[str]] = {}  # token -> its capture's lines, for captures running now
        self.touched: dict[int, list[str]] = {}  # captures that ran at some point since the last sync
        self.synced: dict[int, threading.Event] = {}
        self.next_token = 1
        threading.Thread(target=self._read, name="xsearch-stderr", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.r, 65536)
            except OSError:
                return
            if not chunk:
                return
            with _lock:
                self.buf += chunk
                self._dispatch()

    def _dispatch(self) -> None:
        while True:
            start = self.buf.find(b"\x00xsearch-sync:")
            if start < 0:
                if not self.touched and self.buf:
                    _to_terminal(self.buf)  # nothing decoding: not ours to keep
                    self.buf = b""
                return
            end = self.buf.find(b"\x00", start + 1)
            if end < 0:
                return  # a marker cut in two: wait for the rest
            token = int(self.buf[start + 14:end])
            self._attribute(self.buf[:start])
            self.buf = self.buf[end + 1:]
            self.touched = dict(self.active)
            event = self.synced.pop(token, None)
            if event is not None:
                event.set()

    def _attribute(self, data: bytes) -> None:
        lines = [ln.strip() for ln in data.decode("utf-8", "backslashreplace").splitlines() if ln.strip()]
        if not lines:
            return
        if not self.touched:
            _to_terminal(data)
            return
        note = SHARED_NOTE if len(self.touched) > 1 else ""
        for found in self.touched.values():
            for ln in lines:
                _add(found, ln + note)

    def begin(self, found: list[str]) -> int:
        with _lock:
            token = self.next_token
            self.next_token += 1
            self.active[token] = found
            self.touched[token] = found
            return token

    def sync(self) -> None:
        """Wait until everything written to fd 2 so far has been read and passed on or attributed."""
        with _lock:
            token = self.next_token
            self.next_token += 1
        self.end(token)

    def end(self, token: int) -> None:
        """Close capture ``token``: wait until everything written to fd 2 so far has been read and attributed."""
        event = threading.Event()
        with _lock:
            self.active.pop(token, None)
            self.synced[token] = event
        os.write(self.w, b"\x00xsearch-sync:%d\x00" % token)
        event.wait(10)  # the reader thread answers at once; bounded in case it died


_pipe: _Pipe | None = None


def _to_terminal(data: bytes) -> None:
    fd = _saved.get("fd")
    if fd is not None:
        try:
            os.write(fd, data)
        except OSError:
            pass


def _add(found: list[str], line: str) -> None:
    if line in found:
        return
    if len(found) < MAX_LINES:
        found.append(line)
    elif len(found) == MAX_LINES:
        found.append("... (more lines dropped)")


def note(line: str) -> None:
    """Record a line for the file the calling thread is decoding (dropped outside a capture)."""
    found = getattr(_local, "found", None)
    if found is not None:
        _add(found, line)


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    found = getattr(_local, "found", None)
    if found is not None:
        _add(found, f"{category.__name__}: {message}")
        return
    # Not decoding: as Python would have, by the filters other than ours, shown once per place.
    if _action(str(message), category, filename, lineno) == "ignore":
        return
    key = (str(message), category, filename, lineno)
    shown = _saved.setdefault("shown", set())
    if key not in shown:
        shown.add(key)
        _saved["showwarning"](message, category, filename, lineno, file, line)


def _action(text: str, category: type, filename: str, lineno: int) -> str:
    """The action the warning filters other than ours give a warning (module filters matched on the file name)."""
    module = os.path.splitext(os.path.basename(filename or ""))[0]
    for action, msg, cat, mod, ln in warnings.filters:
        if (action, msg, cat, mod, ln) == _ALWAYS:
            continue
        if (msg is None or msg.match(text)) and issubclass(category, cat) and (mod is None or mod.match(module)) \
                and (ln == 0 or lineno == ln):
            return action
    return warnings.defaultaction


class _LogHandler(logging.Handler):
    """Decoder libraries' Python log records (PIL's TIFF plugin logs errors; PyAV relays FFmpeg's log):
    to the capturing thread's file; from other threads, on to the root logger as propagation would."""

    def emit(self, record: logging.LogRecord) -> None:
        found = getattr(_local, "found", None)
        if found is not None:
            _add(found, f"{record.name.removeprefix('libav.')}: {record.getMessage().strip()}")
            return
        root = logging.getLogger()
        if root.handlers:
            for handler in root.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
        elif logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


_log_handler = _LogHandler(logging.WARNING)
# Loggers of decoding libraries whose records are kept with the file being decoded.
_LOGGERS = ("PIL",)


def _loggers_on() -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        _saved[f"propagate:{name}"] = logger.propagate
        logger.propagate = False
        logger.addHandler(_log_handler)


def _loggers_off() -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(_log_handler)
        logger.propagate = _saved.pop(f"propagate:{name}", True)


def watch_av() -> None:
    """Called by decoders once they have imported PyAV: inside a capture, FFmpeg's warnings are kept."""
    with _lock:
        if _users:
            _av_on()


def _av_on() -> None:
    """Route FFmpeg's warnings to the capturing thread (PyAV keeps them silent by default)."""
    if "av" not in sys.modules or "av_level" in _saved:
        return
    import av.logging

    _saved["av_level"] = av.logging.get_level()
    _saved["av_repeat"] = av.logging.get_skip_repeated()
    av.logging.set_skip_repeated(False)
    logger = logging.getLogger("libav")
    _saved["av_propagate"] = logger.propagate
    logger.propagate = False
    logger.addHandler(_log_handler)
    av.logging.set_level(av.logging.WARNING)


def _av_off() -> None:
    if "av_level" not in _saved:
        return
    import av.logging

    av.logging.set_level(_saved.pop("av_level"))
    av.logging.set_skip_repeated(_saved.pop("av_repeat"))
    logger = logging.getLogger("libav")
    logger.removeHandler(_log_handler)
    logger.propagate = _saved.pop("av_propagate")


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _start() -> None:
    global _pipe
    try:
        os.fstat(2)
    except OSError:
        return  # no fd 2 at all: nothing can reach a terminal
    if _pipe is None:
        _pipe = _Pipe()
    if sys.stderr is not None:
        sys.stderr.flush()
    _saved["fd"] = os.dup(2)
    if _stderr_is_fd2():
        # xsearch's own output keeps reaching the real stderr through a duplicate of it.
        _saved["stderr"] = sys.stderr
        sys.stderr = open(os.dup(_saved["fd"]), "w", buffering=1, encoding=sys.stderr.encoding,
                          errors=sys.stderr.errors, closefd=True)
    os.dup2(_pipe.w, 2)


def _stop() -> None:
    fd = _saved.pop("fd", None)
    if fd is None:
        return
    old = _saved.pop("stderr", None)
    if old is not None:
        sys.stderr.flush()
        # Left open: another thread may hold a reference mid-write; it points at the real stderr anyway.
        sys.stderr = old
    os.dup2(fd, 2)
    os.close(fd)


@contextlib.contextmanager
def quiet(fd: bool = True) -> Iterator[None]:
    """While inside, decoder noise is captured (by ``capture``) instead of reaching the terminal.

    ``fd=False`` leaves file descriptor 2 alone (Python warnings and library logs only): for a process
    whose other threads write to stderr meanwhile, such as the web server's log, whose lines would
    otherwise be taken for a decoder's while a query file is decoded.
    """
    global _users, _fd_users
    with _lock:
        _users += 1
        if _users == 1:
            _saved["showwarning"] = warnings.showwarning
            warnings.showwarning = _showwarning
            warnings.filters.insert(0, _ALWAYS)  # every warning reaches the dispatcher, once per file
            warnings._filters_mutated()
            _loggers_on()
        if fd:
            _fd_users += 1
            if _fd_users == 1:
                _start()
        _av_on()
    try:
        yield
    finally:
        if fd and _pipe is not None and "fd" in _saved:
            _pipe.sync()  # what was written so far reaches the terminal (or its file) before fd 2 is put back
        with _lock:
            if fd:
                _fd_users -= 1
                if _fd_users == 0:
                    _stop()
            _users -= 1
            if _users == 0:
                _av_off()
                _loggers_off()
                if warnings.showwarning is _showwarning:
                    warnings.showwarning = _saved["showwarning"]
                with contextlib.suppress(ValueError):
                    warnings.filters.remove(_ALWAYS)
                warnings._filters_mutated()
                _saved.pop("shown", None)


@contextlib.contextmanager
def capture(path: str | os.PathLike | None = None) -> Iterator[list[str]]:
    """Collect the decoder noise of the calling thread's decode; yields the list it fills.

    What C libraries write to fd 2 is caught only inside ``quiet()`` (an index run, a CLI query);
    elsewhere Python warnings and library logs are. Nested captures in one thread share the outer
    list. ``path`` is for the reader of the code only: lines are attributed by thread and time.
    """
    outer = getattr(_local, "found", None)
    if outer is not None:
        yield outer
        return
    found: list[str] = []
    with quiet(fd=False):
        with _lock:
            token = _pipe.begin(found) if _pipe is not None and "fd" in _saved else None
        _local.found = found
        try:
            yield found
        finally:
            _local.found = None
            if token is not None:
                _pipe.end(token)
