"""Search latency as users get it: the Python API, a real `xsearch serve`, and the storage layer beside them.

For each size N (default 100k and 1M), in one run:

* build: N clustered 1024-d unit vectors through ``Storage.add_vectors`` in 10k batches (build time
  includes every index switch and retraining on the way), named ``/bench/fNN/ITEM.jpg``: 100 folders,
  items dealt round-robin, so ``/bench/f00`` holds 1% of them, spread over the whole vector space;
* exact baseline: numpy over the vectors as the store holds them (float16 -> float32), one query at a
  time (``X @ q`` and a top-10 partition); the same arithmetic, batched, gives the ground truth;
* timed one query at a time, warm (index loaded, server answering), the paths interleaved query by query
  (a burst of load on this shared machine hits them all alike), each path with queries of its own (a
  query never finds its candidates in the CPU caches because another path just read them):
  - ``storage``: ``Storage.search("image", q, 10)``, the layer the old version of this bench measured;
  - ``storage_folder``: the same restricted to the folder's ids (``ids=``), given to it ready-made;
  - ``api``: ``Store.search(vector=q, target="image", k=10)``, what the Python API runs;
  - ``api_all``: the same with ``target="all"`` (the default; targets chosen per query);
  - ``api_folder``: ``Store.search(vector=q, target="image", k=10, folder="/bench/f00")``;
  - ``api_like``: ``Store.search(like=PATH, target="image", k=10)``, a stored item's vector;
  - ``http_like``, ``http_vector``, ``http_like_folder``: ``POST /api/search`` to a real ``xsearch serve``
    process on loopback (its own interpreter), one keep-alive client, after warm-up requests;
* recall@10 of ``api`` and ``api_folder`` against the exact top-10 (of all items / of the folder's).

Prints one JSON document (progress on stderr); figures are medians unless named otherwise.

    python bench/search.py --sizes 100000            # ~5 min here
    python bench/search.py                           # 100k and 1M (1M: ~12 GB RAM, 10+ min)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from common import log, loadavg  # noqa: E402

import xsearch  # noqa: E402
from xsearch.storage import IndexPolicy, Storage  # noqa: E402
from xsearch.storage import vectors as vec  # noqa: E402

FOLDERS = 100  # /bench/f00 .. /bench/f99: f00 holds 1% of the items
TARGETS = {  # bench/README.md's targets, checked at 1M
    "api_vs_storage_max": 1.3, "speedup_vs_exact_min": 50.0, "recall_min": 0.95,
    "folder_ms_max": 10.0, "http_like_p50_ms_max": 15.0,
}



class Clustered:
    """Unit vectors around fixed centres, cosine ~0.7 to their centre; batch i is reproducible on its own."""

    def __init__(self, dim: int, centers: int, seed: int = 0):
        c = np.random.default_rng(seed).standard_normal((centers, dim), dtype=np.float32)
        self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.dim, self.seed = dim, seed

    def batch(self, n: int, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, key])
        x = self.centers[rng.integers(0, len(self.centers), n)]
        x += rng.standard_normal((n, self.dim), dtype=np.float32) / np.float32(math.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def path_of(i: int) -> str:
    return f"/bench/f{i % FOLDERS:02d}/{i:08d}.jpg"


def exact_top10(x: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None, chunk: int = 65_536) -> np.ndarray:
    """Row numbers of each query's exact top 10 (among `rows` when given), by chunked products."""
    rows = np.arange(len(x)) if rows is None else rows
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for start in range(0, len(rows), chunk):
        r = rows[start: start + chunk]
        s = np.concatenate([best_s, queries @ x[r].T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(r, (len(queries), len(r)))], axis=1)
        top = np.argpartition(-s, 9, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return np.take_along_axis(best_i, np.argsort(-best_s, axis=1), 1)


def exact_single(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What exact search costs per query: every stored vector scored, the top 10 picked."""
    s = x @ q
    top = np.argpartition(-s, 9)[:10]
    return top[np.argsort(-s[top])]


def stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.median(ms)), 3), "mean": round(float(ms.mean()), 3),
            "p95": round(float(np.percentile(ms, 95)), 3), "n": len(ms)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(store_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real `xsearch serve` process on loopback over the store; returns it and its URL once it answers."""
    port = free_port()
    env = {**os.environ, "XSEARCH_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xsearch.cli.main", "serve", "--store", str(store_dir),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xsearch serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/api/status", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("xsearch serve did not answer within 120 s")


def bench_size(n: int, args: argparse.Namespace) -> dict:
    data = Clustered(args.dim, centers=max(200, n // 1000))
    workdir = Path(tempfile.mkdtemp(prefix=f"xsearch-bench-{n}-", dir=args.dir))
    policy = IndexPolicy(flat_max=args.flat_max)
    out: dict = {"n": n, "dim": args.dim, "loadavg_at_start": loadavg()}
    proc = None
    try:
        # -- build -------------------------------------------------------------------------------------------
        x = np.empty((n, args.dim), np.float32)  # the vectors as the store holds them (the exact baseline's)
        store = Storage(workdir, policy=policy)
        ids = np.empty(n, np.int64)
        batch_s: list[float] = []
        for start in range(0, n, args.batch):
            b = data.batch(min(args.batch, n - start), key=start)
            t = time.perf_counter()
            ids[start: start + len(b)] = store.add_vectors(b, modality="image",
                                                           paths=[path_of(i) for i in range(start, start + len(b))])
            batch_s.append(time.perf_counter() - t)
            x[start: start + len(b)] = vec.stored(b, "float16")
            if (start // args.batch) % 10 == 9:
                log(f"  {start + len(b):,} vectors in {sum(batch_s):.0f} s")
        t = time.perf_counter()
        store.close()  # saves the index and its re-rank cache, checkpoints the WAL
        out["build_s"] = round(sum(batch_s), 1)
        out["close_s"] = round(time.perf_counter() - t, 1)
        out["batch_s"] = {"size": args.batch, "median": round(float(np.median(batch_s)), 3),
                          "slowest": [round(b, 1) for b in sorted(batch_s)[-3:]]}

        # -- open as users do ------------------------------------------------------------------------------------
        api = xsearch.open(workdir, read_only=True)
        api.storage.policy = policy
        st = api.storage
        t = time.perf_counter()
        st.load_indexes()
        out["index_load_s"] = round(time.perf_counter() - t, 2)
        info = st.index_info()["image"]
        out["index"] = {k: info[k] for k in ("type", "factory", "ntotal", "nlist", "m", "nprobe", "rerank",
                                             "trained_on", "tuned_recall", "rerank_cache_bytes")}
        folder_rows = np.arange(0, n, FOLDERS)
        folder_ids = np.sort(ids[folder_rows])
        names = ("storage", "storage_folder", "api", "api_all", "api_folder", "api_like", "http_like", "http_vector",
                 "http_like_folder", "exact_numpy")
        nq = args.queries
        held_out = data.batch(nq * len(names), key=n + 1)  # held out: keys of inserted batches are < n
        queries = {name: held_out[j * nq: (j + 1) * nq] for j, name in enumerate(names)}
        like_rows = np.random.default_rng(n).choice(n, nq * len(names), replace=False)
        likes = {name: like_rows[j * nq: (j + 1) * nq] for j, name in enumerate(names)}

        log(f"n={n:,}: ground truth for {2 * nq} queries")
        truth = ids[exact_top10(x, queries["api"])]
        truth_folder = ids[exact_top10(x, queries["api_folder"], folder_rows)]

        proc, url = start_serve(workdir)
        client = httpx.Client(base_url=url, timeout=120)

        def http(body: dict) -> None:
            r = client.post("/api/search", json=body)
            r.raise_for_status()

        def like_id(name: str, i: int) -> int:
            return int(ids[likes[name][i]])

        paths = {
            "storage": lambda i, q: st.search("image", q[None, :], 10),
            "storage_folder": lambda i, q: st.search("image", q[None, :], 10, ids=folder_ids),
            "api": lambda i, q: api.search(vector=q, target="image", k=10),
            "api_all": lambda i, q: api.search(vector=q, k=10),
            "api_folder": lambda i, q: api.search(vector=q, target="image", k=10, folder="/bench/f00"),
            "api_like": lambda i, q: api.search(like=path_of(int(likes["api_like"][i])), target="image", k=10),
            "http_like": lambda i, q: http({"like": like_id("http_like", i), "target": "image", "k": 10}),
            "http_vector": lambda i, q: http({"vector": q.tolist(), "target": "image", "k": 10}),
            "http_like_folder": lambda i, q: http({"like": like_id("http_like_folder", i), "target": "image", "k": 10,
                                                   "filters": {"folder": "/bench/f00"}}),
        }
        log(f"n={n:,}: warming up (index load in the server, pages of the re-rank cache)")
        warm = data.batch(20, key=n + 2)
        for i, q in enumerate(warm):
            for fn in paths.values():
                fn(i, q)
        times: dict[str, list[float]] = {k: [] for k in paths}
        results: dict[str, list] = {"api": [], "api_folder": []}
        log(f"n={n:,}: {nq} queries x {len(paths)} paths, interleaved")
        for i in range(nq):
            for name, fn in paths.items():
                q = queries[name][i]
                t = time.perf_counter()
                got = fn(i, q)
                times[name].append(time.perf_counter() - t)
                if name in results:
                    results[name].append([h.id for h in got])
        exact_s = []
        for q in queries["exact_numpy"][: args.single_exact]:
            t = time.perf_counter()
            exact_single(x, q)
            exact_s.append(time.perf_counter() - t)

        def recall(found: list[list[int]], want: np.ndarray) -> float:
            return round(float(np.mean([len(set(f) & set(w.tolist())) / 10 for f, w in zip(found, want)])), 4)

        lat = {k: stats(v) for k, v in times.items()}
        lat["exact_numpy"] = stats(exact_s)
        out.update(
            loadavg_at_end=loadavg(),
            latency_ms=lat,
            recall_at_10={"api": recall(results["api"], truth), "api_folder": recall(results["api_folder"], truth_folder)},
            folder={"path": "/bench/f00", "items": len(folder_ids), "share": len(folder_ids) / n},
            ratios={  # on medians
                "api_vs_storage": round(lat["api"]["p50"] / lat["storage"]["p50"], 3),
                "api_folder_vs_storage_folder": round(lat["api_folder"]["p50"] / lat["storage_folder"]["p50"], 3),
                "exact_vs_api": round(lat["exact_numpy"]["p50"] / lat["api"]["p50"], 1),
            },
            queries={"timed": args.queries, "exact_single": args.single_exact},
        )
        out["targets_at_this_size"] = {
            "api_vs_storage<=1.3": out["ratios"]["api_vs_storage"] <= TARGETS["api_vs_storage_max"],
            "exact_vs_api>=50": out["ratios"]["exact_vs_api"] >= TARGETS["speedup_vs_exact_min"],
            "recall>=0.95": out["recall_at_10"]["api"] >= TARGETS["recall_min"],
            "api_folder_p50<10ms": lat["api_folder"]["p50"] < TARGETS["folder_ms_max"],
            "http_like_p50<15ms": lat["http_like"]["p50"] < TARGETS["http_like_p50_ms_max"],
        }
        client.close()
        api.close()
        out["store_bytes_per_item"] = round(sum(p.stat().st_size for p in workdir.glob("xsearch.db*")) / n, 1)
        out["index_dir_bytes_per_item"] = round(sum(p.stat().st_size for p in (workdir / "index").iterdir()) / n, 1)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=10_000, help="vectors per add_vectors call")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries, each timed on every path")
    ap.add_argument("--single-exact", type=int, default=10, help="queries timed with exact numpy search")
    ap.add_argument("--flat-max", type=int, default=IndexPolicy().flat_max, help="exact index up to this size")
    ap.add_argument("--dir", default=None, help="where to create the temporary stores")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    args = ap.parse_args()
    results = {
        "bench": "search",
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "gpus": faiss.get_num_gpus(),
                    "python": platform.python_version(), "faiss": faiss.__version__, "platform": platform.platform()},
        "targets_at_1M": TARGETS,
        "runs": [],
    }
    for n in (int(s) for s in args.sizes.split(",") if s):
        results["runs"].append(bench_size(n, args))
        print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
