"""One FAISS index per modality: inner product over L2-normalised vectors (= cosine).

Small collections use an exact `IDMap2,Flat`; large ones an IVF-PQ index whose candidates are re-ranked
exactly from the stored vectors, or, for low-dimensional vectors, an IVF-Flat index whose lists hold the
vectors themselves (exact scores, no re-ranking). The index is derived data: it is always rebuildable from
the database, and its configuration (a FAISS factory string plus the tuned parameters) is persisted in a
JSON sidecar.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from xsearch.storage import vector_cache
from xsearch.storage.files import atomic_write, check_index_dir, remove_derived
from xsearch.storage.vector_cache import VectorCache
from xsearch.storage.vectors import id_checksum

log = logging.getLogger(__name__)

FLAT_FACTORY = "IDMap2,Flat"
SIDECAR_FORMAT = 1
TUNE_K = 10  # nprobe is tuned for recall@10
# One BLAS call scores at most this many vector elements for one query. OpenBLAS runs larger matrix-vector
# products on several threads, and on a machine whose cores are busy with other work those threads wait
# for each other for a scheduler slice: 600 re-ranked 1024-d candidates took ~24 ms instead of 0.02 ms in
# such bursts on the 2-core bench machine. Blocks below its threshold stay on the calling thread.
_SCORE_BLOCK = 1 << 18


class Fetch(Protocol):
    """Reads stored vectors: (found ids, float32 rows); check_modality drops ids of other modalities."""

    def __call__(self, ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]: ...


Results = list[list[tuple[int, float]]]


@dataclass(frozen=True)
class IndexPolicy:
    """How indexes are chosen, trained and searched. Tests shrink `flat_max` to reach IVF-PQ quickly."""

    flat_max: int = 50_000  # exact search up to this many vectors; IVF-PQ (IVF-Flat below pq_min_dim) above
    ivf_factory: str = "IVF{nlist},PQ{m}x8"  # e.g. "OPQ{m},IVF{nlist},PQ{m}x8"
    # Below this dimension the lists hold the vectors themselves ("IVF{nlist},Flat"): a small vector costs
    # 4*D < 512 bytes in memory, not much more than the PQ path's D/8-byte code plus 2*D-byte re-rank
    # cache, and buys exact scores, so recall depends on nprobe alone. A D/8-byte code is what limits
    # recall (30k isotropic vectors: PQ3 at 24-d tuned to 0.95, PQ8 at 64-d to 0.88, even with 400
    # candidates re-ranked); at 1024-d (128 bytes) real embeddings reach 0.98. 0: PQ at any dimension.
    pq_min_dim: int = 128
    pq_bytes: int | None = None  # bytes per vector (PQ M); None: D/8 up to 128 (128 for D=1024)
    pq_train_per_centroid: int = 64  # PQ k-means sample (x256 centroids); FAISS's 256 costs 4x for ~nothing
    pq_train_iter: int = 10
    min_train_per_list: int = 39  # FAISS k-means wants >= 39 points per centroid
    max_train_per_list: int = 64  # training sample cap: k-means time grows with it, recall barely does
    retrain_growth: float = 4.0  # retrain once the index holds this many times what it was trained on
    rerank: int = 10  # candidates per wanted result, re-ranked exactly
    target_recall: float = 0.95  # recall@10 (after re-ranking) the tuned nprobe must reach...
    tune_margin: float = 0.02  # ...plus this, as 200 sample queries estimate recall only to about +-0.01
    tune_queries: int = 200  # stored vectors used as queries when tuning nprobe
    exact_ids_max: int = 2048  # an `ids` restriction this small is searched exactly from stored vectors
    chunk: int = 32_768  # vectors read from the database at a time when building
    seed: int = 1234
    use_gpu: bool = True  # search on GPU when faiss has one
    # IVF-PQ indexes keep a memory-mapped copy of the stored vectors for re-ranking (+2 KB per 1024-d
    # float16 vector on disk; a 1M-vector query re-ranks in ~1 ms instead of ~4 ms from SQLite)
    rerank_cache: bool = True


class VectorSource(Protocol):
    """A consistent view of one modality's stored vectors (the database, for the builder)."""

    dim: int
    dtype: str  # how the vectors are stored ("float16" / "float32")

    def ids(self) -> np.ndarray: ...  # sorted int64

    def fetch(self, ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...  # ids, float32, stored bytes


class RWLock:
    """Many concurrent searches or one mutation; writers go first so a busy reader load cannot starve them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def plan_ivf(n: int, d: int, policy: IndexPolicy) -> tuple[int, int | None, str]:
    """(nlist, M, factory) for `n` vectors of dimension `d`; M is None for IVF-Flat (d < policy.pq_min_dim)."""
    # ~4*sqrt(N) rounded down to a power of two: k-means and assignment cost grow with nlist, and the
    # nprobe tuning makes up for coarser lists.
    nlist = 2 ** int(math.log2(max(4 * math.sqrt(n), 1)))
    nlist = max(1, min(nlist, 2 ** int(math.log2(max(n // policy.min_train_per_list, 1)))))
    if d < policy.pq_min_dim:
        return nlist, None, f"IVF{nlist},Flat"
    # 8 dims per sub-quantizer (128 bytes at D=1024): measured on clustered 1024-d data, 200 candidates
    # re-ranked reach recall@10 0.98 with PQ128 but 0.86 with PQ64, and FAISS encodes dsub < 16 faster.
    # Fewer than 8 dims makes k-means training slow; more than 128 bytes buys little after re-ranking.
    target = policy.pq_bytes or max(1, min(d // 8, 128))
    target = max(1, min(target, d))
    m = max(x for x in range(1, target + 1) if d % x == 0)  # M must divide D
    return nlist, m, policy.ivf_factory.format(nlist=nlist, m=m)


def _ivf_params(index: faiss.Index, nprobe: int, sel: faiss.IDSelector | None) -> faiss.SearchParameters:
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    if sel is not None:
        params.sel = sel
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        outer._keep = params  # the C++ struct holds a raw pointer
        return outer
    return params


def ivf_kind(d: int, policy: IndexPolicy) -> str:
    """The kind of IVF index vectors of dimension `d` get: "ivfflat" below policy.pq_min_dim, else "ivfpq"."""
    return "ivfflat" if d < policy.pq_min_dim else "ivfpq"


def _top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.lexsort((ids, -scores))[:k]  # best score first, ties by id so results are deterministic
    return [(int(ids[j]), float(scores[j])) for j in order]


@dataclass
class ModalityIndex:
    """A FAISS index plus what it was built from; mutate and search only through its methods (locking)."""

    modality: str
    dim: int
    index: faiss.Index
    kind: str  # "flat" | "ivfpq" | "ivfflat"
    factory: str
    gen: int  # the database write counter ("gen:<modality>") this index reflects
    nlist: int | None = None
    m: int | None = None
    nprobe: int | None = None
    rerank: int | None = None
    trained_on: int | None = None  # index size when trained (retrain past retrain_growth x this)
    train_sample: int | None = None
    tuned_recall: float | None = None
    dirty: bool = True
    use_gpu: bool = True
    cache: VectorCache | None = None  # stored vectors for re-ranking, memory-mapped (IVF-PQ only)
    cache_problem: str | None = None  # why the sidecar's cache was not usable (doctor reports it)
    lock: RWLock = field(default_factory=RWLock, repr=False)
    _gpu: object | None = field(default=None, repr=False)
    _gpu_failed: bool = field(default=False, repr=False)
    _gpu_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- size and contents -------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id in the index, sorted (used by check() and the sidecar checksum)."""
        with self.lock.read():
            if self.kind == "flat":
                out = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            else:
                ivf = faiss.extract_index_ivf(self.index)
                invlists = ivf.invlists
                parts = []
                for lst in range(ivf.nlist):
                    size = invlists.list_size(lst)
                    if size:
                        parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                out = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return np.sort(out)

    def needs_rebuild(self, policy: IndexPolicy) -> bool:
        n = self.ntotal
        if self.kind == "flat":
            return n > policy.flat_max
        trained = self.trained_on or 1
        return (n <= policy.flat_max // 2 or n > policy.retrain_growth * trained or n * policy.retrain_growth < trained
                or self.kind != ivf_kind(self.dim, policy))  # e.g. saved as IVF-PQ before low dims got IVF-Flat

    # -- mutation ----------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, x: np.ndarray, raw: np.ndarray | None = None) -> None:
        """Add vectors (float32 as the store reads them back); `raw`, their stored bytes, keeps the
        re-rank cache current (without it the cache is dropped and re-ranking reads the database)."""
        if len(ids):
            with self.lock.write():
                self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.asarray(ids, dtype=np.int64))
                if self.cache is not None:
                    try:
                        if raw is None:
                            raise ValueError("the added vectors' stored bytes were not given")
                        self.cache.append(ids, raw)
                    except (OSError, ValueError) as exc:  # e.g. a full disk: the index stays right
                        log.warning("%s: re-rank cache dropped (%s); re-ranking reads the database",
                                    self.modality, exc)
                        self.cache = None
                self._changed()

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            with self.lock.write():
                self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
                if self.cache is not None:
                    self.cache.remove(ids)
                self._changed()

    def _changed(self) -> None:
        self.dirty = True
        self._gpu = None  # the GPU copy is re-made from the CPU index on the next search

    # -- search ------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, fetch: Fetch, *, ids: np.ndarray | None = None,
               policy: IndexPolicy) -> Results:
        """Top-k (id, cosine) per query, best first. `fetch` reads stored vectors for re-ranking."""
        nq = len(queries)
        if k <= 0 or self.ntotal == 0 or (ids is not None and len(ids) == 0):
            return [[] for _ in range(nq)]
        if self.kind == "flat":
            return self._search_flat(queries, k, ids)
        if ids is not None and len(ids) <= policy.exact_ids_max:
            cache = self.cache
            if cache is not None and cache.damaged is None:  # holds exactly this index's vectors
                return _exact_over(queries, k, ids, _cache_only(cache), fallback=_after_damage(cache, fetch))
            return _exact_over(queries, k, ids, fetch)
        nprobe, rerank = self.nprobe or 1, self.rerank or policy.rerank
        if ids is None:
            # A deep search (a large k: filtered queries ask for more until enough pass) needs more candidates
            # than the tuned lists hold: probe at least as many lists as hold that many codes on average.
            nlist = self.nlist or 1
            nprobe = max(nprobe, min(nlist, math.ceil(self._candidate_count(k, rerank) * nlist / self.ntotal)))
        return self._search_ivf(queries, k, fetch, ids=ids, nprobe=nprobe, rerank=rerank, complete=True)

    def _candidate_count(self, k: int, rerank: int) -> int:
        """How many candidates a top-k search takes from the lists (IVF-PQ: to re-rank; IVF-Flat: k)."""
        if self.kind == "ivfflat":
            return min(self.ntotal, k)
        # nprobe holds as the index grows (list membership does not change), but more vectors crowd
        # into the codes' error band: re-rank proportionally more candidates than tuning needed.
        growth = max(1.0, self.ntotal / self.trained_on) if self.trained_on else 1.0
        return min(self.ntotal, math.ceil(max(k, TUNE_K) * rerank * growth))

    def _search_flat(self, queries: np.ndarray, k: int, ids: np.ndarray | None) -> Results:
        k = min(k, self.ntotal)
        sel = None if ids is None else faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))
        params = None if sel is None else faiss.SearchParameters(sel=sel)
        gpu = self._gpu_index() if sel is None else None
        with self.lock.read():
            if gpu is not None:
                scores, labels = gpu.search(queries, k)
            else:
                with _calling_thread_only(len(queries)):
                    scores, labels = self.index.search(queries, k, params=params)
        return _hits(labels, scores)

    def _search_ivf(self, queries: np.ndarray, k: int, fetch: Fetch, *, ids: np.ndarray | None,
                    nprobe: int, rerank: int, complete: bool = False) -> Results:
        """Top-k through the lists. A query left with fewer than k results while more vectors are allowed
        (they sit in lists not probed) is searched again over every list when `ids` restrict the search,
        or when `complete` (searches do: fewer than k results then means fewer than k exist; tuning
        does not, as it measures what each nprobe finds)."""
        nlist = self.nlist or 1
        sel = None
        if ids is not None:
            sel = faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))
            # Few allowed ids live in few lists: probe proportionally more lists to still find k of them.
            nprobe = min(nlist, math.ceil(nprobe * self.ntotal / max(len(ids), 1)))
        kc = self._candidate_count(k, rerank)
        if self.kind == "ivfflat":  # the lists hold the vectors: the index's scores are exact
            def probe(q: np.ndarray, n_probe: int) -> Results:
                scores, labels = self._candidates(q, kc, n_probe, sel)
                return _hits(labels, scores)
        else:
            cache, fallback = self.cache, None
            if cache is not None and cache.damaged is None:
                fetch, fallback = _cache_first(cache, fetch), _after_damage(cache, fetch)

            def probe(q: np.ndarray, n_probe: int) -> Results:
                return _rerank(q, self._candidates(q, kc, n_probe, sel)[1], k, fetch, fallback=fallback)
        results = probe(queries, nprobe)
        if (ids is not None or complete) and nprobe < nlist:
            want = min(k, self.ntotal if ids is None else len(ids))
            short = [i for i, r in enumerate(results) if len(r) < want]
            if short:  # the allowed ids sit in lists we did not probe: look everywhere for those queries
                for i, r in zip(short, probe(queries[short], nlist)):
                    results[i] = r
        return results

    def _candidates(self, queries: np.ndarray, kc: int, nprobe: int,
                    sel: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._gpu_index() if sel is None and nprobe == self.nprobe and kc <= 2048 else None
        with self.lock.read():
            if gpu is not None:
                return gpu.search(queries, kc)
            with _calling_thread_only(len(queries)):
                return self.index.search(queries, kc, params=_ivf_params(self.index, nprobe, sel))

    def _gpu_index(self) -> object | None:
        """A GPU copy for unrestricted searches when faiss was built with GPUs; None otherwise."""
        if self._gpu is not None or self._gpu_failed or not self.use_gpu or not _gpu_available():
            return self._gpu
        with self._gpu_lock, self.lock.read():
            if self._gpu is None and not self._gpu_failed:
                try:
                    opts = faiss.GpuClonerOptions()
                    opts.useFloat16LookupTables = bool(self.m and self.m > 48)  # large M needs half tables on GPU
                    gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self.index, opts)
                    if self.nprobe:
                        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", self.nprobe)
                    self._gpu = gpu
                except Exception as exc:  # an index type the GPU lacks: CPU gives the same answers
                    log.warning("%s index stays on CPU: %s", self.modality, exc)
                    self._gpu_failed = True
        return self._gpu

    # -- persistence -------------------------------------------------------------------------------------
    def sidecar(self, **extra: object) -> dict:
        return {
            "format": SIDECAR_FORMAT,
            "modality": self.modality,
            "type": self.kind,
            "factory": self.factory,
            "metric": "inner_product",
            "dim": self.dim,
            "ntotal": self.ntotal,
            "nlist": self.nlist,
            "m": self.m,
            "nbits": 8 if self.kind == "ivfpq" else None,
            "nprobe": self.nprobe,
            "rerank": self.rerank,
            "trained_on": self.trained_on,
            "train_sample": self.train_sample,
            "tuned_recall": self.tuned_recall,
            "db_gen": self.gen,
            **extra,
        }

    def serialize(self) -> np.ndarray:
        with self.lock.read():
            return faiss.serialize_index(self.index)

    def save(self, directory: Path) -> None:
        """Write <modality>.faiss then <modality>.json, each atomically; the sidecar names the index bytes'
        size and CRC, so a crash between the two renames is detected as a mismatch (and rebuilt)."""
        data = self.serialize()
        info = self.sidecar(
            id_checksum=id_checksum(self.ids()),
            file_bytes=int(data.nbytes),
            file_crc32=zlib.crc32(memoryview(data)),
            written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        check_index_dir(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cache = self.cache
        if cache is not None and cache.directory == directory:
            info["cache"] = cache.save()
        atomic_write(directory / f"{self.modality}.faiss", memoryview(data))
        atomic_write(directory / f"{self.modality}.json", (json.dumps(info, indent=2) + "\n").encode())
        vector_cache.remove_unused(directory, self.modality, keep=vector_cache.names(info.get("cache")))
        self.dirty = False

    @classmethod
    def load(cls, directory: Path, modality: str) -> ModalityIndex:
        """Read a persisted index; raises IndexFileError saying what is wrong with the files."""
        faiss_path, json_path = directory / f"{modality}.faiss", directory / f"{modality}.json"
        if not faiss_path.exists():
            raise IndexFileError(f"{faiss_path}: missing")
        if not faiss_path.is_file():
            raise IndexFileError(f"{faiss_path}: not a file (a directory or device sits where the index belongs)")
        try:
            info = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"{json_path}: unreadable sidecar ({exc})") from exc
        if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT or info.get("modality") != modality:
            raise IndexFileError(f"{json_path}: not a format-{SIDECAR_FORMAT} sidecar for {modality!r}")
        try:
            raw = faiss_path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"{faiss_path}: unreadable ({exc.strerror})") from exc
        if len(raw) != info.get("file_bytes") or zlib.crc32(raw) != info.get("file_crc32"):
            raise IndexFileError(f"{faiss_path}: size/checksum differ from {json_path.name} (half-written or damaged)")
        try:
            index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"{faiss_path}: FAISS cannot read it ({exc})") from exc
        if index.d != info.get("dim") or index.ntotal != info.get("ntotal"):
            raise IndexFileError(f"{faiss_path}: dimension or size differ from {json_path.name}")
        mi = cls(
            modality=modality, dim=int(index.d), index=index, kind=info["type"], factory=info["factory"],
            gen=int(info["db_gen"]), nlist=info.get("nlist"), m=info.get("m"), nprobe=info.get("nprobe"),
            rerank=info.get("rerank"), trained_on=info.get("trained_on"), train_sample=info.get("train_sample"),
            tuned_recall=info.get("tuned_recall"), dirty=False,
        )
        if "cache" in info:
            try:
                cache = VectorCache.load(directory, modality, info["cache"], mi.dim)
                if len(cache) != mi.ntotal:
                    raise ValueError(f"{cache.data_path}: holds {len(cache)} vectors, the index {mi.ntotal}")
                mi.cache = cache
            except (OSError, ValueError) as exc:  # derived data: search without it, the next rebuild remakes it
                mi.cache_problem = f"re-rank cache of the {modality} index: {exc}"
                log.warning("%s; re-ranking reads the database", mi.cache_problem)
        return mi


