"""The Python API: one ``Store`` object does everything the CLI does, one call each.

    import xsearch
    store = xsearch.open()                       # $XSEARCH_HOME/store, or a path
    store.index(["./media"])
    hits = store.search(audio="dog.wav", target="image", k=5)
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from xsearch.errors import UsageError
from xsearch.indexer import Indexer, IndexReport
from xsearch.indexer.progress import Progress
from xsearch.pathnames import fs_path, stored_abspath
from xsearch.query import Hit, QuerySpec, as_inputs, parse_targets, run_query
from xsearch.query.spec import INPUT_MODALITIES
from xsearch.storage import Storage
from xsearch.storage.lock import holder_pid, is_locked, writer_lock

_INPUT_KINDS = INPUT_MODALITIES + ("like", "vector")


def default_store_path() -> Path:
    from xsearch.paths import default_store_dir

    return Path(os.environ.get("XSEARCH_STORE") or default_store_dir())


class Store:
    """A store of indexed media: its database, its indexes and the model that embeds for it.

    The model is the one given, else the one the store was built with, else
    ``$XSEARCH_MODEL``, else ``imagebind_huge``. It is loaded lazily, tower by
    tower: searching by text never reads the vision weights.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        model: str | None = None,
        url: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        read_only: bool = False,
        create: bool = True,
    ):
        self.path = Path(path) if path is not None else default_store_path()
        self.storage = Storage(self.path, url, create=create, read_only=read_only)
        self._device, self._dtype = device, dtype
        self._embedder = None
        self._lock = threading.Lock()
        self.model_name = self._resolve_model(model)

    def reopen(self, model: str | None = None) -> Store:
        """A new Store at the same path with the same options, for a store replaced on disk (deleted and
        created again). The loaded model is shared when the new store uses the same one."""
        new = Store(self.path, model=model, device=self._device, dtype=self._dtype,
                    read_only=self.storage.read_only, create=False)
        if new.model_name == self.model_name:
            new._embedder = self._embedder
        return new

    @property
    def device(self) -> str:
        """The device asked for ("auto", "cpu", "cuda"...), as given when the store was opened."""
        return self._device

    # ------------------------------------------------------------ model

    def _resolve_model(self, model: str | None) -> str:
        from xsearch.engine.weights import resolve_model_name

        stored = self.storage.get_meta("model_name")
        if model is None and stored is not None:
            return stored
        return resolve_model_name(model)

    @property
    def model_id(self) -> str:
        from xsearch.engine.weights import model_id

        return model_id(self.model_name)

    def _check_model(self) -> None:
        """Vectors of two models live in different spaces: refuse to mix them in one store."""
        stored = self.storage.get_meta("model")
        if stored is not None and stored != self.model_id:
            raise UsageError(
                f"{self.path}: this store was built with model {stored!r}, not {self.model_id!r}; "
                "use the same --model, or another --store"
            )

    @property
    def embedder(self):
        with self._lock:
            if self._embedder is None:
                from xsearch.engine.embedder import Embedder

                self._embedder = Embedder(self.model_name, device=self._device, dtype=self._dtype)
            return self._embedder

    # ------------------------------------------------------------ indexing

    def index(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike] = (),
        modality: str | None = None,
        *,
        progress: Progress | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
        moments: bool | None = None,
        window: Sequence[str] = (),
        hop: Sequence[str] = (),
    ) -> IndexReport:
        """Index files and folders (all known folders when ``paths`` is empty); incremental.

        ``batch_size``: files embedded together (default 8 on the CPU, 64 on a GPU).

        ``moments=True`` also stores windows of the folders' audio, video and IMU recordings, so that
        ``search(..., moments=True)`` finds the place inside a long file; False stops that; None keeps
        each folder's setting (remembered like ``modality``). ``window`` / ``hop``: ``"audio=4s/1s"``,
        ``"video=2s"`` (window[/hop]) and ``"imu=2.5s"`` (hop) entries; they imply ``moments=True``.

        One index run writes to a store at a time (``<store>/index.lock``): if another holds it, this
        raises a StoreError naming its pid, or with ``wait=True`` waits for it (``on_wait`` gets a line first).
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        setting: dict | bool | None = None
        if moments is not False and (moments or window or hop):
            from xsearch.indexer.moments import settings

            setting = settings(window, hop)
        elif moments is False:
            if window or hop:
                raise UsageError("--window and --hop set the windows of moments: drop them, or --no-moments")
            setting = False
        if not paths:
            if modality is not None:  # remembered per folder: a run over every folder keeps each one's own
                raise UsageError(f"a modality applies to the folders given with it: xsearch index PATH... --modality {modality}")
            if setting is not None:
                raise UsageError("moments apply to the folders given with them: xsearch index PATH... --moments")
            if not self.storage.roots():
                raise UsageError(f"{self.path}: no folders indexed yet: xsearch index PATH")
        with self._writing(wait=wait, on_wait=on_wait):
            self._check_model()
            model_id = self.model_id
            if self.storage.get_meta("model") is None:
                self.storage.set_meta("model", model_id)
                self.storage.set_meta("model_name", self.model_name)
            if batch_size is None:
                from xsearch.engine.embedder import default_batch_size

                batch_size = default_batch_size(self._device)
            indexer = Indexer(
                self.storage, lambda: self.embedder, model_id, batch_size=batch_size, workers=workers, progress=progress
            )
            report = indexer.run([os.fspath(p) for p in paths], modality, setting)
            if not report.interrupted:
                # A run killed before its final save (crash, SIGKILL, power cut) left index files behind the
                # database, for modalities this run may not have touched: bring each one up to date now.
                for m in self.storage.stale_index_files():
                    self.storage.rebuild_indexes(m)
            return report

    def _writing(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None, what: str = "xsearch index",
                 hint: str = "wait for it or pass --wait"):
        """The store's writer lock (see xsearch.storage.lock); nothing to lock on a read-only store."""
        if self.storage.read_only:
            return contextlib.nullcontext()
        return writer_lock(self.path, wait=wait, on_wait=on_wait, what=what, hint=hint)

    def add_vectors(self, vectors: np.ndarray, *, modality: str, paths: Sequence[str], model: str | None = None) -> list[int]:
        """Bring your own embeddings: store (and index) one unit vector per path.

        ``paths`` are names kept as given (file paths, URLs, keys); adding again under a name
        replaces that vector. A name that is a file indexed from a folder is refused.
        """
        if modality not in INPUT_MODALITIES:
            raise UsageError(f"add_vectors: unknown modality {modality!r}; expected one of {', '.join(INPUT_MODALITIES)}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(paths):
            raise UsageError(f"add_vectors needs an (N, D) array and N paths; got {vectors.shape} and {len(paths)} paths")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise UsageError("add_vectors: every vector must be finite and non-zero")
        with self._writing(hint="try again when it has finished"):
            ids = self.storage.add_vectors(vectors / norms, modality=modality, paths=list(paths), model=model)
            self.storage.flush()
        return ids

    def remove(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> int:
        """Forget files and folders: everything under a folder, and the indexed folders inside it.
        Returns how many items went.

        A path is matched as given (names stored by ``add_vectors``) and as a file path. Files
        still on disk under an indexed folder come back with its next index run: remove (or move)
        them on disk too, or forget the whole indexed folder.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        with self._writing(hint="try again when it has finished"):
            roots = self.storage.roots()
            ids: list[int] = []
            forget: list[str] = []
            for p in paths:
                for key in dict.fromkeys((os.fsdecode(p), stored_abspath(p))):
                    ids.extend(it.id for it in self.storage.items_under(key))
                    forget += [r for r in roots if r == key or r.startswith(os.path.join(key, ""))]
            n = self.storage.remove(sorted(set(ids))) if ids else 0
            for r in dict.fromkeys(forget):
                self.storage.remove_root(r, remove_items=False)
            self.storage.flush()
        return n

    # ------------------------------------------------------------ searching

    def search(
        self,
        text: Any = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        depth: Any = None,
        thermal: Any = None,
        imu: Any = None,
        *,
        like: Any = None,
        vector: Any = None,
        target: str | Iterable[str] | None = "all",
        k: int = 10,
        folder: str | None = None,
        glob: str | None = None,
        min_score: float | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Search with one or more inputs, each a value, a ``(value, weight)`` pair, or a list of them.

        Strings may carry a weight as ``"VALUE@WEIGHT"``. ``like`` takes indexed paths (their
        stored vectors are used, nothing is re-embedded); ``vector`` takes raw embeddings.
        A file input ``"PATH#t=START,END"`` stands for that span of the file (seconds).
        ``moments=True``: the places inside recordings indexed with moments, each hit with
        ``start`` and ``end`` (seconds), instead of whole files.
        """
        given = dict(text=text, image=image, audio=audio, video=video, depth=depth, thermal=thermal, imu=imu, like=like, vector=vector)
        inputs = [i for kind in _INPUT_KINDS for i in as_inputs(kind, given[kind])]
        spec = QuerySpec(
            inputs=inputs, targets=parse_targets(target), k=k, folder=folder, glob=glob, min_score=min_score,
            moments=moments,
        )
        return self.query(spec)

    def query(self, spec: QuerySpec) -> list[Hit]:
        """Run a prepared :class:`QuerySpec`."""
        if any(i.kind in INPUT_MODALITIES for i in spec.inputs):
            self._check_model()
        return run_query(spec, self.storage, lambda: self.embedder)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Counts and index facts per modality, the model, the store's size, failed files."""
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.is_dir() else 0
        moments = self.storage.root_moments()
        return {
            "store": str(self.path),
            "model": self.storage.get_meta("model") or self.model_id,
            "roots": [{"path": p, "modality": m, "missing": not os.path.lexists(fs_path(p)),
                       **({"moments": True} if moments.get(p) is not None else {})}
                      for p, m in self.storage.roots().items()],
            "counts": self.storage.counts(),
            "moments": self.storage.segment_counts(),  # stored windows per modality (--moments)
            "indexes": self.storage.index_info(),
            "store_bytes": size,
            "errors": [{"path": it.path, "reason": it.error} for it in self.storage.errors()],
        }

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        """Check the store: database integrity, store vs index agreement, half-written
        index files, files that vanished from disk. ``repair`` rebuilds the derived indexes."""
        problems = self._store_problems()
        if problems and not self.storage.read_only and is_locked(self.path):
            # A writer's index files trail its commits until it saves them: say so rather than alarm.
            pid = holder_pid(self.path)
            problems.insert(0, {"kind": "busy", "detail": f"{self.path}: an index run (pid {pid}) is writing to this "
                                "store, so its index files may trail the database until it finishes; run "
                                "`xsearch doctor` again then"})
        missing = [r for r in self.storage.roots() if not os.path.lexists(fs_path(r))]
        for r in missing:
            n = len(self.storage.items_under(r))
            problems.append({"kind": "missing", "detail": f"{r}: indexed folder not on disk (moved, deleted or "
                                                          f"unmounted); its {n} items are kept until it is back or "
                                                          f"`xsearch remove {r}` forgets them"})
        vanished = [it.path for it in self.storage.items(status="ok") if it.root is not None and it.root not in missing
                    and not os.path.exists(fs_path(it.path))]
        problems += [{"kind": "vanished", "detail": f"{p}: no longer on disk; `xsearch index` drops it"} for p in vanished]
        repaired = False
        if repair and any(p["kind"] == "store" for p in problems):
            with self._writing(hint="try `xsearch doctor --repair` again when it has finished"):
                self.storage.rebuild_indexes()
            repaired = True
            problems = self._store_problems() + [p for p in problems if p["kind"] in ("missing", "vanished")]
        return {"ok": not problems, "problems": problems, "repaired": repaired}

    def _store_problems(self) -> list[dict[str, str]]:
        """storage.check()'s findings; a damaged database (which no index rebuild fixes) says what to do."""
        out = []
        for p in self.storage.check():
            if p.startswith("sqlite integrity_check"):
                out.append({"kind": "database", "detail": (
                    f"{p}; the database file is damaged: restore {self.path / 'xsearch.db'} from a backup, "
                    "or move the store aside and run `xsearch index` again")})
            else:
                out.append({"kind": "store", "detail": p})
        return out

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(path: str | os.PathLike | None = None, **kwargs: Any) -> Store:  # noqa: A001 - the API's name
    """Open (creating if needed) the store at ``path`` (default ``$XSEARCH_HOME/store``)."""
    return Store(path, **kwargs)
