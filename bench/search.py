"""Search benchmark: our Storage (flat or IVF-PQ + exact re-rank) against exact faiss.IndexFlatIP.

For each size N: clustered unit vectors are inserted through Storage.add_vectors in batches (build time
includes every index switch/retrain on the way), then held-out queries from the same distribution are
searched. Ground truth is exact flat search over the vectors as the store holds them (float16 round-trip),
so recall measures the index alone. Prints one JSON document.

    python bench/search.py --sizes 100000            # quick
    python bench/search.py                           # 100k and 1M (1M needs ~7 GB RAM)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.storage import IndexPolicy, Storage  # noqa: E402
from xsearch.storage import vectors as vec  # noqa: E402


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


def per_query_ms(fn, queries: np.ndarray) -> float:
    t = time.perf_counter()
    for q in queries:
        fn(q[None, :])
    return (time.perf_counter() - t) / len(queries) * 1e3


def bench_size(n: int, args: argparse.Namespace) -> dict:
    data = Clustered(args.dim, centers=max(200, n // 1000))
    workdir = Path(tempfile.mkdtemp(prefix=f"xsearch-bench-{n}-", dir=args.dir))
    flat = faiss.IndexFlatIP(args.dim)
    out: dict = {"n": n, "dim": args.dim}
    try:
        store = Storage(workdir, policy=IndexPolicy(flat_max=args.flat_max))
        insert_s = 0.0
        batch_s: list[float] = []
        store_ids: list[int] = []  # flat position -> store id
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            x = data.batch(min(args.batch, n - start), key=start)
            t = time.perf_counter()
            store_ids += store.add_vectors(x, modality="image",
                                           paths=[f"/bench/{i:08d}.jpg" for i in range(start, start + len(x))])
            batch_s.append(time.perf_counter() - t)
            insert_s += batch_s[-1]
            flat.add(vec.stored(x, "float16"))  # the exact baseline sees what the store holds
        gen_and_flat_s = time.perf_counter() - t0 - insert_s
        t = time.perf_counter()
        store.flush()
        flush_s = time.perf_counter() - t
        info = store.index_info()["image"]
        out.update(build_s=round(insert_s, 2), flush_s=round(flush_s, 2), data_and_baseline_s=round(gen_and_flat_s, 2))
        # median batch: database insert + incremental index add; the slowest ones include (re)training
        out["batch_s"] = {"size": args.batch, "median": round(float(np.median(batch_s)), 3),
                          "slowest": [round(b, 1) for b in sorted(batch_s)[-3:]]}
        out["index"] = {k: info[k] for k in ("type", "factory", "ntotal", "nlist", "m", "nprobe", "rerank",
                                            "trained_on", "tuned_recall", "rerank_cache_bytes")}

        queries = data.batch(args.queries, key=n + 1)  # held out: keys of inserted batches are < n
        t = time.perf_counter()
        _, truth = flat.search(queries, 10)
        flat_batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
        flat_single_ms = per_query_ms(lambda q: flat.search(q, 10), queries[: args.single_flat])

        # The first pass pages the re-ranked vectors in from the database file (cold); then warm timings.
        t = time.perf_counter()
        store.search("image", queries, 10)
        ours_cold_ms = (time.perf_counter() - t) / len(queries) * 1e3
        t = time.perf_counter()
        ours = store.search("image", queries, 10)
        ours_batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
        ours_single_ms = per_query_ms(lambda q: store.search("image", q, 10), queries[: args.single])

        truth_ids = np.asarray(store_ids, dtype=np.int64)[truth]
        recall = float(np.mean([len({i for i, _ in r} & set(t.tolist())) / 10 for r, t in zip(ours, truth_ids)]))
        store.close()  # checkpoints the WAL into the database file
        db_bytes = sum(p.stat().st_size for p in workdir.glob("xsearch.db*"))
        index_dir_bytes = sum(p.stat().st_size for p in (workdir / "index").iterdir())
        out.update(
            recall_at_10=round(recall, 4),
            latency_ms={
                "ours_single": round(ours_single_ms, 3), "flat_single": round(flat_single_ms, 3),
                "ours_batched": round(ours_batched_ms, 3), "flat_batched": round(flat_batched_ms, 3),
                "ours_batched_first_pass": round(ours_cold_ms, 3),
            },
            speedup_vs_flat={"single": round(flat_single_ms / ours_single_ms, 2),
                             "batched": round(flat_batched_ms / ours_batched_ms, 2)},
            index_bytes_per_vector=round(info["bytes"] / info["ntotal"], 1),
            store_bytes_per_item=round(db_bytes / n, 1),  # the database alone
            index_dir_bytes_per_item=round(index_dir_bytes / n, 1),  # index + re-rank cache (derived)
            queries={"batched": args.queries, "single": args.single, "flat_single": args.single_flat},
        )
    finally:
        del flat
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=10_000, help="vectors per add_vectors call")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (batched search and recall)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time (ours)")
    ap.add_argument("--single-flat", type=int, default=20, help="queries timed one at a time (flat)")
    ap.add_argument("--flat-max", type=int, default=IndexPolicy().flat_max, help="exact index up to this size")
    ap.add_argument("--dir", default=None, help="where to create the temporary stores")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    args = ap.parse_args()
    results = {
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "gpus": faiss.get_num_gpus(),
                    "python": platform.python_version(), "faiss": faiss.__version__},
        "runs": [],
    }
    for n in (int(s) for s in args.sizes.split(",") if s):
        results["runs"].append(bench_size(n, args))
        print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