class IndexFileError(Exception):
    """An index file is missing, unreadable or inconsistent with its sidecar (the index gets rebuilt)."""


def remove_files(directory: Path, modality: str) -> None:
    for suffix in (".faiss", ".json"):
        remove_derived(directory / f"{modality}{suffix}")
    vector_cache.remove_unused(directory, modality, keep=())


# -- building ------------------------------------------------------------------------------------------------
def build(modality: str, source: VectorSource, gen: int, policy: IndexPolicy,
          cache_dir: Path | None = None) -> ModalityIndex:
    """A fresh index for every vector in `source`, of the type its size calls for. An IVF-PQ index
    gets a re-rank cache (a copy of the stored vectors) written into `cache_dir`, when one is given; an
    IVF-Flat index needs none (its scores are exact)."""
    ids = source.ids()
    n, d = len(ids), source.dim
    if n <= policy.flat_max:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        for chunk_ids, x, _ in source.chunks(policy.chunk):
            index.add_with_ids(x, chunk_ids)
        return ModalityIndex(modality=modality, dim=d, index=index, kind="flat", factory=FLAT_FACTORY, gen=gen)

    nlist, m, factory = plan_ivf(n, d, policy)
    kind = "ivfpq" if m else "ivfflat"
    rng = np.random.default_rng(policy.seed)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # only serves Hamming pre-filtering, which we do not use; slow
    if hasattr(ivf, "pq"):
        ivf.pq.cp.max_points_per_centroid = policy.pq_train_per_centroid
        ivf.pq.cp.niter = policy.pq_train_iter
    n_train = min(n, max(policy.min_train_per_list, policy.max_train_per_list) * nlist)
    _, train = source.fetch(np.sort(rng.choice(ids, n_train, replace=False)))
    index.train(train)
    del train

    # Tuning queries are stored vectors; their exact neighbours are gathered while streaming the adds.
    query_ids = np.sort(rng.choice(ids, min(policy.tune_queries, n), replace=False))
    query_ids, queries = source.fetch(query_ids)
    truth = _ExactTopK(queries, TUNE_K + 1)
    cache = _new_cache(cache_dir, modality, source.dtype, d) if kind == "ivfpq" else None
    for chunk_ids, x, raw in source.chunks(policy.chunk):
        index.add_with_ids(x, chunk_ids)
        truth.update(chunk_ids, x)
        if cache is not None:
            try:
                cache.append(chunk_ids, raw)
            except OSError as exc:
                log.warning("%s: no re-rank cache (%s); re-ranking reads the database", modality, exc)
                cache = None

    mi = ModalityIndex(modality=modality, dim=d, index=index, kind=kind, factory=factory, gen=gen,
                       nlist=nlist, m=m, trained_on=n, train_sample=n_train)
    mi.cache = cache
    mi.nprobe, mi.rerank, mi.tuned_recall = tune(mi, queries, query_ids, truth.ids(), source.fetch, policy)
    return mi


