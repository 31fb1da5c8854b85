"""Near-duplicate grouping benchmark: Store.duplicates over N stored 1024-d image vectors.

The store holds clustered unit vectors (as bench/search.py makes them) plus planted near-duplicates: 1 in
200 vectors gets a copy at cosine ~0.98 (a re-encode or resize moves a real embedding about that much).
Each phase runs in its own child process started by this small parent, so each peak RSS is that
phase's own (``ru_maxrss`` of the child, see bench/README.md). Prints one JSON document.

    python bench/dups.py --sizes 100000
    python bench/dups.py --sizes 100000,1000000 --timeout 900
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANT_EVERY = 200
DUP_COS = 0.98


def build(workdir: str, n: int, dim: int, batch: int) -> dict:
    import math

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from xsearch.storage import IndexPolicy, Storage

    rng0 = np.random.default_rng(0)
    centers = rng0.standard_normal((max(200, n // 1000), dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    t0 = time.perf_counter()
    planted = 0
    # Filled behind a flat index that is never saved: the run phase builds the store's real index (IVF-PQ
    # above 50,000 vectors) from the database once, outside the timing, instead of every retrain on the way.
    store = Storage(workdir, policy=IndexPolicy(flat_max=10**12))
    try:
        done = 0
        while done < n:
            rng = np.random.default_rng([1, done])
            m = min(batch, n - done)
            base = m - m // PLANT_EVERY
            x = centers[rng.integers(0, len(centers), base)]
            x = x + rng.standard_normal((base, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            src = x[: m - base]
            noise = rng.standard_normal(src.shape, dtype=np.float32)
            noise -= (noise * src).sum(1, keepdims=True) * src  # orthogonal to the source
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            dup = DUP_COS * src + math.sqrt(1 - DUP_COS**2) * noise
            x = np.concatenate([x, dup])
            planted += len(dup)
            store.add_vectors(x, modality="image", paths=[f"/bench/{i:08d}.jpg" for i in range(done, done + m)])
            done += m
    finally:
        store.engine.dispose()  # no flush: the flat index is not kept
    shutil.rmtree(Path(workdir) / "index", ignore_errors=True)
    return {"build_s": round(time.perf_counter() - t0, 1), "planted_pairs": planted}


def run(workdir: str, threshold: float) -> dict:
    import resource

    sys.path.insert(0, str(ROOT))
    import xsearch

    with xsearch.open(workdir, create=False) as store:
        t = time.perf_counter()
        store.storage.load_indexes()  # builds and saves the IVF index: not part of the grouping
        index_s = time.perf_counter() - t
        info = store.storage.index_info()["image"]
        before_mb = _rss_mb("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        groups = store.duplicates(target="image", threshold=threshold)
        seconds = time.perf_counter() - t
        grouping_peak_mb = _rss_mb("VmHWM")
    sizes = [len(g.members) for g in groups]  # planted pairs are the only vectors this close
    return {"seconds": round(seconds, 1), "index_build_s": round(index_s, 1), "groups": len(sizes), "members": sum(sizes),
            "largest_group": max(sizes, default=0), "index": info["factory"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            # the grouping alone: peak RSS while it ran, above the RSS it started from (index loaded)
            "grouping_rss_mb": {"before": before_mb, "peak": grouping_peak_mb, "added": grouping_peak_mb - before_mb}}


def _rss_mb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return -1


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the next peak is the grouping's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(args: list[str], timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed to each phase")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--phase", choices=["build", "run"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "build":
        print(json.dumps(build(a.workdir, a.n, a.dim, a.batch)))
        return
    if a.phase == "run":
        print(json.dumps(run(a.workdir, a.threshold)))
        return
    out = {"machine": f"{os.cpu_count()} cores", "threshold": a.threshold, "dim": a.dim, "sizes": []}
    for n in [int(s) for s in a.sizes.split(",")]:
        workdir = tempfile.mkdtemp(prefix=f"xsearch-dups-{n}-", dir=a.dir)
        res: dict = {"n": n}
        try:
            res.update(child(["--phase", "build", "--workdir", workdir, "--n", str(n), "--dim", str(a.dim),
                              "--batch", str(a.batch)], a.timeout))
            res["load_before"] = round(os.getloadavg()[0], 2)
            res.update(child(["--phase", "run", "--workdir", workdir, "--threshold", str(a.threshold)], a.timeout))
            res["load_after"] = round(os.getloadavg()[0], 2)
            res["found_planted_share"] = round(min(res["members"] / (2 * res["planted_pairs"]), 1.0), 4)
        except subprocess.TimeoutExpired:
            res["error"] = f"a phase ran past {a.timeout:.0f} s and was stopped"
        except RuntimeError as e:
            res["error"] = str(e)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        out["sizes"].append(res)
        print(json.dumps(res), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
