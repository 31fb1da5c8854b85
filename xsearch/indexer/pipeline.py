"""The index run: walk -> change detection -> parallel decode -> batched embed -> transactional writes.

Decoding happens in worker threads while the main thread embeds the previous
batch; every batch is committed in one transaction, so an interrupted run keeps
everything it finished and the next run continues where it stopped.

Images are decoded with ``load_image``'s fast path by default (a large JPEG is
decoded by libjpeg at 1/2-1/8 scale, short side still >= 336 px; embeddings
within cosine 0.999 of the exact decode, see ``tests/test_fast_decode.py``);
``Indexer(..., fast_decode=False)`` decodes exactly.

A light model (a tower under ``LIGHT_MODEL_PARAMS`` parameters) runs with one
torch thread during the run: its operators are too small for intra-op threads
to pay, and every parallel region then waits on a team thread that the decode
workers (or other processes) have pushed off its core. Measured on 2 cores, that
contention made the tiny test model's forward 5-20x slower and the index run's
throughput several times lower. Heavy towers (ImageBind huge) keep every thread.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from xsearch.engine.preprocess.image import fast_decode as _fast_decode
from xsearch.engine.preprocess.noise import capture as _capture_noise
from xsearch.engine.preprocess.noise import quiet as _quiet
from xsearch.errors import MediaError, ModelError, StoreError, UsageError, XSearchError
from xsearch.indexer import moments as mo
from xsearch.indexer.detect import AUTO, check_override, detect_modality
from xsearch.indexer.facts import media_facts
from xsearch.indexer.hashing import content_hash
from xsearch.indexer.progress import NoProgress, Progress
from xsearch.indexer.walk import Entry, walk
from xsearch.pathnames import fs_path, store_path
from xsearch.storage import Item, ItemRecord, SegmentRecord, Storage


@dataclass
class IndexReport:
    embedded: int = 0
    unchanged: int = 0
    moved: int = 0  # renamed or moved files that kept their vector
    copied: int = 0  # new paths whose content was already embedded
    removed: int = 0
    failed: int = 0  # files that could not be indexed (this run's and earlier unchanged ones)
    skipped: int = 0  # files of no modality xsearch handles
    segments: int = 0  # moments (windows of recordings) embedded
    media_seconds: float = 0.0  # seconds of audio, video and IMU embedded
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)  # every file counted in `failed`, with its reason
    missing: list[str] = field(default_factory=list)  # indexed folders not on disk (their items are kept)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Task:
    entry: Entry
    modality: str
    root: str
    moments: dict | None = None  # the folder's moments setting for this file (None: whole file only)


@dataclass
class _Result:
    task: _Task
    hash: str | None = None
    data: Any = None  # decoded tensor (or text)
    facts: dict = field(default_factory=dict)
    error: str | None = None
    reuse: Any = None  # an Item whose vector this file can take


# How a failure to open a file starts. Permissions change without touching size or time, so such failures
# are tried again on every run rather than only when the file changes.
_CANNOT_READ = "cannot read file "
# A failed item's fact saying its cause was not the file (the machine: out of memory, a device error), so the
# next run tries it again although the file did not change.
RETRY_FACT = "retry"


def _retried(item: Item) -> bool:
    """A failure to try again on the next run whether or not the file changed."""
    return item.status == "failed" and ((item.error or "").startswith(_CANNOT_READ) or bool(item.facts.get(RETRY_FACT)))


def not_the_files_fault(exc: BaseException) -> bool:
    """An embedding failure caused by the machine rather than the file: out of (GPU or host) memory."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def load_input(embedder: Any, modality: str, path: str, fast: bool = True) -> Any:
    """One file as the model's input: a text file's text, else the decoded tensor (see ``Indexer.fast_decode``)."""
    if modality == "text":
        from xsearch.engine.preprocess.text import load_text

        return load_text(path)
    with _fast_decode(fast):  # thread-local: only image decoding consults it
        return embedder.load(modality, path)


def embed_inputs(embedder: Any, modality: str, data: list[Any]) -> np.ndarray:
    """Unit vectors of a batch of ``load_input`` results of one modality."""
    if modality == "text":
        return embedder.embed("text", data)
    # IMU items have varying window counts: the embedder takes them as a list.
    batch = data if modality == "imu" else torch.stack(data)
    return embedder.embed_tensors(modality, batch)


