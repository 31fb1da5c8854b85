"""Ingestion: does `xsearch index` keep the model busy, how fast is the pipeline itself, and is a re-run cheap?

    python bench/ingest.py [--quick] [--parts huge,tiny,rerun,agreement] [--photos 24 --audio 8]
                           [--tiny-photos 600] [--small-files 10000] [--batch-size 8] [--workers N]

Prints one JSON object on stdout (progress on stderr). Four parts:

* ``huge`` (figure A): the HUGE ImageBind architecture with random weights
  (``bench/common.py`` writes ``config.json`` + ``checkpoint.pth`` once into
  ``$XSEARCH_BENCH_CACHE``, default /tmp/xsearch-bench-cache, 4.8 GB, and its
  per-tower safetensors conversion, 4.8 GB more) over 1024x768 JPEG photos and
  5 s WAV files. Baseline: the model's pure throughput, ``Embedder.embed_tensors``
  on the same items pre-decoded, in the same batches (size, dtype, order). Ours:
  ``Store.index`` on a fresh store with the same (already loaded and warmed)
  embedder. Target: ours / baseline >= 0.9 in files/s, as the median over
  back-to-back (baseline, ours) pairs. Also reported: the model's busy share of
  each index run (time in ``embed_tensors`` / run time, immune to machine load
  between the two measurements), and a cold ``xsearch index`` process
  (interpreter start and model load included).
* ``tiny`` (figure B): the pipeline's own ceiling: the fixture model
  (tests/data/golden/imagebind/tiny) over 1024x768 photos, in-process
  ``Store.index``. Target >= 150 photos/s. Ablations on the same corpus: exact
  decoding (``fast_decode=False``) and torch's default threads (no light-model
  tuning), and the pure decode and pure model rates.
* ``rerun``: ``xsearch index`` twice (fresh processes) over 10,000 small files
  (PNG + text); the second, unchanged run must take < 5% of the first's time
  (the run itself, as the CLI's JSON ``seconds`` reports it; process walls too).
* ``agreement``: fast (draft) JPEG decoding vs exact, as embeddings of the HUGE
  vision tower in float32 (and of the tiny fixture model), on the golden photos
  and generated ones of several sizes; for scale, the same for a JPEG re-save at
  quality 90 of the exact pixels. Target: cosine >= 0.999.

All corpora are generated (and cached under ``$XSEARCH_BENCH_CACHE/corpora``).
Wall-clock figures on a shared 2-core machine depend on what else runs: the
1-minute load average is reported before and after each part, and the process
CPU seconds beside each wall time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import log, loadavg  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_HUGE_RATIO = 0.9
TARGET_TINY_FILES_PER_S = 150.0
TARGET_RERUN_RATIO = 0.05
TARGET_AGREEMENT = 0.999


# ---------------------------------------------------------------- helpers


def timed(fn) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def files_of(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


def cli(*args: str, env: dict[str, str]) -> dict[str, Any]:
    res = common.run_measured([sys.executable, "-m", "xsearch.cli.main", *args], env=env, cwd=str(common.ROOT))
    try:
        res["json"] = json.loads(res["stdout"])
    except ValueError:
        res["json"] = None
    if res["rc"] not in (0, 1):
        raise RuntimeError(f"xsearch {' '.join(args)} failed ({res['rc']}): {res['stderr_tail']}")
    return res


def batches_of(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def new_store(tmp: Path, name: str, model: str, emb=None):
    from xsearch.api import Store

    store = Store(tmp / name, model=model)
    if emb is not None:
        store._embedder = emb  # bench hook: share the loaded, warmed model (Store builds one lazily otherwise)
    return store


# ---------------------------------------------------------------- part A: HUGE model, pipeline vs pure model


def part_huge(args, tmp: Path) -> dict[str, Any]:
    from xsearch.engine.embedder import Embedder

    load0 = loadavg()
    model_dir = common.huge_model_dir()
    _, convert_s = common.ensure_huge_converted(model_dir)
    corpus, info = common.cached_corpus(
        f"media-{args.photos}p-{args.audio}a",
        lambda d: common.make_media_corpus(d, args.photos, args.audio),
    )
    photos, sounds = files_of(corpus, "*.jpg"), files_of(corpus, "*.wav")
    n = len(photos) + len(sounds)
    env = common.child_env(XSEARCH_HOME=str(common.bench_home()), XSEARCH_OFFLINE="1")

    # 1. A cold `xsearch index` process: interpreter start, model load (vision + audio towers), the run.
    log(f"huge: cold `xsearch index` over {len(photos)} photos + {len(sounds)} sounds")
    cold = cli("index", str(corpus), "--store", str(tmp / "huge-cli"), "--model", str(model_dir), "--json",
               "--no-progress", "--batch-size", str(args.batch_size),
               *(["--workers", str(args.workers)] if args.workers else []), env=env)
    assert cold["json"]["embedded"] == n, cold["json"]

    # 2. In-process: one embedder, towers loaded and warmed once, shared by the baseline and the pipeline.
    emb = Embedder(str(model_dir), device="cpu", dtype=args.dtype)
    _, load_s, _ = timed(lambda: (emb.model_for("image"), emb.model_for("audio")))
    from xsearch.engine.preprocess.image import fast_decode

    with fast_decode():  # decode the way the indexer does (the baseline's speed does not depend on pixels)
        xs = {"image": [emb.load("image", p) for p in photos], "audio": [emb.load("audio", p) for p in sounds]}
    plan = [(m, torch.stack(b)) for m in ("image", "audio") for b in batches_of(xs[m], args.batch_size)]
    shapes = {}
    for m, b in plan:
        shapes.setdefault((m, tuple(b.shape)), b)
    log(f"huge: towers loaded in {load_s:.1f} s; warming up {len(shapes)} batch shape(s)")
    _, warm_s, _ = timed(lambda: [emb.embed_tensors(m, b) for (m, _), b in shapes.items()])

    def pure():
        for m, b in plan:
            emb.embed_tensors(m, b)

    # Inside the index run, the time the main thread spends in embed_tensors: the model's busy share of
    # the run's wall time, measured under the very same machine load as the run itself.
    busy = [0.0]
    real_embed = emb.embed_tensors

    def timed_embed(modality, batch):
        t = time.perf_counter()
        try:
            return real_embed(modality, batch)
        finally:
            busy[0] += time.perf_counter() - t

    runs = []
    for r in range(args.huge_repeats):  # pairs, back to back: each pair sees about the same load
        _, pw, pc = timed(pure)
        store = new_store(tmp, f"huge-{r}", str(model_dir), emb)
        busy[0] = 0.0
        emb.embed_tensors = timed_embed
        try:
            rep, iw, ic = timed(lambda: store.index([corpus], batch_size=args.batch_size, workers=args.workers))
        finally:
            del emb.embed_tensors  # back to the class's method
        store.close()
        assert rep.embedded == n and rep.failed == 0, rep
        runs.append({"pure_wall_s": round(pw, 2), "pure_cpu_s": round(pc, 2), "index_wall_s": round(iw, 2),
                     "index_cpu_s": round(ic, 2), "ratio": round(pw / iw, 3),
                     "model_busy_in_run": round(busy[0] / iw, 3), "loadavg": loadavg()})
        log(f"huge: repeat {r}: pure {n / pw:.3f} files/s, index {n / iw:.3f} files/s, ratio {pw / iw:.3f}, "
            f"model busy {busy[0] / iw:.3f} of the run (load {loadavg()})")
    best_pure = min(x["pure_wall_s"] for x in runs)
    best_index = min(x["index_wall_s"] for x in runs)
    ratio = round(statistics.median(x["ratio"] for x in runs), 3)
    cold_rate = n / cold["wall_s"]
    del emb, xs, plan, shapes
    gc.collect()
    return {
        "model": "imagebind_huge architecture, random weights (seed 0), towers vision + audio",
        "dtype": args.dtype,
        "corpus": info,
        "files": n,
        "batch_size": args.batch_size,
        "workers": args.workers or "default",
        "checkpoint_convert_s": convert_s,
        "tower_load_s": round(load_s, 2),
        "warmup_s": round(warm_s, 2),
        "baseline_pure_model_files_per_s_best": round(n / best_pure, 3),
        "ours_index_files_per_s_best": round(n / best_index, 3),
        "ratio": ratio,
        "ratio_is": "median over repeats of (pure seconds / index seconds), each pair run back to back",
        "ratio_best_vs_best": round(best_pure / best_index, 3),
        "model_busy_in_run_median": round(statistics.median(x["model_busy_in_run"] for x in runs), 3),
        "target": f">= {TARGET_HUGE_RATIO}",
        "pass": ratio >= TARGET_HUGE_RATIO,
        "repeats": runs,
        "cold_cli": {
            "what": "fresh `xsearch index` process: interpreter start + model load + run",
            "wall_s": cold["wall_s"],
            "run_s_reported": cold["json"].get("seconds"),
            "files_per_s": round(cold_rate, 3),
            "ratio_vs_pure": round(cold_rate / (n / best_pure), 3),
            "peak_rss_mb": cold["peak_rss_mb"],
        },
        "loadavg_before_after": [load0, loadavg()],
    }


# ---------------------------------------------------------------- part B: tiny model, the pipeline's ceiling


def part_tiny(args, tmp: Path) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import xsearch.indexer.pipeline as pipeline
    from xsearch.engine.embedder import Embedder
    from xsearch.engine.preprocess.image import load_image
    from xsearch.indexer import Indexer

    load0 = loadavg()
    corpus, info = common.cached_corpus(f"photos-{args.tiny_photos}", lambda d: common.make_media_corpus(d, args.tiny_photos))
    photos = files_of(corpus, "*.jpg")
    n = len(photos)
    model = str(common.TINY_MODEL)
    emb = Embedder(model, device="cpu", dtype=args.dtype)
    threads = torch.get_num_threads()
    warm = torch.stack([load_image(photos[0])] * args.batch_size)
    emb.embed_tensors("image", warm)

    def index_run(name: str, **kw) -> dict[str, Any]:
        from xsearch.api import Store

        store = Store(tmp / f"tiny-{name}", model=model)
        ix = Indexer(store.storage, lambda: emb, store.model_id, batch_size=args.batch_size, workers=args.workers, **kw)
        rep, w, c = timed(lambda: ix.run([str(corpus)]))
        store.close()
        assert rep.embedded == n and rep.failed == 0, rep
        assert torch.get_num_threads() == threads  # the run restores torch's thread count
        log(f"tiny {name}: {n / w:.1f} photos/s ({c:.2f} s CPU, load {loadavg()})")
        return {"wall_s": round(w, 3), "cpu_s": round(c, 3), "files_per_s": round(n / w, 1),
                "files_per_cpu_s": round(n / c, 1), "loadavg": loadavg()}

    results = {}
    best = None
    for r in range(args.repeats):
        res = index_run(f"fast-{r}")
        if best is None or res["wall_s"] < best["wall_s"]:
            best = res
    results["ours"] = best
    results["ablation_exact_decode"] = index_run("exact", fast_decode=False)
    light = pipeline.LIGHT_MODEL_PARAMS
    pipeline.LIGHT_MODEL_PARAMS = 0  # the torch thread count untouched, as before
    try:
        results["ablation_default_threads"] = index_run("threads")
    finally:
        pipeline.LIGHT_MODEL_PARAMS = light

    # Stages alone: decoding (hash + fast load, the pipeline's worker count) and the model (torch threads 1 and default).
    workers = args.workers or pipeline._default_workers()

    def decode(p):
        from xsearch.indexer.hashing import content_hash

        content_hash(str(p))
        return load_image(p, fast=True)

    with ThreadPoolExecutor(workers) as ex:
        xs, dw, _ = timed(lambda: list(ex.map(decode, photos)))
    model_rates = {}
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        bs = [torch.stack(b) for b in batches_of(xs, args.batch_size)]
        emb.embed_tensors("image", bs[0])
        _, mw, _ = timed(lambda: [emb.embed_tensors("image", b) for b in bs])
        model_rates[f"threads_{t}"] = round(n / mw, 1)
    torch.set_num_threads(threads)
    rate = best["files_per_s"]
    return {
        "model": "tiny fixture model (tests/data/golden/imagebind/tiny)",
        "dtype": str(emb.dtype).replace("torch.", ""),
        "corpus": info,
        "files": n,
        "batch_size": args.batch_size,
        "workers": workers,
        "torch_threads_default": threads,
        **results,
        "stage_rates_files_per_s": {"decode_only": round(n / dw, 1), "model_only": model_rates},
        "target": f">= {TARGET_TINY_FILES_PER_S:g} photos/s",
        "pass": rate >= TARGET_TINY_FILES_PER_S,
        "loadavg_before_after": [load0, loadavg()],
    }


# ---------------------------------------------------------------- part C: the unchanged re-run


def part_rerun(args, tmp: Path) -> dict[str, Any]:
    load0 = loadavg()
    corpus, info = common.cached_corpus(f"small-{args.small_files}", lambda d: common.make_small_corpus(d, args.small_files))
    env = common.child_env(XSEARCH_HOME=str(tmp / "home"), XSEARCH_OFFLINE="1")
    store = str(tmp / "rerun-store")
    base = ("index", str(corpus), "--store", store, "--model", str(common.TINY_MODEL), "--json", "--no-progress")
    log(f"rerun: first run over {args.small_files} files")
    first = cli(*base, env=env)
    log(f"rerun: first {first['json']['seconds']} s (process {first['wall_s']} s); second run")
    second = cli(*base, env=env)
    j1, j2 = first["json"], second["json"]
    assert j1["embedded"] == args.small_files and j2["unchanged"] == args.small_files and j2["embedded"] == 0, (j1, j2)
    ratio = round(j2["seconds"] / j1["seconds"], 4)
    return {
        "model": "tiny fixture model",
        "corpus": info,
        "first": {"run_s": j1["seconds"], "process_wall_s": first["wall_s"], "embedded": j1["embedded"],
                  "files_per_s": round(args.small_files / j1["seconds"], 1), "peak_rss_mb": first["peak_rss_mb"]},
        "second": {"run_s": j2["seconds"], "process_wall_s": second["wall_s"], "unchanged": j2["unchanged"],
                   "peak_rss_mb": second["peak_rss_mb"]},
        "ratio": ratio,
        "ratio_process_wall": round(second["wall_s"] / first["wall_s"], 4),
        "target": f"< {TARGET_RERUN_RATIO} (second run / first run, the run itself)",
        "pass": ratio < TARGET_RERUN_RATIO,
        "loadavg_before_after": [load0, loadavg()],
    }


# ---------------------------------------------------------------- part D: fast decoding's agreement


def agreement_images(args, tmp: Path) -> list[Path]:
    sizes = [(1024, 768), (768, 1024), (2048, 1536), (1001, 453), (2400, 460)]
    if not args.quick:
        sizes += [(4032, 3024)]

    def build(d: Path) -> dict[str, Any]:
        for i, s in enumerate(sizes):
            common.write_photo(d / f"agree_{i}_{s[0]}x{s[1]}.jpg", 500 + i, s)
        return {"sizes": [list(s) for s in sizes]}

    d, _ = common.cached_corpus("agreement-" + "-".join(f"{w}x{h}" for w, h in sizes), build)
    golden = sorted((common.TINY_MODEL.parent / "media" / "images").glob("*.jpg"))
    return golden + files_of(d, "*.jpg")


def part_agreement(args, tmp: Path) -> dict[str, Any]:
    from PIL import Image

    from xsearch.engine.embedder import Embedder
    from xsearch.engine.preprocess import image as I

    load0 = loadavg()
    images = agreement_images(args, tmp)
    exact = torch.stack([I.load_image(p) for p in images])
    fast = torch.stack([I.load_image(p, fast=True) for p in images])
    resaved = []
    for p in images:  # for scale: the exact pixels re-encoded once more as JPEG q90
        q = tmp / f"resave_{p.stem}.jpg"
        Image.open(p).convert("RGB").save(q, quality=90)
        resaved.append(I.load_image(q))
    resaved = torch.stack(resaved)
    drafted = {p.name: list(I.open_image(p, I.DRAFT_MIN_SHORT_SIDE).size) for p in images}

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(axis=1)

    def pixel(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        d = (a - b).abs()
        return {"mean_abs": round(float(d.mean()), 4), "max_abs": round(float(d.max()), 3)}

    out: dict[str, Any] = {
        "images": {p.name: {"size": list(Image.open(p).size), "decoded_fast_at": drafted[p.name]} for p in images},
        "input_diff_normalised_units": {"fast_vs_exact": pixel(exact, fast), "jpeg_q90_resave_vs_exact": pixel(exact, resaved)},
        "models": {},
    }
    models = [("tiny_fixture_fp32", str(common.TINY_MODEL))]
    if "huge" in args.agreement_models:
        models.append(("huge_random_fp32", str(common.huge_model_dir())))
        common.ensure_huge_converted(common.huge_model_dir())
    for name, model in models:
        log(f"agreement: {name} on {len(images)} images")
        emb = Embedder(model, device="cpu", dtype="float32")
        e_exact = np.concatenate([emb.embed_tensors("image", b) for b in exact.split(4)])
        e_fast = np.concatenate([emb.embed_tensors("image", b) for b in fast.split(4)])
        e_resave = np.concatenate([emb.embed_tensors("image", b) for b in resaved.split(4)])
        c_fast, c_resave = cos(e_exact, e_fast), cos(e_exact, e_resave)
        out["models"][name] = {
            "cos_fast_vs_exact": {"min": round(float(c_fast.min()), 6), "mean": round(float(c_fast.mean()), 6),
                                  "per_image": {p.name: round(float(c), 6) for p, c in zip(images, c_fast)}},
            "cos_jpeg_resave_vs_exact": {"min": round(float(c_resave.min()), 6), "mean": round(float(c_resave.mean()), 6)},
        }
        del emb
        gc.collect()
    worst = min(m["cos_fast_vs_exact"]["min"] for m in out["models"].values())
    out.update({"min_cos": worst, "target": f">= {TARGET_AGREEMENT}", "pass": worst >= TARGET_AGREEMENT,
                "loadavg_before_after": [load0, loadavg()]})
    return out


# ---------------------------------------------------------------- main


PARTS = {"tiny": part_tiny, "rerun": part_rerun, "huge": part_huge, "agreement": part_agreement}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="tiny,rerun,huge,agreement", help="comma-separated: " + ",".join(PARTS))
    p.add_argument("--quick", action="store_true",
                   help="small sizes: 8 photos + 4 sounds (huge), 200 photos (tiny), 2,000 files (rerun), one repeat")
    p.add_argument("--photos", type=int, default=None, help="huge part: 1024x768 photos (default 24)")
    p.add_argument("--audio", type=int, default=None, help="huge part: 5 s WAV files (default 8)")
    p.add_argument("--tiny-photos", type=int, default=None, help="tiny part: 1024x768 photos (default 600)")
    p.add_argument("--small-files", type=int, default=None, help="rerun part: small files (default 10000)")
    p.add_argument("--batch-size", type=int, default=8, help="as `xsearch index --batch-size` (default 8)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: the indexer's)")
    p.add_argument("--dtype", default="auto", help="model dtype for huge and tiny parts (default auto: bf16 here)")
    p.add_argument("--repeats", type=int, default=None, help="tiny part: timed repeats, best kept (default 2; quick 1)")
    p.add_argument("--huge-repeats", type=int, default=None,
                   help="huge part: (pure, index) pairs, median ratio kept (default 3; quick 1)")
    p.add_argument("--agreement-models", default="tiny,huge", help="tiny and/or huge (float32 vision tower)")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores (printed on stderr)")
    p.add_argument("--draft-min-side", type=int, default=None,
                   help="override image.DRAFT_MIN_SHORT_SIDE (fast decoding's policy) for this run")
    a = p.parse_args(argv)
    q = a.quick
    a.photos = a.photos if a.photos is not None else (8 if q else 24)
    a.audio = a.audio if a.audio is not None else (4 if q else 8)
    a.tiny_photos = a.tiny_photos if a.tiny_photos is not None else (200 if q else 600)
    a.small_files = a.small_files if a.small_files is not None else (2000 if q else 10_000)
    a.repeats = a.repeats if a.repeats is not None else (1 if q else 2)
    a.huge_repeats = a.huge_repeats if a.huge_repeats is not None else (1 if q else 3)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if unknown := [x for x in parts if x not in PARTS]:
        raise SystemExit(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    common.use_bench_home()
    from xsearch.engine.preprocess import image

    if args.draft_min_side:
        image.DRAFT_MIN_SHORT_SIDE = args.draft_min_side
    t0 = time.perf_counter()
    report: dict[str, Any] = {"bench": "ingest", "date": time.strftime("%Y-%m-%d"), "environment": common.environment(),
                              "quick": args.quick, "draft_min_short_side": image.DRAFT_MIN_SHORT_SIDE}
    tmp = Path(tempfile.mkdtemp(prefix="xsearch-bench-ingest-"))
    try:
        for name in parts:
            log(f"part {name}")
            report[name] = PARTS[name](args, tmp)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["pass"] = all(report[p].get("pass", False) for p in parts)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
