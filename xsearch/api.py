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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from xsearch.errors import StoreError, UsageError
from xsearch.indexer import Indexer, IndexReport
from xsearch.indexer.progress import Progress
from xsearch.indexer.reembed import ReembedReport
from xsearch.pathnames import byo_name, fs_path, name_keys, store_path, stored_abspath
from xsearch.query import Hit, QuerySpec, as_inputs, parse_targets, run_query
from xsearch.query.spec import INPUT_MODALITIES
from xsearch.storage import Storage
from xsearch.storage.lock import holder_pid, is_locked, writer_lock

if TYPE_CHECKING:
    from xsearch.query.classify import Classification
    from xsearch.query.dups import DupGroup

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
        if model is None and stored is not None and self.storage.get_meta("dim") is not None:  # bound by a vector
            return stored
        return resolve_model_name(model)

    @property
    def model_id(self) -> str:
        """The model's id as this store records it: a copy of the store's model folder under another name
        is the same model (same weights and config), so it keeps the store's id and its vectors."""
        from xsearch.engine.weights import model_id, same_model

        current = model_id(self.model_name)
        stored = self.storage.get_meta("model")
        return stored if stored is not None and same_model(stored, current) else current

    def _check_model(self) -> None:
        """Vectors of two models live in different spaces: refuse to mix them in one store. A store is bound to
        a model by its first vector ("dim" is written with it): a model recorded before that binds nothing."""
        stored = self.storage.get_meta("model")
        if stored is not None and stored != self.model_id and self.storage.get_meta("dim") is not None:
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
            # Bound with the first vector written, not now: a model that cannot be loaded must not pin the store.
            self.storage.bind_on_first_vector({"model": model_id, "model_name": self.model_name})
            if batch_size is None:
                from xsearch.engine.embedder import default_batch_size

                batch_size = default_batch_size(self._device)
            indexer = Indexer(
                self.storage, lambda: self.embedder, model_id, batch_size=batch_size, workers=workers, progress=progress
            )
            try:
                report = indexer.run([os.fspath(p) for p in paths], modality, setting)
            finally:
                self.storage.bind_on_first_vector({})
            if not report.interrupted:
                self._retag()
                # A run killed before its final save (crash, SIGKILL, power cut) left index files behind the
                # database, for modalities this run may not have touched: bring each one up to date now.
                for m in self.storage.stale_index_files():
                    self.storage.rebuild_indexes(m)
            return report

    def reembed(
        self,
        model: str | None = None,
        *,
        progress: Progress | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ) -> ReembedReport:
        """Embed every indexed item again with ``model`` and switch the store to it when all are done.

        Searches keep using the current vectors until the switch. Interrupted (Ctrl-C, a kill), the
        batches done are kept: calling it again with the same model (or none) continues. Items that
        cannot be embedded again (a file gone or unreadable) are failed items after the switch. From
        then on this Store searches with the new model.
        """
        from xsearch.engine.embedder import Embedder, default_batch_size
        from xsearch.engine.weights import model_id as weights_model_id
        from xsearch.engine.weights import resolve_model_name
        from xsearch.indexer.reembed import Reembedder

        with self._writing(wait=wait, on_wait=on_wait, what="xsearch index or reembed"):
            under_way = self.storage.reembed_target()
            if model is None and under_way is None:
                raise UsageError(f"{self.path}: name the model to re-embed with: xsearch reembed --model MODEL")
            name = resolve_model_name(model if model is not None else under_way["model_name"])
            new_id = weights_model_id(name)
            own = [it.path for it in self.storage.items(status="ok") if it.root is None]
            if own:
                raise UsageError(f"{self.path}: {len(own)} items were added as vectors (add_vectors), e.g. {own[0]}, "
                                 "and have no file to embed again; remove them first (xsearch remove NAME)")
            missing = [r for r in self.storage.roots() if not os.path.lexists(fs_path(r))]
            if missing:  # its files would all fail, and lose their vectors at the switch
                raise UsageError(f"{missing[0]}: indexed folder not on disk (moved, deleted or unmounted); bring it "
                                 f"back, or forget it with `xsearch remove {missing[0]}`, before re-embedding")
            embedder = Embedder(name, device=self._device, dtype=self._dtype)
            runner = Reembedder(self.storage, embedder, new_id, name, progress=progress, workers=workers,
                                batch_size=batch_size or default_batch_size(self._device))
            report = runner.run()
            if report.switched:
                with self._lock:
                    self.model_name, self._embedder = name, embedder
            return report

    def _writing(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None, what: str = "xsearch index",
                 hint: str = "wait for it or pass --wait"):
        """The store's writer lock (see xsearch.storage.lock); nothing to lock on a read-only store."""
        if self.storage.read_only:
            return contextlib.nullcontext()
        return writer_lock(self.path, wait=wait, on_wait=on_wait, what=what, hint=hint)

    def add_vectors(self, vectors: np.ndarray, *, modality: str, paths: Sequence[str], model: str | None = None) -> list[int]:
        """Bring your own embeddings: store (and index) one unit vector per path.

        ``paths`` name the vectors: a name that is a file path (one that exists, or is absolute, or
        starts with ``./`` or ``../``) is stored as ``index`` stores paths (absolute, normalised), so
        ``./a.jpg`` and ``/abs/a.jpg`` are one item; any other name (``byo/a``, ``s3://b/k``) is kept as
        given. Adding again under a name replaces that vector. A file indexed from a folder is refused.
        """
        if modality not in INPUT_MODALITIES:
            raise UsageError(f"add_vectors: unknown modality {modality!r}; expected one of {', '.join(INPUT_MODALITIES)}")
        x = _real_matrix(vectors)
        if x.ndim != 2 or len(x) != len(paths) or x.shape[1] == 0:
            raise UsageError(f"add_vectors needs an (N, D) array and N paths; got {x.shape} and {len(paths)} paths")
        if not np.isfinite(x).all():
            raise UsageError("add_vectors: every vector must be finite (no NaN or infinity, nothing beyond float32)")
        peak = np.abs(x).max(axis=1, keepdims=True)
        if np.any(peak == 0):
            raise UsageError("add_vectors: every vector must be non-zero (a zero vector has no direction)")
        x /= peak  # first: squaring 1e30 (in the norm) would overflow float32
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        names = [byo_name(p) for p in paths]
        with self._writing(hint="try again when it has finished"):
            ids = self.storage.add_vectors(x, modality=modality, paths=names, model=model)
            self.storage.flush()
            self._retag()
        return ids

    def remove(self, paths: str | bytes | os.PathLike | Iterable[str | bytes | os.PathLike], *,
               missing_ok: bool = True) -> int:
        """Forget files and folders: everything under a folder, and the indexed folders inside it.
        Returns how many items went.

        A path is matched as given (names stored by ``add_vectors``) and as a file path. Files
        still on disk under an indexed folder come back with its next index run: remove (or move)
        them on disk too, or forget the whole indexed folder. ``missing_ok=False``: a path that
        matches nothing in the store is a StoreError naming it, and nothing is removed.
        """
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        with self._writing(hint="try again when it has finished"):
            roots = self.storage.roots()
            ids: list[int] = []
            forget: list[str] = []
            unknown: list[str] = []
            for p in paths:
                found = len(ids), len(forget)
                for key in name_keys(p):
                    ids.extend(it.id for it in self.storage.items_under(key))
                    forget += [r for r in roots if r == key or r.startswith(os.path.join(key, ""))]
                if (len(ids), len(forget)) == found:
                    unknown.append(store_path(os.fsdecode(p)))
            if unknown and not missing_ok:
                raise StoreError(f"{', '.join(unknown)}: not in the store {self.path} (no indexed file, folder or "
                                 "name at or under it); nothing removed: check the path (`xsearch status` lists "
                                 "the indexed folders)")
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
        tags: str | Iterable[str] | None = None,
        moments: bool = False,
    ) -> list[Hit]:
        """Search with one or more inputs, each a value, a ``(value, weight)`` pair, or a list of them.

        Strings may carry a weight as ``"VALUE@WEIGHT"``. ``like`` takes indexed paths or item ids
        (their stored vectors are used, nothing is re-embedded); ``vector`` takes raw embeddings.
        ``folder``, ``glob`` and ``tags`` (only items carrying every one of these tags: see ``tag``) filter
        the results; xsearch.query.filters says how each scales.
        A file input ``"PATH#t=START,END"`` stands for that span of the file (seconds).
        ``moments=True``: the places inside recordings indexed with moments, each hit with
        ``start`` and ``end`` (seconds), instead of whole files.
        """
        from xsearch.query.tagged import parse_tags

        given = dict(text=text, image=image, audio=audio, video=video, depth=depth, thermal=thermal, imu=imu, like=like, vector=vector)
        inputs = [i for kind in _INPUT_KINDS for i in as_inputs(kind, given[kind])]
        spec = QuerySpec(
            inputs=inputs, targets=parse_targets(target), k=k, folder=folder, glob=glob, min_score=min_score,
            tags=parse_tags(tags),
            moments=moments,
        )
        return self.query(spec)

    def query(self, spec: QuerySpec, *, validated: bool = False) -> list[Hit]:
        """Run a prepared :class:`QuerySpec` (``validated``: ``spec.validate()`` has passed already, as the
        CLI does before it opens the store: it is not run twice)."""
        if not validated:
            spec.validate()
        if spec.folder is not None:
            folder = stored_abspath(spec.folder)
            # A typo would otherwise look like "no results"; an unmounted indexed folder still has its items.
            if not os.path.isdir(spec.folder) and not self.storage.has_items_under(folder):
                raise UsageError(f"folder filter: {folder}: no such folder, and nothing indexed under it")
        if any(i.kind in INPUT_MODALITIES for i in spec.inputs):
            self._check_model()
        dim = self.storage.dim
        for i in spec.inputs:
            if i.kind == "vector" and dim is not None and len(i.value) != dim:
                # Said of the store: the index searched first (whichever modality) is beside the point.
                raise UsageError(f"a query vector has {len(i.value)} numbers, but this store's embeddings have {dim}")
        if spec.tags and spec.moments:
            raise UsageError("tags belong to whole files: a tag filter cannot be combined with moments yet")
        # Tags filter like folder and glob do, in the same candidate loop (xsearch.query.filters).
        return run_query(spec, self.storage, lambda: self.embedder, validated=True)

    # ------------------------------------------------------------ zero-shot labels and tags

    def classify(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        labels: str | Sequence[str],
        *,
        templates: str | Sequence[str] | None = None,
        modality: str | None = None,
    ) -> list[Classification]:
        """Zero-shot classification of files: per file, every label with its probability, most probable first.

        Probabilities are the original ImageBind's: a softmax over the model's scaled outputs (see
        ``xsearch.query.classify``). ``labels``: a list or a comma-separated string. ``templates``
        replace the per-modality prompt templates (``"{}"`` stands for the label); several are averaged.
        ``modality`` reads every file as that modality (depth, thermal, imu...); otherwise it is
        detected as ``index`` does.
        """
        from xsearch.engine.embedder import canonical_modality
        from xsearch.indexer.detect import detect_modality
        from xsearch.query.classify import Classification, label_matrix, parse_labels, probabilities, ranked, templates_for
        from xsearch.query.search import _check_file

        if isinstance(files, (str, os.PathLike)):
            files = [files]
        if isinstance(templates, str):
            templates = [templates]
        names = parse_labels(labels)
        by_modality: dict[str, list[int]] = {}
        paths = [os.fspath(f) for f in files]
        if not paths:
            raise UsageError("classify: name at least one file")
        for i, p in enumerate(paths):
            m = canonical_modality(modality) if modality else None
            _check_file(p, m or "classify")
            m = m or detect_modality(p)
            if m is None:
                raise UsageError(f"{p}: not a file xsearch reads (unknown kind); give --modality to read it as one")
            templates_for(m, templates)  # a bad template fails before the model loads
            by_modality.setdefault(m, []).append(i)
        self._check_model()
        emb = self.embedder
        out: list[Classification | None] = [None] * len(paths)
        for m, idx in by_modality.items():
            # A text file is read as one (a str given to embed("text") would be the text itself).
            x = emb.embed(m, [Path(paths[i]) if m == "text" else paths[i] for i in idx], scaled=True)
            probs = probabilities(x, label_matrix(emb, names, templates_for(m, templates)))
            for i, p in zip(idx, probs):
                out[i] = Classification(paths[i], m, ranked(names, p))
        return [c for c in out if c is not None]

    def tag(
        self,
        labels: str | Sequence[str],
        *,
        name: str = "labels",
        target: str | Iterable[str] | None = "all",
        top: int | None = 3,
        min_prob: float | None = None,
        templates: str | Sequence[str] | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Tag the indexed items of ``target`` with their most probable labels (zero-shot, as ``classify``
        but from the stored vectors: each modality's unit vector times its logit scale).

        Tags are stored under the label set ``name``: tagging again under the same name with the same
        labels and options keeps the tags of unchanged items and tags only new or changed ones; with other
        labels or options it replaces that set's tags (other sets are untouched). Later index runs tag
        new and changed items of every set, without the model. ``top``: most probable labels kept per
        item (None: all); ``min_prob``: labels under this probability are not kept.
        Returns ``{"name", "labels", "tagged"}`` (items tagged by this call).
        """
        from xsearch.query.classify import label_matrix, parse_labels, templates_for
        from xsearch.storage import tags as T

        names = parse_labels(labels)
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise UsageError(f"a label set needs a name of 1 to 200 characters, not {name!r}")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise UsageError(f"top must be a whole number of at least 1, not {top!r}")
        if min_prob is not None and not (isinstance(min_prob, (int, float)) and 0 <= min_prob <= 1):
            raise UsageError(f"min_prob must be a probability between 0 and 1, not {min_prob!r}")
        targets = parse_targets(target) or INPUT_MODALITIES
        for m in targets:
            templates_for(m, templates)
        options = {"targets": list(targets), "top": top, "min_prob": min_prob,
                   "templates": list(templates) if templates else None, "model": self.model_id}
        with self._writing(wait=wait, hint="try again when it has finished, or pass wait=True"):
            self._check_model()
            old = T.get_label_set(self.storage, name)
            if old is None or old["labels"] != names or old["options"] != options:
                emb = self.embedder
                vectors = {m: (emb.logit_scale(m), label_matrix(emb, names, templates_for(m, templates)))
                           for m in targets}
                T.save_label_set(self.storage, name, names, options, vectors)
            tagged = T.retag(self.storage, [name])
        return {"name": name, "labels": names, "tagged": tagged}

    def label_sets(self) -> list[dict[str, Any]]:
        """Every label set: name, labels, options, items tagged now and items per label."""
        from xsearch.storage.tags import label_sets

        return label_sets(self.storage)

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Current tags per item id: ``[{"label", "prob", "set"}]``, most probable first."""
        from xsearch.storage.tags import tags_of

        return tags_of(self.storage, ids)

    def _retag(self) -> None:
        """Tag new and changed items with every stored label set (no model needed)."""
        if self.storage.read_only:
            return
        from xsearch.storage.tags import retag

        retag(self.storage)

    # ------------------------------------------------------------ near-duplicates

    def duplicates(
        self,
        *,
        target: str | Iterable[str] | None = "all",
        threshold: float = 0.95,
        cross: bool = False,
        cross_threshold: float | None = None,
        probes: int = 2,
    ) -> list[DupGroup]:
        """Groups of items of one modality whose stored vectors have a cosine >= ``threshold``, each with a
        suggested keeper first (largest resolution or duration, then newest). Found through the index's
        cells (see ``xsearch.query.dups``), never by comparing all pairs. Nothing is deleted.

        ``cross``: also a video's audio track (embedded now with the audio tower) against the audio files,
        and a video's vector against the images, at ``cross_threshold`` (default: ``threshold``).
        """
        from xsearch.query import dups as D

        for name, value in (("threshold", threshold), ("cross_threshold", cross_threshold)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not -1 <= value <= 1):
                raise UsageError(f"{name} must be a cosine between -1 and 1, not {value!r}")
        counts = self.storage.counts()
        targets = [m for m in (parse_targets(target) or counts) if counts.get(m)]
        groups: list[D.DupGroup] = []
        for m in targets:
            ids, x = self._all_vectors(m)
            quantizer = None
            if len(ids) > D.EXACT_MAX:
                quantizer = self.storage.coarse_quantizer(m) or D.train_quantizer(x)
            pairs = D.similar_pairs(x, float(threshold), quantizer, probes)
            if m == "video" and len(pairs):
                pairs = self._aligned_video_pairs(ids, pairs, float(threshold))
            comps = D.components(pairs)
            items = {it.id: it for it in self.storage.get_items([int(ids[i]) for c in comps for i in c])}
            for comp in comps:
                rows = [i for i in comp if int(ids[i]) in items]
                if len(rows) > 1:
                    groups.append(D.make_group("same", [items[int(ids[i])] for i in rows], x[rows]))
        if cross:
            groups += self._cross_duplicates(counts, float(threshold if cross_threshold is None else cross_threshold))
        return groups

    def _aligned_video_pairs(self, ids: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
        """Video pairs whose frame windows (moments) agree too, where both videos have them: window i of one
        against window i of the other, their mean cosine at least ``threshold`` over as many windows as the
        longer has (a missing window counts 0). A shared intro alone no longer makes two videos duplicates;
        videos without windows are judged by their whole-file vector."""
        from xsearch.query.dups import aligned_similarity

        windows: dict[int, np.ndarray] = {}

        def frames(row: int) -> np.ndarray:
            if row not in windows:
                segs = self.storage.item_segments(int(ids[row]), vectors=True)
                got = [s.vector for s in sorted(segs, key=lambda s: s.start) if s.modality == "video"]
                windows[row] = np.stack(got) if got else np.zeros((0, 0), np.float32)
            return windows[row]

        keep = [k for k, (a, b) in enumerate(pairs) if not (len(frames(int(a))) and len(frames(int(b))))
                or aligned_similarity(frames(int(a)), frames(int(b))) >= threshold]
        return pairs[keep]

    def _all_vectors(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        from xsearch.query.dups import memory_rows

        # Each chunk is narrowed as it comes: a million 1024-d vectors are 2 GB as float16, 4 GB as float32.
        dtype = memory_rows(self.storage.counts().get(modality, 0), self.storage.dim or 0)
        parts = [(i, v.astype(dtype, copy=False)) for i, v in self.storage.iter_vectors(modality)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.storage.dim or 0), np.float32)
        return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])

    def _cross_duplicates(self, counts: dict[str, int], threshold: float) -> list[DupGroup]:
        """A video with the audio files cut from its sound track, and with stills taken from it."""
        from xsearch.engine.preprocess.audio import load_audio_track
        from xsearch.errors import MediaError
        from xsearch.query import dups as D

        groups: list[D.DupGroup] = []
        videos = self.storage.items(modality="video", status="ok") if counts.get("video") else []
        if not videos:
            return groups
        if counts.get("audio"):
            self._check_model()
            emb = self.embedder
            for video in videos:
                try:
                    track = load_audio_track(fs_path(video.path))
                except (MediaError, OSError):
                    continue  # the file changed or went since it was indexed: nothing to compare
                if track is None:
                    continue
                v = emb.embed_tensors("audio", [track])
                hits = D.cross_pairs(v, lambda q, k: self.storage.search("audio", q, k), threshold)[0]
                if hits:
                    found = self.storage.get_items([i for i, _ in hits])
                    vecs = np.concatenate([v, self.storage.get_vectors([it.id for it in found])])
                    groups.append(D.make_group("audio-track", [video, *found], vecs, keeper=0))
        if counts.get("image"):
            vv = self.storage.get_vectors([v.id for v in videos])
            for video, v, hits in zip(videos, vv, D.cross_pairs(vv, lambda q, k: self.storage.search("image", q, k),
                                                                 threshold)):
                if hits:
                    found = self.storage.get_items([i for i, _ in hits])
                    vecs = np.concatenate([v[None, :], self.storage.get_vectors([it.id for it in found])])
                    groups.append(D.make_group("still", [video, *found], vecs, keeper=0))
        return groups

    # ------------------------------------------------------------ status

    def status(self, verbose: bool = False) -> dict[str, Any]:
        """Counts and index facts per modality, the model, the store's size, failed files.

        ``verbose`` adds what the decoders said about each file (``"warnings"``: one entry per file,
        failed or indexed, with its lines; a failed file's entry in ``"errors"`` carries them too).
        """
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.is_dir() else 0
        counts = self.storage.counts()
        target = self.storage.reembed_target()  # an interrupted `xsearch reembed`, to continue
        moments = self.storage.root_moments()
        st = {
            "store": str(self.path),
            "model": self.storage.get_meta("model") or self.model_id,
            "roots": [{"path": p, "modality": m, "missing": not os.path.lexists(fs_path(p)),
                       **({"moments": True} if moments.get(p) is not None else {})}
                      for p, m in self.storage.roots().items()],
            "counts": counts,
            "reembed": None if target is None else {"model": target["model"], "done": self.storage.reembed_done(),
                                                    "total": sum(counts.values())},
            "moments": self.storage.segment_counts(),  # stored windows per modality (--moments)
            "indexes": self.storage.index_info(),
            "store_bytes": size,
            "errors": [{"path": it.path, "reason": it.error} for it in self.storage.errors()],
            "label_sets": self.label_sets(),
        }
        if verbose:
            warned = self.storage.items_with_warnings()
            said = {it.path: it.facts["warnings"] for it in warned}
            for e in st["errors"]:
                e["warnings"] = said.get(e["path"], [])
            st["warnings"] = [{"path": it.path, "status": it.status, "warnings": it.facts["warnings"]} for it in warned]
        return st

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        """Check the store: database integrity, store vs index agreement, half-written index files,
        every stored vector (finite, unit length), files that vanished from disk. ``repair`` rebuilds
        the derived indexes and embeds the files of damaged vectors again (an item with no file to
        embed is marked failed)."""
        problems = self._store_problems()
        try:
            problems += self._content_problems()
        except StoreError as exc:  # a damaged database may fail any read: a finding, not a crash
            return {"ok": False, "problems": problems + [{"kind": "database", "detail": str(exc)}], "repaired": False}
        if problems and is_locked(self.path):
            # A writer's index files trail its commits until it saves them: say so rather than alarm.
            pid = holder_pid(self.path)
            problems.insert(0, {"kind": "busy", "detail": f"{self.path}: an index run (pid {pid}) is writing to this "
                                "store, so its index files may trail the database until it finishes; run "
                                "`xsearch doctor` again then"})
        repaired = False
        if repair and any(p["kind"] in ("store", "vector") for p in problems):
            with self._writing(hint="try `xsearch doctor --repair` again when it has finished"):
                damaged = self.storage.damaged_vectors()
                failed = self._embed_again(damaged) if damaged else []  # their index entries follow these writes
                if any(p["kind"] == "store" for p in problems):
                    self.storage.rebuild_indexes()
            repaired = True
            problems = self._store_problems() + self._content_problems() + [
                {"kind": "vector", "detail": f"{e['path']}: embedding it again failed ({e['reason']}); it is now "
                                             "marked failed (`xsearch status --errors`)"} for e in failed]
        return {"ok": not problems, "problems": problems, "repaired": repaired}

    def _content_problems(self) -> list[dict[str, str]]:
        """Missing folders, vanished files and damaged stored vectors."""
        problems = []
        missing = [r for r in self.storage.roots() if not os.path.lexists(fs_path(r))]
        for r in missing:
            n = len(self.storage.items_under(r))
            problems.append({"kind": "missing", "detail": f"{r}: indexed folder not on disk (moved, deleted or "
                                                          f"unmounted); its {n} items are kept until it is back or "
                                                          f"`xsearch remove {r}` forgets them"})
        vanished = [it.path for it in self.storage.items(status="ok") if it.root is not None and it.root not in missing
                    and not os.path.exists(fs_path(it.path))]
        problems += [{"kind": "vanished", "detail": f"{p}: no longer on disk; `xsearch index` drops it"} for p in vanished]
        problems += [{"kind": "vector", "detail": f"{it.path}: its stored vector is damaged (not a finite unit vector), "
                                                  "so it scores wrongly; `xsearch doctor --repair` embeds "
                      + ("the file again" if it.root is not None else "nothing for it (added with add_vectors): "
                         "it is marked failed; add it again")}
                     for it in self.storage.damaged_vectors()]
        return problems

    def _embed_again(self, items: list[Any]) -> list[dict[str, str]]:
        """Replace damaged vectors: indexed files still on disk are embedded again (a file that fails now is
        recorded as failed, as in any index run); the others are marked failed, since nothing can restore them.
        Returns the files that failed to embed, with their reasons."""
        from xsearch.storage import ItemRecord

        files = [it for it in items if it.root is not None and os.path.exists(fs_path(it.path))]
        lost = [it for it in items if it not in files]
        if lost:
            self.storage.put([ItemRecord(path=it.path, modality=it.modality, size=it.size, mtime_ns=it.mtime_ns,
                                         content_hash=it.content_hash, facts=it.facts, model=it.model, root=it.root,
                                         vector=None, error="its stored vector was damaged and there is no file to "
                                                            "embed again; add it again")
                              for it in lost])
        if not files:
            return []
        # Forgotten first: an unchanged file would otherwise be skipped, or take its damaged vector as a copy's.
        self.storage.remove([it.id for it in files])
        return self.index([fs_path(it.path) for it in files]).errors

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


def _real_matrix(vectors: Any) -> np.ndarray:
    """``vectors`` as a float32 copy; complex, text or ragged input is refused rather than coerced."""
    try:
        arr = np.asarray(vectors)
        if np.iscomplexobj(arr):
            raise UsageError("add_vectors: the vectors are complex numbers; give real-valued embeddings")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes infinity, refused by the caller
            return arr.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise UsageError(f"add_vectors: expected an (N, D) array of real numbers ({e})") from None


def open(path: str | os.PathLike | None = None, **kwargs: Any) -> Store:  # noqa: A001 - the API's name
    """Open (creating if needed) the store at ``path`` (default ``$XSEARCH_HOME/store``)."""
    return Store(path, **kwargs)
