"""Latency of ``xsearch serve`` under N concurrent clients.

    python bench/serve.py [--clients 8] [--requests 200] [--max-seconds 60] [--items 40] [--model DIR]

Writes a small corpus (generated photos, tones, notes, IMU CSVs) to a temp folder,
indexes it with the tiny fixture model (``tests/data/golden/imagebind/tiny``, or
``--model``), starts a real uvicorn server on a free loopback port (in a thread),
then ``--clients`` threads (one httpx client each) issue requests round-robin over
the mix until ``--requests`` are done or ``--max-seconds`` pass:

- ``text``: ``POST /api/search`` JSON with a text query
- ``upload``: ``POST /api/search`` multipart with an image file
- ``like``: ``POST /api/search`` JSON ``{"like": id}`` (no model call)
- ``media``: ``GET /media/{id}`` of an audio file

Prints one JSON object: p50/p95/max latency in ms and error counts, overall and per
kind, throughput, and the setup. Any status other than 200 counts as an error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from anywhere

import httpx  # noqa: E402

import xsearch  # noqa: E402
from tests.corpus import write_audio, write_image, write_imu_csv  # noqa: E402
from xsearch.serve import BackgroundServer  # noqa: E402

FIXTURE_MODEL = ROOT / "tests" / "data" / "golden" / "imagebind" / "tiny"
KINDS = ("text", "upload", "like", "media")
WORDS = ("dog", "rain", "car", "beach", "bird", "street", "music", "night", "forest", "kitchen")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_store(root: Path, items: int, model: str) -> tuple[xsearch.Store, dict[str, list[Path]]]:
    media = root / "media"
    media.mkdir(parents=True)
    files: dict[str, list[Path]] = {"image": [], "audio": [], "text": [], "imu": []}
    for i in range(items):
        kind = ("image", "audio", "text", "imu")[i % 4]
        if kind == "image":
            files[kind].append(write_image(media / f"img{i}.png", i))
        elif kind == "audio":
            files[kind].append(write_audio(media / f"tone{i}.wav", 200.0 + 40 * i, seconds=2.0))
        elif kind == "text":
            p = media / f"note{i}.txt"
            p.write_text(f"a note about a {WORDS[i % len(WORDS)]} and a {WORDS[(i * 3) % len(WORDS)]}\n", encoding="utf-8")
            files[kind].append(p)
        else:
            files[kind].append(write_imu_csv(media / f"walk{i}.csv", i % 5, seconds=3.0))
    store = xsearch.open(root / "store", model=model)
    report = store.index([media])
    if report.failed:
        raise SystemExit(f"indexing failed: {report.errors[:3]}")
    return store, files


def stats(latencies: list[float], errors: int) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000.0
    if len(ms) == 0:
        return {"requests": 0, "errors": errors}
    return {
        "requests": int(len(ms)),
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "max_ms": round(float(ms.max()), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def run_clients(url: str, clients: int, total: int, max_seconds: float, store: xsearch.Store,
                files: dict[str, list[Path]]) -> dict[str, Any]:
    image_bytes = [p.read_bytes() for p in files["image"][:4]]
    audio_ids = [store.storage.item_by_path(str(p)).id for p in files["audio"]]
    like_ids = [store.storage.item_by_path(str(p)).id for p in files["image"]]
    counter = iter(range(total))
    lock = threading.Lock()
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: dict[str, int] = {k: 0 for k in KINDS}
    samples: list[str] = []
    deadline = time.monotonic() + max_seconds

    def next_index() -> int | None:
        with lock:
            return next(counter, None)

    def one(c: httpx.Client, n: int) -> tuple[str, httpx.Response]:
        kind = KINDS[n % len(KINDS)]
        if kind == "text":
            return kind, c.post("/api/search", json={"text": f"a {WORDS[n % len(WORDS)]}", "k": 10})
        if kind == "upload":
            img = image_bytes[n % len(image_bytes)]
            return kind, c.post("/api/search", data={"target": "image", "k": "10"}, files={"image": ("q.png", img, "image/png")})
        if kind == "like":
            return kind, c.post("/api/search", json={"like": like_ids[n % len(like_ids)], "k": 10})
        return kind, c.get(f"/media/{audio_ids[n % len(audio_ids)]}")

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < deadline and (n := next_index()) is not None:
                t0 = time.perf_counter()
                try:
                    kind, r = one(c, n)
                    ok = r.status_code == 200
                    detail = f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as e:
                    kind, ok, detail = KINDS[n % len(KINDS)], False, repr(e)
                dt = time.perf_counter() - t0
                with lock:
                    results[kind].append(dt)
                    if not ok:
                        errors[kind] += 1
                        if len(samples) < 5:
                            samples.append(f"{kind}: {detail}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    everything = [x for k in KINDS for x in results[k]]
    out = stats(everything, sum(errors.values()))
    out.update({
        "seconds": round(wall, 2),
        "requests_per_s": round(len(everything) / wall, 1) if wall > 0 else None,
        "stopped_by_time_limit": len(everything) < total,
        "by_kind": {k: stats(results[k], errors[k]) for k in KINDS},
        "error_samples": samples,
    })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--requests", type=int, default=200, help="total requests over all clients")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop issuing requests after this long")
    ap.add_argument("--items", type=int, default=40, help="files in the generated corpus")
    ap.add_argument("--model", default=str(FIXTURE_MODEL), help="model folder (config.json + checkpoint.pth) or name")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1 or args.items < 8:
        raise SystemExit("--clients and --requests must be >= 1, --items >= 8")
    if args.model == str(FIXTURE_MODEL) and not FIXTURE_MODEL.is_dir():
        raise SystemExit(f"no fixture model at {FIXTURE_MODEL}; pass --model DIR")
    os.environ.setdefault("XSEARCH_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="xsearch-bench-serve-") as tmp:
        os.environ.setdefault("XSEARCH_HOME", os.path.join(tmp, "home"))
        log(f"indexing {args.items} generated files with {args.model}")
        t0 = time.perf_counter()
        store, files = build_store(Path(tmp), args.items, args.model)
        index_s = time.perf_counter() - t0
        with store, BackgroundServer(store, log_level="error") as srv:
            log(f"server on {srv.url}; warming up (loads the towers once)")
            with httpx.Client(base_url=srv.url, timeout=300) as c:
                c.post("/api/search", json={"text": "warm up"}).raise_for_status()
                c.post("/api/search", files={"image": ("w.png", files["image"][0].read_bytes())}).raise_for_status()
            log(f"{args.clients} clients, {args.requests} requests, at most {args.max_seconds:.0f} s")
            result = run_clients(srv.url, args.clients, args.requests, args.max_seconds, store, files)
    result = {
        "bench": "serve",
        "clients": args.clients,
        **result,
        "setup": {
            "model": os.path.basename(args.model.rstrip("/")),
            "corpus_items": args.items,
            "index_seconds": round(index_s, 2),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