def failure_reason(exc: Exception, modality: str) -> str:
    """Why a file could not be decoded, as recorded with its item."""
    if isinstance(exc, MediaError):
        return exc.reason
    if isinstance(exc, OSError):
        return f"{_CANNOT_READ}({exc.strerror or exc})"
    return f"could not decode as {modality}: {type(exc).__name__}: {exc}"  # a decoder bug: recorded, the run goes on


def load_model(embedder: Any, modality: str, model: str) -> None:
    """Load ``modality``'s weights now: a model that cannot be loaded is one error for the whole run
    (a ModelError or UsageError), never a failure recorded against each file."""
    model_for = getattr(embedder, "model_for", None)
    if model_for is None:  # an embedder whose weights were loaded when it was built
        return
    try:
        model_for(modality)
    except XSearchError:
        raise
    except Exception as e:  # out of memory, a CUDA error, a checkpoint torch cannot read
        hint = "free some memory or use --device cpu" if not_the_files_fault(e) else "check the model files"
        raise ModelError(f"{model}: cannot load the model for {modality} ({type(e).__name__}: {e}); {hint}") from e


def _owner(path: str, roots: Sequence[str]) -> str | None:
    """The innermost of ``roots`` that is ``path`` or a folder above it."""
    best = None
    for r in roots:
        if (path == r or path.startswith(os.path.join(r, ""))) and (best is None or len(r) > len(best)):
            best = r
    return best


def _outermost(paths: Sequence[str]) -> list[str]:
    """``paths`` without duplicates and without those inside another one (walked as part of it)."""
    unique = sorted(set(paths))
    return [p for p in unique if _owner(p, [q for q in unique if q != p]) is None]


def _hidden_below(path: str, owner: str) -> bool:
    """Whether a name between ``owner`` (a folder above ``path``) and ``path`` is hidden (starts with '.')."""
    rel = path[len(owner):].strip(os.sep)
    return any(part.startswith(".") for part in rel.split(os.sep))


def _known_spelling(path: str, known: Sequence[str]) -> str:
    """``path`` spelled under the indexed folder whose real location holds it (the innermost), when it
    reaches that folder only through a symlink; else ``path``. One folder is thus never indexed twice."""
    real = os.path.realpath(fs_path(path))
    best: tuple[str, str] | None = None
    for r in known:
        rr = os.path.realpath(fs_path(r))
        if (real == rr or real.startswith(os.path.join(rr, ""))) and (best is None or len(rr) > len(best[1])):
            best = (r, rr)
    if best is None:
        return path
    return store_path(fs_path(best[0]) + real[len(best[1]):])


# Windows of one recording embedded together (32 video windows of 2 frames: ~40 MB of input).
_SEGMENT_CHUNK = 32

# Below this many parameters (the embedder's model for a modality), index runs use one torch thread.
LIGHT_MODEL_PARAMS = 10_000_000


def _default_workers() -> int:
    return max(2, min(8, (os.cpu_count() or 2)))