def _new_cache(directory: Path | None, modality: str, dtype: str, dim: int) -> VectorCache | None:
    if directory is None:  # a read-only store: nowhere to write it
        return None
    try:
        return VectorCache.create(directory, modality, dtype, dim)
    except OSError as exc:
        log.warning("%s: no re-rank cache (%s); re-ranking reads the database", modality, exc)
        return None


def tune(mi: ModalityIndex, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, fetch: Fetch,
         policy: IndexPolicy) -> tuple[int, int | None, float]:
    """(nprobe, rerank, recall): the smallest nprobe whose recall@10 (after re-ranking, for IVF-PQ) reaches
    the target, the query itself left out; if even all lists fall short (PQ codes too coarse), more
    candidates get re-ranked. Short of the target everywhere: the best setting tried, with a warning."""
    cached = _CachedFetch(fetch)
    neighbours = _drop_self(truth, query_ids, TUNE_K)
    nlist = mi.nlist or 1
    probes = sorted({min(2**i, nlist) for i in range(int(math.log2(nlist)) + 2)})
    goal = policy.target_recall + policy.tune_margin
    reranks: tuple[int | None, ...] = (None,) if mi.kind == "ivfflat" else (
        policy.rerank, policy.rerank * 3 // 2, 2 * policy.rerank, 3 * policy.rerank, 4 * policy.rerank)
    best: tuple[float, int, int | None] = (-1.0, nlist, reranks[-1])
    for rerank in reranks:
        previous = -1.0
        for nprobe in probes:
            found = mi._search_ivf(queries, TUNE_K + 1, cached, ids=None, nprobe=nprobe, rerank=rerank or 1)
            got = _drop_self(np.array([[i for i, _ in r] + [-1] * (TUNE_K + 1 - len(r)) for r in found]),
                             query_ids, TUNE_K)
            recall = float(np.mean([len(set(a) & set(b)) / TUNE_K for a, b in zip(got, neighbours)]))
            if recall >= goal:
                return nprobe, rerank, recall
            if recall > best[0]:
                best = (recall, nprobe, rerank)
            # Plateau: the PQ codes, not the lists, are the limit (exact lists improve up to nprobe = nlist).
            if rerank is not None and nprobe >= 64 and recall <= previous:
                break
            previous = recall
    recall, nprobe, rerank = best
    log.warning("%s index (%s, %d-d): recall@10 reaches only %.3f, short of the %.2f target, at nprobe %d%s; "
                "searches miss about %.0f%% of the true top 10. An exact index (IndexPolicy.flat_max above %d)%s "
                "would find them", mi.modality, mi.factory, mi.dim, recall, goal, nprobe,
                "" if rerank is None else f" with {rerank}x candidates re-ranked", 100 * (1 - recall), mi.ntotal,
                "" if rerank is None else " or finer codes (IndexPolicy.pq_bytes)")
    return nprobe, rerank, recall


def _drop_self(labels: np.ndarray, query_ids: np.ndarray, k: int) -> list[list[int]]:
    out = []
    for row, qid in zip(labels, query_ids):
        rest = [int(i) for i in row if i != qid and i >= 0]
        out.append(rest[:k])
    return out


class _ExactTopK:
    """Running exact top-k of a few queries over vectors streamed in chunks."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q, self.k = queries, k
        self.best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.best_i = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, ids: np.ndarray, x: np.ndarray) -> None:
        s = np.concatenate([self.best_s, self.q @ x.T], axis=1)
        i = np.concatenate([self.best_i, np.broadcast_to(ids, (len(self.q), len(ids)))], axis=1)
        top = np.argpartition(-s, self.k - 1, axis=1)[:, : self.k] if s.shape[1] > self.k else np.argsort(-s, axis=1)
        self.best_s = np.take_along_axis(s, top, axis=1)
        self.best_i = np.take_along_axis(i, top, axis=1)

    def ids(self) -> np.ndarray:
        order = np.argsort(-self.best_s, axis=1)
        return np.take_along_axis(self.best_i, order, axis=1)


class _CachedFetch:
    """Tuning re-reads mostly the same candidates for each nprobe: keep what was read."""

    def __init__(self, fetch: Fetch):
        self.fetch = fetch
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
        missing = np.array([i for i in ids.tolist() if i not in self.rows], dtype=np.int64)
        if len(missing):
            got_ids, got = self.fetch(missing)
            self.rows.update(zip(got_ids.tolist(), got))
        found = [i for i in ids.tolist() if i in self.rows]
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array(found, dtype=np.int64), np.stack([self.rows[i] for i in found])


def _hits(labels: np.ndarray, scores: np.ndarray) -> Results:
    """FAISS's (labels, scores) as results: no padding (-1), nothing non-finite (a NaN must never reach
    JSON output; only damaged stored bytes could make one)."""
    ok = (labels >= 0) & np.isfinite(scores)
    return [[(int(i), float(s)) for i, s in zip(li[m], si[m])] for li, si, m in zip(labels, scores, ok)]


def _rerank(queries: np.ndarray, labels: np.ndarray, k: int, fetch: Fetch, block: int = 16, *,
            fallback: Fetch | None = None) -> Results:
    """Exact cosine for each query's candidates, from the stored vectors: one read and one matrix product
    per block of queries (bounded memory for big batches; shared candidates are read once). Candidates
    whose score is not finite (a damaged row of the re-rank cache reads as NaN) are read again through
    `fallback` (the database); any still not finite are dropped."""
    results: Results = []
    for start in range(0, len(queries), block):
        q_block, l_block = queries[start: start + block], labels[start: start + block]
        wanted = np.unique(l_block[l_block >= 0])
        found_ids, vecs = fetch(wanted) if len(wanted) else (np.zeros(0, np.int64), None)
        if len(found_ids):
            scores = _scores(vecs, q_block)  # (found, queries in block)
            if not np.isfinite(scores).all():  # one pass over a few hundred scores: the healthy path's cost
                found_ids, scores = _rescore(found_ids, scores, q_block, fallback)
        if not len(found_ids):
            results += [[] for _ in range(len(q_block))]
            continue
        order = np.argsort(found_ids, kind="stable")
        sorted_ids = found_ids[order]
        for j, row in enumerate(l_block):
            cand = row[row >= 0]
            pos = np.minimum(np.searchsorted(sorted_ids, cand), len(sorted_ids) - 1)
            ok = sorted_ids[pos] == cand  # a candidate removed since the index search is dropped
            results.append(_top_k(cand[ok], scores[order[pos[ok]], j], k) if ok.any() else [])
    return results


def _rescore(ids: np.ndarray, scores: np.ndarray, queries: np.ndarray,
             fallback: Fetch | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `scores` with a non-finite entry scored again from `fallback`'s vectors; rows still
    non-finite (or no longer stored) are dropped."""
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    if fallback is not None:
        again_ids, again = fallback(ids[bad])
        if len(again_ids):
            row_of = {int(ids[r]): r for r in bad}  # only the damaged rows: few
            scores[[row_of[int(i)] for i in again_ids]] = _scores(again, queries)
    keep = np.isfinite(scores).all(axis=1)
    return ids[keep], scores[keep]


