"""The Python API's query latency of whichever xsearch `import xsearch` finds, on one store: run it with
the version before a change and with the version after, on the same store, back to back.

    git archive f60d2f5 xsearch | tar -x -C /tmp/before         # the version to compare with
    PYTHONPATH=/tmp/before python bench/api_compare.py /tmp/s 100000   # builds the store, then times
    PYTHONPATH=.           python bench/api_compare.py /tmp/s 100000   # opens (migrates) it, times

The store holds N clustered 1024-d vectors named /bench/fNN/ITEM.jpg (100 folders, so /bench/f00 holds
1%), built on the first run. Prints one JSON line: median ms per query of each kind (40 queries each).
This file imports nothing from the repository: PYTHONPATH chooses the version measured.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

import xsearch
from xsearch.storage import Storage


def clustered(dim: int, centers: int, n: int, key: int, seed: int = 0) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((centers, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, key])
    x = c[rng.integers(0, centers, n)] + rng.standard_normal((n, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    where, n = sys.argv[1], int(sys.argv[2])
    centers = max(200, n // 1000)
    if not os.path.exists(os.path.join(where, "xsearch.db")):
        s = Storage(where)
        for start in range(0, n, 10_000):
            s.add_vectors(clustered(1024, centers, 10_000, start), modality="image",
                          paths=[f"/bench/f{i % 100:02d}/{i:08d}.jpg" for i in range(start, start + 10_000)])
        s.close()
    api = xsearch.open(where)  # writable: a newer version migrates the store
    q = clustered(1024, centers, 400, n + 1)
    api.search(vector=q[0], target="image", k=10)  # loads the index
    cases = {
        "api vector, target image": lambda v: api.search(vector=v, target="image", k=10),
        "api vector, target all": lambda v: api.search(vector=v, k=10),
        "api like": lambda v: api.search(like="/bench/f03/00000103.jpg", target="image", k=10),
        "api folder 1%": lambda v: api.search(vector=v, target="image", k=10, folder="/bench/f00"),
        "api glob *5.jpg": lambda v: api.search(vector=v, target="image", k=10, glob="*5.jpg"),
        "storage": lambda v: api.storage.search("image", v[None], 10),
    }
    out: dict = {"xsearch": os.path.dirname(xsearch.__file__), "loadavg": round(os.getloadavg()[0], 2)}
    for j, (name, fn) in enumerate(cases.items()):
        times = []
        for v in q[j * 40: j * 40 + 40]:
            t = time.perf_counter()
            fn(v)
            times.append(time.perf_counter() - t)
        out[name] = round(float(np.median(times)) * 1e3, 2)
    api.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
