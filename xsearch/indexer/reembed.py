"""Re-embedding a store with another model: every item's file embedded again, switched to in one go.

The new vectors go to the store's pending table, one transaction per batch, while searches keep using
the current ones; when every ok item has its new vector (or a reason it has none), one transaction makes
them the store's and the indexes are rebuilt. A run that is killed keeps every batch it committed: the
next run with the same model continues from there.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xsearch.engine.preprocess.noise import capture, quiet
from xsearch.errors import MediaError, ModelError, StoreError, UsageError
from xsearch.indexer.pipeline import (
    _default_workers,
    embed_inputs,
    failure_reason,
    load_input,
    load_model,
    not_the_files_fault,
)
from xsearch.indexer.progress import NoProgress, Progress
from xsearch.pathnames import fs_path
from xsearch.storage import Item, Storage


@dataclass
class ReembedReport:
    model: str  # the model re-embedded into
    previous_model: str | None
    reembedded: int = 0  # items embedded by this run
    resumed: int = 0  # items an earlier, interrupted run had done
    failed: int = 0  # items that could not be re-embedded: failed items after the switch, reasons in errors
    switched: bool = False  # the store now uses the new model's vectors
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Reembedder:
    """One re-embedding run of ``storage`` into ``embedder``'s model (the caller holds the writer lock)."""

    def __init__(self, storage: Storage, embedder: Any, model_id: str, model_name: str, *, batch_size: int = 8,
                 workers: int | None = None, progress: Progress | None = None, fast_decode: bool = True):
        self.storage, self.embedder = storage, embedder
        self.model_id, self.model_name = model_id, model_name
        self.batch_size = batch_size
        self.workers = workers or _default_workers()
        self.progress = progress or NoProgress()
        self.fast_decode = fast_decode

    def run(self) -> ReembedReport:
        t0 = time.perf_counter()
        report = ReembedReport(self.model_id, self.storage.get_meta("model"))
        self.storage.start_reembed(self.model_id, self.model_name)
        report.resumed = self.storage.reembed_done()
        todo = self.storage.reembed_todo()
        self.progress.start(report.resumed + len(todo), "re-embedding")
        self.progress.advance(report.resumed)
        try:
            with quiet():  # decoder noise stays off the terminal, as in an index run (see preprocess.noise)
                self._embed_all(todo, report)
            counts = self.storage.switch_reembed()
            report.switched = True
            report.failed = counts["failed"]
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            self.progress.stop()
        report.seconds = round(time.perf_counter() - t0, 3)
        return report

    def _decode(self, item: Item) -> tuple[Item, Any, str | None]:
        try:
            if not os.path.exists(fs_path(item.path)):
                raise MediaError(item.path, "no longer on disk; the next `xsearch index` forgets it")
            with capture(item.path):  # what a decoder prints is this file's, not the terminal's
                return item, load_input(self.embedder, item.modality, fs_path(item.path), self.fast_decode), None
        except Exception as e:  # recorded with the item, which is failed after the switch
            return item, None, failure_reason(e, item.modality)

    def _embed_all(self, todo: list[Item], report: ReembedReport) -> None:
        pending: dict[str, list[tuple[Item, Any]]] = {}
        queue: deque[Future] = deque()
        window = self.workers * 2 + self.batch_size
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xsearch-reembed")
        try:
            for item in todo:
                queue.append(pool.submit(self._decode, item))
                if len(queue) >= window:
                    self._consume(*queue.popleft().result(), pending, report)
            while queue:
                self._consume(*queue.popleft().result(), pending, report)
            for modality in list(pending):
                self._flush(modality, pending.pop(modality), report)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _consume(self, item: Item, data: Any, error: str | None, pending, report: ReembedReport) -> None:
        if error is not None:
            self._write([item], None, [error], report)
            return
        batch = pending.setdefault(item.modality, [])
        batch.append((item, data))
        if len(batch) >= self.batch_size:
            self._flush(item.modality, pending.pop(item.modality), report)

    def _flush(self, modality: str, batch: list[tuple[Item, Any]], report: ReembedReport) -> None:
        load_model(self.embedder, modality, self.model_id)  # a model that cannot be loaded stops the run
        try:
            vectors = embed_inputs(self.embedder, modality, [d for _, d in batch])
        except (ModelError, StoreError, UsageError):
            raise
        except Exception as e:
            if len(batch) > 1:  # one bad item must not sink its batch
                for one in batch:
                    self._flush(modality, [one], report)
                return
            if not_the_files_fault(e):  # out of memory is the machine's fault: stop; the next run goes on
                raise
            self._write([batch[0][0]], None, [f"embedding failed: {e}"], report)
            return
        self._write([it for it, _ in batch], vectors, [None] * len(batch), report)

    def _write(self, items: list[Item], vectors: np.ndarray | None, errors: list[str | None],
               report: ReembedReport) -> None:
        self.storage.put_pending([it.id for it in items], vectors, errors)
        report.reembedded += sum(e is None for e in errors)
        report.errors += [{"path": it.path, "reason": e} for it, e in zip(items, errors) if e is not None]
        self.progress.advance(len(items))
