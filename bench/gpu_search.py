"""Search on a GPU: exact top-10 over 1M clustered 1024-d vectors held on the GPU in float16.

    python bench/gpu_search.py [--n 1000000] [--device cuda]

Baseline, same run: exact faiss.IndexFlatIP on the machine's CPU cores (float32), the figure
bench/search.py compares against. Ours: the vectors as the store holds them (float16) in GPU
memory, one matrix product and a top-k per query batch (torch), results copied back to the host.
If this faiss build has GPU support, faiss's GpuIndexFlatIP is timed too. Recall@10 of the GPU
search is measured against the CPU's exact answer. Prints one JSON object.

`--device cpu --n 20000` runs the same code without a GPU (to check the script, not for figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import Clustered  # noqa: E402

from xsearch.storage import vectors as vec  # noqa: E402


def log(msg: str) -> None:
    print(f"[gpu_search {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_search(x: torch.Tensor, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids for each query row: one product over all vectors, then top-k on the device."""
    qt = torch.from_numpy(q).to(x.device, x.dtype, non_blocking=True)
    return torch.topk(qt @ x.T, k, dim=1).indices.cpu().numpy()


def per_query_ms(fn, queries: np.ndarray) -> float:
    t = time.perf_counter()
    for q in queries:
        fn(q[None, :])
    return (time.perf_counter() - t) / len(queries) * 1e3


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (batched search and recall)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time on the GPU")
    ap.add_argument("--single-flat", type=int, default=20, help="queries timed one at a time, CPU flat")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch; --device cpu checks the script without one")
    device = torch.device(args.device)
    k = 10

    data = Clustered(args.dim, centers=max(200, args.n // 1000))
    flat = faiss.IndexFlatIP(args.dim)
    x_dev = torch.empty((args.n, args.dim), dtype=torch.float16 if device.type == "cuda" else torch.float32,
                        device=device)
    t = time.perf_counter()
    for start in range(0, args.n, 100_000):
        x = vec.stored(data.batch(min(100_000, args.n - start), key=start), "float16")
        flat.add(x)
        x_dev[start: start + len(x)] = torch.from_numpy(x).to(device, x_dev.dtype)
    sync(device)
    log(f"{args.n} vectors generated and loaded in {time.perf_counter() - t:.1f} s")
    queries = data.batch(args.queries, key=args.n + 1)

    t = time.perf_counter()
    _, truth = flat.search(queries, k)
    flat_batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
    flat_single_ms = per_query_ms(lambda q: flat.search(q, k), queries[: args.single_flat])
    log(f"CPU flat: {flat_single_ms:.2f} ms single, {flat_batched_ms:.3f} ms/query batched")

    torch_search(x_dev, queries[:8], k)  # warm-up: cuBLAS handles, kernels
    sync(device)
    t = time.perf_counter()
    found = np.concatenate([torch_search(x_dev, queries[i: i + 250], k) for i in range(0, len(queries), 250)])
    gpu_batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
    gpu_single_ms = per_query_ms(lambda q: torch_search(x_dev, q, k), queries[: args.single])
    log(f"torch {device}: {gpu_single_ms:.3f} ms single, {gpu_batched_ms:.4f} ms/query batched")

    out: dict = {
        "n": args.n,
        "dim": args.dim,
        "device": str(device),
        "machine": {
            "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        },
        "recall_at_10_vs_cpu_exact": {"torch": round(recall(found, truth), 4)},
        "latency_ms": {
            "cpu_flat_single": round(flat_single_ms, 3), "cpu_flat_batched": round(flat_batched_ms, 4),
            "torch_single": round(gpu_single_ms, 3), "torch_batched": round(gpu_batched_ms, 4),
        },
        "speedup_vs_cpu_flat": {"torch_single": round(flat_single_ms / gpu_single_ms, 1),
                                "torch_batched": round(flat_batched_ms / gpu_batched_ms, 1)},
        "gpu_bytes_per_vector": x_dev.element_size() * args.dim,
        "faiss_gpu": None,
    }
    del x_dev
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        gpu_flat = faiss.index_cpu_to_gpu(res, 0, flat)
        gpu_flat.search(queries[:8], k)
        t = time.perf_counter()
        _, f_found = gpu_flat.search(queries, k)
        f_batched = (time.perf_counter() - t) / len(queries) * 1e3
        f_single = per_query_ms(lambda q: gpu_flat.search(q, k), queries[: args.single])
        out["faiss_gpu"] = {"index": "GpuIndexFlatIP", "single_ms": round(f_single, 3),
                            "batched_ms": round(f_batched, 4), "recall_at_10": round(recall(f_found, truth), 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
