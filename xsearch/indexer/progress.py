"""Progress reporting for long index runs: a protocol, a silent default and a rich bar."""
from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def stop(self) -> None: ...
    # Optional: ``media(seconds)`` counts seconds of audio, video and IMU embedded (the indexer calls it
    # where a progress object has it).


class NoProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def media(self, seconds: float) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr with files/s and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress as _Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        class _Rate(TextColumn):
            def render(self, task):  # files per second, not bytes
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} files/s" if speed else "- files/s", style="progress.data.speed")

        self._bar = _Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(""),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[media]}"),
            console=Console(stderr=True),  # follows sys.stderr, which an index run points past captured decoder noise
            transient=False,
        )
        self._task = None

    def start(self, total: int, description: str) -> None:
        self._bar.start()
        self._seconds = 0.0
        self._task = self._bar.add_task(description, total=total, media="")

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def media(self, seconds: float) -> None:
        """Seconds of media embedded so far, shown as h:mm:ss after the bar."""
        self._seconds += seconds
        if self._task is not None:
            s = int(self._seconds)
            self._bar.update(self._task, media=f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d} of media")

    def stop(self) -> None:
        self._bar.stop()


class JsonLinesProgress:
    """Progress as JSON lines on stderr, for programs: ``{"done": N, "total": M, "what": "re-embedding"}``."""

    def __init__(self, stream=None) -> None:
        self._stream = stream  # None: sys.stderr as it is at each line (an index run points it past fd 2)
        self._done = self._total = 0
        self._what = ""

    def _emit(self) -> None:
        import json

        stream = self._stream or sys.stderr
        stream.write(json.dumps({"done": self._done, "total": self._total, "what": self._what}) + "\n")
        stream.flush()

    def start(self, total: int, description: str) -> None:
        self._done, self._total, self._what = 0, total, description
        self._emit()

    def advance(self, n: int = 1) -> None:
        if n:
            self._done += n
            self._emit()

    def stop(self) -> None:
        pass