def _after_damage(cache: VectorCache, fetch: Fetch) -> Fetch:
    """The database's vectors for candidates the cache gave non-finite scores: the cache is damaged, so
    this process stops using it (warning once); `doctor` finds every damaged row and --repair remakes it."""
    def read(ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if cache.damaged is None:
            cache.damaged = "a row does not read back as a unit vector"
            log.warning("%s: damaged re-rank cache (%s); re-ranking reads the database until "
                        "`xsearch doctor --repair` rebuilds it", cache.data_path, cache.damaged)
        return fetch(ids, check_modality=check_modality)
    return read


def _cache_first(cache: VectorCache, fetch: Fetch) -> Fetch:
    """Candidates' vectors from the memory-mapped cache; any it lacks (normally none) from the database."""
    def read(ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if check_modality:  # caller-given ids may be of any modality: only the database knows
            return fetch(ids, check_modality=True)
        found, x, missing = cache.fetch(ids)
        if len(missing):
            more_ids, more = fetch(missing)
            if len(more_ids):
                found, x = np.concatenate([found, more_ids]), np.concatenate([x, more])
        return found, x
    return read


def _exact_over(queries: np.ndarray, k: int, ids: np.ndarray, fetch: Fetch, *,
                fallback: Fetch | None = None) -> Results:
    """Exact search restricted to a few ids: read their vectors (those of this modality) and score them all.
    A vector whose score is not finite is read again through `fallback`, else dropped (as in _rerank)."""
    found_ids, vecs = fetch(np.unique(np.asarray(ids, dtype=np.int64)), check_modality=True)
    if not len(found_ids):
        return [[] for _ in range(len(queries))]
    scores = _scores(vecs, queries)  # (found, queries)
    if not np.isfinite(scores).all():  # a damaged stored vector must not put a NaN into results
        found_ids, scores = _rescore(found_ids, scores, queries, fallback)
    return [_top_k(found_ids, scores[:, j], k) for j in range(len(queries))]


def _scores(vecs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(rows, queries) inner products; for one query in row blocks that each stay on the calling thread
    (_SCORE_BLOCK). Several queries make a matrix product, which gains from BLAS's threads."""
    rows = max(1, _SCORE_BLOCK // max(1, vecs.shape[1]))
    if len(queries) != 1 or len(vecs) <= rows:
        return vecs @ queries.T
    return np.concatenate([vecs[i: i + rows] @ queries.T for i in range(0, len(vecs), rows)])


@contextmanager
def _calling_thread_only(nq: int) -> Iterator[None]:
    """FAISS on this thread alone for a single query: its OpenMP team has nothing to share out (one query),
    and on busy cores the team's threads wait for each other (a 50k x 1024 exact search: 66 ms instead of
    160 ms measured under load). The thread count is per calling thread, so other threads keep theirs."""
    if nq != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    if before == 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _cache_only(cache: VectorCache) -> Fetch:
    """Vectors from the re-rank cache, which holds exactly its index's: an id it lacks is not in this
    modality's index (another modality's item, a failed or removed one) and is left out, with no database
    read to find that out."""
    def read(ids: np.ndarray, *, check_modality: bool = False) -> tuple[np.ndarray, np.ndarray]:
        found, x, _ = cache.fetch(ids)
        return found, x
    return read


_GPU_RES = None
_GPU_RES_LOCK = threading.Lock()


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _gpu_resources() -> object:
    global _GPU_RES
    with _GPU_RES_LOCK:
        if _GPU_RES is None:
            _GPU_RES = faiss.StandardGpuResources()
        return _GPU_RES
