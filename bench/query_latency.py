"""Query start-up: a text query as a fresh `xsearch query` process, with the HUGE architecture.

    python bench/query_latency.py [--quick] [--repeats 3] [--items 2000] [--text "a dog on the beach"]

Prints one JSON object on stdout (progress on stderr).

* Model: ``bench/common.py``'s HUGE random-weight model directory (config.json +
  checkpoint.pth, 4.8 GB, written once into ``$XSEARCH_BENCH_CACHE``, default
  /tmp/xsearch-bench-cache), converted to the per-tower safetensors cache once
  before any timing (``weights.ensure_converted``), as after a first use.
* Store: ``--items`` random unit vectors added as images (``Store.add_vectors``),
  recorded as built with that model.
* Ours: ``python -m xsearch.cli.main query --text ... --store S --model DIR --json``.
* Baseline, what the original does: a fresh process that builds the whole model
  (all six towers, randomly initialised, as ``imagebind_huge()`` does), ``torch.load``s
  the full ``checkpoint.pth``, ``load_state_dict``, embeds the text in float32 and
  runs the same search, printing the same JSON.

Each figure is one process from spawn to exit (the results are printed last) and
its peak RSS (``ru_maxrss`` of that child, read by a fresh helper process: see
``common.run_measured``). Both run with the files in the page cache (each is run
once untimed first); ``--cold`` adds one run of each after asking the kernel to
drop those files' cached pages (posix_fadvise, best effort). Targets: time <= 25%
of the baseline's, peak RSS <= 1.6 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import log, loadavg  # noqa: E402

TARGET_TIME_RATIO = 0.25
TARGET_PEAK_RSS_MB = 1.6 * 1024

# The original way, in a fresh process: argv = model_dir, store, text, k.
BASELINE = r"""
import json, os, sys
import torch
from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
model_dir, store_path, text, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = ImageBindModel(ImageBindConfig.from_json(os.path.join(model_dir, "config.json")))  # six towers, random init
model.load_state_dict(torch.load(os.path.join(model_dir, "checkpoint.pth"), map_location="cpu"))
model.eval()
from xsearch.api import Store
from xsearch.engine.embedder import Embedder
store = Store(store_path, model=model_dir, create=False, read_only=True)  # as `xsearch query` opens it
store._embedder = Embedder(model, device="cpu", dtype="float32", model_id=store.model_id)
hits = store.search(text=text, k=k)
sys.stdout.write(json.dumps({"results": [h.to_dict() for h in hits]}, default=str) + "\n")
"""


def make_store(path: Path, model_dir: Path, items: int) -> str:
    import numpy as np

    from xsearch.api import Store

    rng = np.random.default_rng(0)
    with Store(path, model=str(model_dir)) as store:
        v = rng.standard_normal((items, 1024)).astype(np.float32)
        store.add_vectors(v, modality="image", paths=[f"/media/photo_{i:06d}.jpg" for i in range(items)])
        store.storage.set_meta("model", store.model_id)
        store.storage.set_meta("model_name", store.model_name)
        return store.model_id


def results_of(run: dict[str, Any], k: int) -> list[str]:
    if run["rc"] != 0:
        raise RuntimeError(f"query process failed ({run['rc']}): {run['stderr_tail']}")
    paths = [r["path"] for r in json.loads(run["stdout"])["results"]]
    if len(paths) != k:
        raise RuntimeError(f"expected {k} results, got {len(paths)}")
    return paths


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_all": walls,
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_all": [r["peak_rss_mb"] for r in runs],
        "cpu_s_median": round(statistics.median(r["user_s"] + r["sys_s"] for r in runs), 2),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one timed run of each (default 3 of ours, 2 of the baseline)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of ours (median kept)")
    p.add_argument("--baseline-repeats", type=int, default=None, help="timed runs of the baseline")
    p.add_argument("--items", type=int, default=2000, help="vectors in the store (default 2000)")
    p.add_argument("--text", default="a dog running on the beach", help="the query text")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--also-src", default=None, metavar="DIR",
                   help="also time `xsearch query` run from another source tree (e.g. a checkout with proposed fixes)")
    p.add_argument("--cold", action="store_true", help="also one run of each with the model files dropped from the page cache")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.baseline_repeats = a.baseline_repeats or (1 if a.quick else 2)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    home = common.use_bench_home()
    t0 = time.perf_counter()
    load0 = loadavg()
    model_dir = common.huge_model_dir()
    cache, convert_s = common.ensure_huge_converted(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="xsearch-bench-query-"))
    store = tmp / "store"
    model_id = make_store(store, model_dir, args.items)
    env = common.child_env(XSEARCH_HOME=str(home), XSEARCH_OFFLINE="1")
    ours_cmd = [sys.executable, "-m", "xsearch.cli.main", "query", "--text", args.text, "--store", str(store),
                "--model", str(model_dir), "--json", "-k", str(args.k)]
    base_cmd = [sys.executable, "-c", BASELINE, str(model_dir), str(store), args.text, str(args.k)]
    alt = Path(args.also_src).resolve() if args.also_src else None
    alt_env = dict(env, PYTHONPATH=os.pathsep.join([str(alt), env.get("PYTHONPATH", "")])) if alt else None

    log("warming the page cache: one untimed run of each")
    warm_ours = common.run_measured(ours_cmd, env=env, cwd=str(common.ROOT))
    want = results_of(warm_ours, args.k)
    warm_base = common.run_measured(base_cmd, env=env, cwd=str(common.ROOT))
    got = results_of(warm_base, args.k)

    if alt:
        results_of(common.run_measured(ours_cmd, env=alt_env, cwd=str(alt)), args.k)

    ours, base, other = [], [], []
    for i in range(max(args.repeats, args.baseline_repeats)):  # interleaved: both see the same machine load
        if i < args.repeats:
            ours.append(common.run_measured(ours_cmd, env=env, cwd=str(common.ROOT)))
            results_of(ours[-1], args.k)
            log(f"ours: {ours[-1]['wall_s']:.2f} s, peak RSS {ours[-1]['peak_rss_mb']:.0f} MB (load {loadavg()})")
            if alt:
                other.append(common.run_measured(ours_cmd, env=alt_env, cwd=str(alt)))
                results_of(other[-1], args.k)
                log(f"ours from {alt}: {other[-1]['wall_s']:.2f} s, peak RSS {other[-1]['peak_rss_mb']:.0f} MB")
        if i < args.baseline_repeats:
            base.append(common.run_measured(base_cmd, env=env, cwd=str(common.ROOT)))
            results_of(base[-1], args.k)
            log(f"baseline: {base[-1]['wall_s']:.2f} s, peak RSS {base[-1]['peak_rss_mb']:.0f} MB (load {loadavg()})")
    o, b = summary(ours), summary(base)
    ratio = round(o["wall_s_median"] / b["wall_s_median"], 3)
    report: dict[str, Any] = {
        "bench": "query_latency",
        "date": time.strftime("%Y-%m-%d"),
        "environment": common.environment(),
        "model": f"imagebind_huge architecture, random weights ({model_id})",
        "store_items": args.items,
        "text": args.text,
        "k": args.k,
        "checkpoint_convert_s": convert_s,
        "tower_files_mb": {p.stem: round(p.stat().st_size / 2**20) for p in sorted(cache.glob("*.safetensors"))},
        "baseline": {"what": "fresh process: build all six towers, torch.load the full .pth, load_state_dict, "
                             "float32 text embedding, same search", **b},
        "ours": {"what": "fresh `xsearch query --text ... --json` process", **o},
        # bf16 (ours) vs float32 (baseline) text embeddings over random store vectors with close scores:
        # the orders may differ a little; most of the top k must agree.
        "top_k_overlap": len(set(want) & set(got)),
        "time_ratio": ratio,
        "targets": {"time_ratio": f"<= {TARGET_TIME_RATIO}", "peak_rss_mb": f"<= {TARGET_PEAK_RSS_MB:.0f}"},
        "pass_time": ratio <= TARGET_TIME_RATIO,
        "pass_rss": o["peak_rss_mb_max"] <= TARGET_PEAK_RSS_MB,
    }
    if alt:
        a = summary(other)
        report["ours_from_other_source"] = {"source": str(alt), **a,
                                            "time_ratio": round(a["wall_s_median"] / b["wall_s_median"], 3)}
    if args.cold:
        files = [model_dir / "checkpoint.pth", *cache.glob("*.safetensors")]
        cold = {}
        for name, cmd in (("ours", ours_cmd), ("baseline", base_cmd)):
            dropped = common.drop_file_cache(files)
            r = common.run_measured(cmd, env=env, cwd=str(common.ROOT))
            results_of(r, args.k)
            cold[name] = {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "cache_dropped": dropped}
            log(f"cold {name}: {r['wall_s']:.2f} s")
        cold["time_ratio"] = round(cold["ours"]["wall_s"] / cold["baseline"]["wall_s"], 3)
        report["cold_page_cache"] = cold
    report["pass"] = report["pass_time"] and report["pass_rss"]
    report["loadavg_before_after"] = [load0, loadavg()]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