class Indexer:
    """One index run over a store. ``embedder`` is built only when something needs embedding."""

    def __init__(
        self,
        storage: Storage,
        get_embedder: Callable[[], Any],
        model_id: str,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        progress: Progress | None = None,
        fast_decode: bool = True,
    ):
        self.storage = storage
        self._get_embedder = get_embedder
        self._embedder = None
        self.model_id = model_id
        self.batch_size = batch_size
        self.workers = workers or _default_workers()
        self.progress = progress or NoProgress()
        self.fast_decode = fast_decode
        # Content-hash lookups (copies, touched files): modalities the store held ok items of when the
        # run started (asked per file), and the items this run wrote (looked up here, no query).
        self._lookup: set[str] = set()
        self._added: dict[tuple[str, str], Item] = {}
        self._threads_tuned = False
        self._threads_before: int | None = None  # torch's thread count to restore after the run

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = self._get_embedder()
        return self._embedder

    # ------------------------------------------------------------ planning

    def _roots(self, paths: Sequence[str], modality: str | None, moments: dict | bool | None = None) -> list[str]:
        """The paths this run walks (outermost only); records new folders and ``--modality`` overrides.

        Each file belongs to the innermost indexed folder that holds it, whose override decides its
        modality; a path inside an indexed folder given without ``--modality`` is walked under that
        folder's settings rather than recorded as a folder of its own.
        """
        check_override(modality)
        known = self.storage.roots()
        if not paths:
            return _outermost(list(known))
        walk_paths = []
        for p in paths:
            root = os.path.abspath(os.fsdecode(p))
            if not os.path.exists(root):
                from xsearch.errors import UsageError

                raise UsageError(f"{store_path(root)}: no such file or folder")
            root = store_path(root)  # as stored (a folder name that is not valid UTF-8 is escaped)
            if _owner(root, known) is None:
                root = _known_spelling(root, known)  # a symlink to an indexed folder (or into one) is that folder
            owner = _owner(root, known)
            # A hidden file or folder named here is recorded, so that runs over its folder (which skip hidden
            # names) keep it rather than drop it.
            if modality is not None or owner is None or _hidden_below(root, owner):
                self.storage.add_root(root, None if modality == AUTO else modality)
            elif moments is not None and root not in known:
                # A folder inside an indexed one gets a moments setting of its own: it becomes an indexed
                # folder too, keeping the outer folder's modality override.
                self.storage.add_root(root, known[_owner(root, known)])
            if moments is not None:
                self.storage.set_root_moments(root, mo.encode(moments or None))
            walk_paths.append(root)
        return _outermost(walk_paths)

    def _plan(self, walk_paths: list[str], report: IndexReport):
        todo: list[_Task] = []
        failures: list[ItemRecord] = []
        gone: dict[str, Any] = {}
        reroot: dict[str, list[int]] = {}  # unchanged items now owned by another (inner or outer) folder
        unwindow: list[tuple[Item, str]] = []  # unchanged items whose folder no longer wants moments
        roots = self.storage.roots()
        named = {fs_path(r) for r in roots}  # hidden ones among them are walked all the same
        # A symlink to another indexed folder is not walked into: that folder lists its files, once.
        reals = {r: os.path.realpath(fs_path(r)) for r in roots}
        setting = {r: mo.decode(m) for r, m in self.storage.root_moments().items()}
        for top in walk_paths:
            if not os.path.lexists(fs_path(top)):
                # Moved, deleted or unmounted: keep its items (re-embedding them is costly) and say so.
                report.missing.append(top)
                continue
            stored = {it.path: it for it in self.storage.items_under(top)}
            seen: set[str] = set()
            unreadable: list[str] = []  # folders whose files are unknown this run: theirs are kept
            elsewhere = {real for r, real in reals.items() if r != top}
            for entry in walk(fs_path(top), keep=named, elsewhere=elsewhere):
                seen.add(entry.path)
                root = _owner(entry.path, roots) or top
                old = stored.get(entry.path)
                if entry.folder:
                    unreadable.append(os.path.join(entry.path, ""))
                if entry.error is not None:
                    if old is not None and old.status == "failed" and old.error == entry.error:
                        self._still_failed(old, report)
                        continue
                    failures.append(self._failure(entry, "unknown", root, entry.error))
                    continue
                modality = detect_modality(entry.fspath, roots.get(root))
                if modality is None:
                    report.skipped += 1
                    continue
                wanted = mo.for_file(setting.get(root), modality)
                if old is not None and old.size == entry.size and old.mtime_ns == entry.mtime_ns and old.modality == modality \
                        and (old.status == "failed" or (old.model == self.model_id and old.facts.get("moments") == wanted)) \
                        and not _retried(old):
                    if old.root != root:
                        reroot.setdefault(root, []).append(old.id)
                    if old.status == "failed":
                        self._still_failed(old, report)
                    else:
                        report.unchanged += 1
                    continue
                if wanted is None and old is not None and old.status == "ok" and old.model == self.model_id \
                        and (old.size, old.mtime_ns, old.modality) == (entry.size, entry.mtime_ns, modality) \
                        and old.facts.get("moments") is not None:
                    unwindow.append((old, root))  # moments turned off: drop the windows, keep the vector
                    report.unchanged += 1
                    continue
                todo.append(_Task(entry, modality, root, wanted))
            for path, item in stored.items():
                if path not in seen and not path.startswith(tuple(unreadable)):
                    gone[path] = item
        for root, ids in reroot.items():
            self.storage.set_root(ids, root)
        if unwindow:
            # Written again with their stored vectors and no windows: nothing is decoded or embedded.
            vectors = self.storage.get_vectors([it.id for it, _ in unwindow])
            self.storage.put([ItemRecord(
                path=it.path, modality=it.modality, size=it.size, mtime_ns=it.mtime_ns, content_hash=it.content_hash,
                facts={k: v for k, v in it.facts.items() if k != "moments"}, model=it.model, root=root, vector=v,
            ) for (it, root), v in zip(unwindow, vectors)])
        return todo, failures, gone

    @staticmethod
    def _still_failed(old: Item, report: IndexReport) -> None:
        """An unchanged file that failed before: counted and listed with its reason, as a new failure is."""
        report.failed += 1
        report.errors.append({"path": old.path, "reason": old.error or ""})

    def _failure(self, entry: Entry, modality: str, root: str, reason: str, chash: str | None = None, *,
                 retry: bool = False) -> ItemRecord:
        return ItemRecord(
            path=entry.path, modality=modality, size=entry.size, mtime_ns=entry.mtime_ns, content_hash=chash,
            facts={RETRY_FACT: True} if retry else {}, model=None, root=root, vector=None, error=reason,
        )

    # ------------------------------------------------------------ decoding (worker threads)

    def _decode(self, task: _Task, by_hash: dict[tuple[str, str], Any]) -> _Result:
        res = _Result(task)
        with _capture_noise(task.entry.fspath) as noise:
            self._decode_into(res, by_hash)
        if noise:  # what the decoders printed or warned about this file: kept with it (status --errors --verbose)
            res.facts = {**res.facts, "warnings": list(noise)}
        return res

    def _decode_into(self, res: _Result, by_hash: dict[tuple[str, str], Any]) -> None:
        task = res.task
        path, modality = task.entry.fspath, task.modality
        try:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise MediaError(path, "file was deleted or moved while the run was in progress; "
                                       "the next `xsearch index` run forgets it") from None
            if (st.st_size, st.st_mtime_ns) != (task.entry.size, task.entry.mtime_ns):
                # Rewritten since the walk: index what is there now, under its new size and time (a change
                # after this stat leaves the stored time behind the file's, so the next run redoes it).
                task.entry = dataclasses.replace(task.entry, size=st.st_size, mtime_ns=st.st_mtime_ns)
            if task.entry.size == 0:
                raise MediaError(path, "empty file")
            res.hash = content_hash(path)
            reuse = by_hash.get((res.hash, modality)) or self._added.get((res.hash, modality))
            if reuse is None and modality in self._lookup:
                found = [it for it in self.storage.items_by_hash(res.hash, modality) if it.status == "ok" and it.model == self.model_id]
                reuse = found[0] if found else None
            if reuse is not None and reuse.facts.get("moments") != task.moments:
                reuse = None  # windowed differently (or not at all): embed this file itself
            if reuse is not None:
                res.reuse = reuse
                return
            res.data = load_input(self.embedder, modality, path, self.fast_decode)
            if modality == "text":
                res.facts = {"chars": len(res.data), "snippet": res.data[:200]}
            else:
                res.facts = media_facts(modality, path)
                if task.moments is not None:
                    res.facts["moments"] = task.moments
        except Exception as e:  # a bad file (or a decoder bug) must not stop the run; record it
            res.error = failure_reason(e, modality)

    # ------------------------------------------------------------ the run

    def run(self, paths: Sequence[str] = (), modality: str | None = None,
            moments: dict | bool | None = None) -> IndexReport:
        """``moments``: a setting (see xsearch.indexer.moments) turns moments on for the folders given,
        False turns them off, None keeps each folder's own."""
        t0 = time.perf_counter()
        report = IndexReport()
        with _quiet():  # decoder noise is kept with each file, off the terminal (see preprocess.noise)
            return self._run(paths, modality, moments, t0, report)

    def _run(self, paths: Sequence[str], modality: str | None, moments: dict | bool | None, t0: float,
             report: IndexReport) -> IndexReport:
        todo, failures, gone = self._plan(self._roots(paths, modality, moments), report)
        # Moved files are matched to vanished items of the same content.
        by_hash = {(it.content_hash, it.modality): it for it in gone.values() if it.status == "ok" and it.content_hash and it.model == self.model_id}
        self.progress.start(len(todo) + len(failures), "indexing")
        try:
            if failures:
                self._write_failures(failures, report)
            if todo:
                self._embed_all(todo, by_hash, gone, report)
            if gone:
                report.removed += self.storage.remove([it.id for it in gone.values()])
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            self._restore_threads()
            self.progress.stop()
            self.storage.flush()
        report.seconds = round(time.perf_counter() - t0, 3)
        return report

    def _write_failures(self, records: list[ItemRecord], report: IndexReport) -> None:
        self.storage.put(records)
        report.failed += len(records)
        report.errors.extend({"path": r.path, "reason": r.error or ""} for r in records)
        self.progress.advance(len(records))

    def _embed_all(self, todo: list[_Task], by_hash, gone: dict[str, Any], report: IndexReport) -> None:
        pending: dict[str, list[_Result]] = {}
        _ = self.embedder  # built here, not in a decode worker: a device that is not there is one error for the run
        # One query instead of one per file: a modality with no ok item yet cannot hold this file's content.
        self._lookup = {m for m, n in self.storage.counts().items() if n}
        self._added = {}
        window = self.workers * 2 + self.batch_size
        queue: deque[Future] = deque()
        tasks = iter(todo)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xsearch-decode")
        try:
            for task in tasks:
                queue.append(pool.submit(self._decode, task, by_hash))
                if len(queue) >= window:
                    self._consume(queue.popleft().result(), pending, by_hash, gone, report)
            while queue:
                self._consume(queue.popleft().result(), pending, by_hash, gone, report)
            for modality in list(pending):
                self._flush_batch(modality, pending, report)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _consume(self, res: _Result, pending, by_hash, gone, report: IndexReport) -> None:
        task = res.task
        if res.error is not None:
            failure = self._failure(task.entry, task.modality, task.root, res.error, res.hash)
            failure.facts = {k: v for k, v in res.facts.items() if k == "warnings"}
            self._write_failures([failure], report)
            return
        if res.reuse is not None:
            self._reuse(res, by_hash, gone, report)
            self.progress.advance()
            return
        batch = pending.setdefault(task.modality, [])
        batch.append(res)
        if len(batch) >= self.batch_size:
            self._flush_batch(task.modality, pending, report)

    def _reuse(self, res: _Result, by_hash, gone, report: IndexReport) -> None:
        src, e = res.reuse, res.task.entry
        if gone.pop(src.path, None) is not None:
            # The same content vanished from its old path: a move or rename.
            by_hash.pop((src.content_hash, src.modality), None)
            old_here = self.storage.item_by_path(e.path)
            if old_here is not None and old_here.id != src.id:
                self.storage.remove([old_here.id])
            self.storage.move(src.id, e.path, size=e.size, mtime_ns=e.mtime_ns, root=res.task.root)
            report.moved += 1
            return
        # A copy (or a touched file whose content is unchanged): take the stored vector (and windows).
        vec = self.storage.get_vectors([src.id])[0]
        record = ItemRecord(
            path=e.path, modality=src.modality, size=e.size, mtime_ns=e.mtime_ns, content_hash=res.hash,
            facts=src.facts, model=src.model, root=res.task.root, vector=vec, error=None,
            segments=self.storage.item_segments(src.id, vectors=True) if res.task.moments else None,
        )
        self._remember(record, self.storage.put([record]))
        if src.path == e.path:
            report.unchanged += 1
        else:
            report.copied += 1

    def _flush_batch(self, modality: str, pending: dict[str, list[_Result]], report: IndexReport) -> None:
        batch = pending.pop(modality, [])
        if not batch:
            return
        load_model(self.embedder, modality, self.model_id)
        try:
            vectors = self._embed(modality, [r.data for r in batch])
        except (ModelError, StoreError, UsageError):
            raise  # the run's, not the file's
        except Exception as e:
            if len(batch) == 1:
                r = batch[0]
                retry = not_the_files_fault(e)
                reason = f"embedding failed: {e}" + ("; tried again on the next run" if retry else "")
                self._write_failures([self._failure(r.task.entry, modality, r.task.root, reason, r.hash, retry=retry)], report)
                return
            # One bad item must not sink its batch: embed one by one to find it.
            for r in batch:
                pending[modality] = [r]
                self._flush_batch(modality, pending, report)
            return
        records = []
        for r, v in zip(batch, vectors):
            segments = None
            if r.task.moments is not None:
                try:
                    segments = self._segments(r)
                except MediaError as e:
                    self._write_failures([self._failure(r.task.entry, modality, r.task.root, f"moments: {e.reason}",
                                                        r.hash)], report)
                    continue
            records.append(ItemRecord(
                path=r.task.entry.path, modality=modality, size=r.task.entry.size, mtime_ns=r.task.entry.mtime_ns,
                content_hash=r.hash, facts=r.facts, model=self.model_id, root=r.task.root, vector=v, error=None,
                segments=segments,
            ))
        if not records:
            return
        self._remember(records, self.storage.put(records))
        report.embedded += len(records)
        report.segments += sum(len(r.segments or ()) for r in records)
        seconds = sum(max((sg.end for sg in r.segments or ()), default=0.0) or float(r.facts.get("duration") or 0)
                      for r in records if r.modality in mo.MOMENT_MODALITIES)
        report.media_seconds += seconds
        self.progress.advance(len(records))
        media = getattr(self.progress, "media", None)
        if media is not None and seconds:
            media(seconds)

    def _segments(self, res: _Result) -> list[SegmentRecord]:
        """Embed a file's windows a chunk at a time: a long recording never sits in memory whole."""
        from xsearch.engine.preprocess.moments import windows

        out: list[SegmentRecord] = []
        for kind, seg_modality in mo.kinds(res.task.modality):
            if seg_modality not in res.task.moments:
                continue
            window, hop = res.task.moments[seg_modality]
            chunk: list[Any] = []
            spans: list[tuple[float, float]] = []
            try:
                for start, end, x in windows(kind, res.task.entry.fspath, window, hop):
                    chunk.append(x)
                    spans.append((start, end))
                    if len(chunk) >= _SEGMENT_CHUNK:
                        out += self._embed_windows(seg_modality, chunk, spans)
                        chunk, spans = [], []
            except MediaError:
                if kind != "video-audio":
                    raise
                # A video's broken sound track: its frames' windows still stand; its sound has none.
                out = [sg for sg in out if sg.modality != seg_modality]
                chunk, spans = [], []
            if chunk:
                out += self._embed_windows(seg_modality, chunk, spans)
        return out

    def _embed_windows(self, modality: str, chunk: list[Any], spans: list[tuple[float, float]]) -> list[SegmentRecord]:
        if not self._threads_tuned:
            self._tune_threads(modality)
        vectors = self.embedder.embed_tensors(modality, chunk)  # a list: windows may differ in clip count
        return [SegmentRecord(modality, round(s, 6), round(e, 6), v) for (s, e), v in zip(spans, vectors)]

    def _remember(self, records: ItemRecord | list[ItemRecord], ids: list[int]) -> None:
        """Note the ok items just committed, so later files of the same content reuse them without a query."""
        for r, ident in zip([records] if isinstance(records, ItemRecord) else records, ids):
            if r.content_hash and r.error is None:
                self._added.setdefault((r.content_hash, r.modality), Item(
                    id=ident, path=r.path, modality=r.modality, size=r.size, mtime_ns=r.mtime_ns,
                    content_hash=r.content_hash, facts=r.facts, status="ok", error=None, model=r.model, root=r.root,
                ))

    def _tune_threads(self, modality: str) -> None:
        """Once per run, before the first forward: one torch thread for a light model on the CPU."""
        self._threads_tuned = True
        emb = self.embedder
        model_for = getattr(emb, "model_for", None)
        device = getattr(emb, "device", None)
        if model_for is None or getattr(device, "type", None) != "cpu" or torch.get_num_threads() <= 1:
            return
        try:
            params = sum(p.numel() for p in model_for(modality).parameters())
        except Exception:  # an embedder without a torch module behind it: leave threads alone
            return
        if params < LIGHT_MODEL_PARAMS:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(1)

    def _restore_threads(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
        self._threads_before = None
        self._threads_tuned = False

    def _embed(self, modality: str, data: list[Any]) -> np.ndarray:
        if not self._threads_tuned:
            self._tune_threads(modality)
        return embed_inputs(self.embedder, modality, data)
