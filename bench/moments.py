"""Moments: indexing speed in seconds of media per second, store size per hour, query latency.

    python bench/moments.py [--quick] [--audio-minutes 20] [--video-minutes 4] [--segments 200000] [--parts audio,video,latency]

Prints one JSON object on stdout (progress on stderr).

* Indexing: a generated long WAV (16 kHz mono noise) and a generated MPEG-4 video (320x240, 25 fps,
  AAC sound), each in its own folder, indexed in-process with ``Store.index(..., moments=True)`` and
  the tiny fixture model on the CPU (default windows: 2 s, no overlap). Figure: seconds of media
  indexed per second of run (``IndexReport.seconds``), the whole-file vector included. Then the
  store's size per hour of media, as the tiny model stores it (its vectors are small).
* Query latency: ``--segments`` clustered 1024-d unit vectors (ImageBind huge's dimension; bench/search.py's
  generator: isotropic random vectors have no neighbours for IVF-PQ to find, real embeddings do) stored as
  2 s audio windows of one-hour items through ``Storage.put`` in bulk (as ``add_vectors`` would), the
  segment index built, then ``Store.search(vector=..., moments=True, k=10)`` timed (median, p95 of
  ``--queries``). Also the store's bytes per hour of audio at 1024-d.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import log, loadavg  # noqa: E402

HOUR = 3600.0


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_long_wav(path: Path, seconds: float, sr: int = 16_000) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):  # a minute at a time: the generator stays small too
            n = int(min(60, seconds - start) * sr)
            f.write((0.1 * rng.standard_normal(n)).astype(np.float32))


def write_long_video(path: Path, seconds: float, fps: int = 25, size=(320, 240)) -> None:
    import av

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        aus = c.add_stream("aac", rate=16000)
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i * 2, axis=1), format="rgb24")
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        samples = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start: start + 1024], format="flt", layout="mono")
            frame.sample_rate = 16000
            for p in aus.encode(frame):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)


def index_speed(work: Path, kind: str, minutes: float) -> dict:
    import xsearch

    folder = work / kind
    folder.mkdir()
    seconds = minutes * 60
    t = time.perf_counter()
    if kind == "audio":
        write_long_wav(folder / "long.wav", seconds)
    else:
        write_long_video(folder / "long.mp4", seconds)
    log(f"{kind}: {minutes:g} min written in {time.perf_counter() - t:.1f} s; indexing with --moments")
    store_dir = work / f"store-{kind}"
    with xsearch.open(store_dir, model=str(common.TINY_MODEL), device="cpu") as s:
        report = s.index([folder], moments=True)
    size = _dir_bytes(store_dir)
    out = {
        "media_seconds": report.media_seconds, "segments": report.segments, "run_seconds": report.seconds,
        "media_seconds_per_second": round(report.media_seconds / report.seconds, 1),
        "store_bytes": size, "store_mb_per_hour": round(size / 1e6 * HOUR / seconds, 2), "load": loadavg(),
    }
    log(f"{kind}: {out}")
    return out


def query_latency(work: Path, n_segments: int, queries: int, dim: int = 1024) -> dict:
    import xsearch
    from xsearch.storage import ItemRecord, SegmentRecord

    from search import Clustered

    per_item = int(HOUR / 2)  # one-hour recordings cut into 2 s windows
    gen = Clustered(dim, centers=1000)
    store_dir = work / "store-latency"
    t = time.perf_counter()
    with xsearch.open(store_dir, model=str(common.TINY_MODEL)) as s:
        for first in range(0, n_segments, per_item):
            n = min(per_item, n_segments - first)
            x = gen.batch(n + 1, first)
            segs = [SegmentRecord("audio", 2.0 * i, 2.0 * i + 2, x[i + 1]) for i in range(n)]
            s.storage.put([ItemRecord(path=f"/bench/rec{first // per_item:05d}.wav", modality="audio", size=1,
                                      mtime_ns=1, vector=x[0], segments=segs)])
        insert_s = time.perf_counter() - t
        log(f"{n_segments} segments stored in {insert_s:.1f} s; building the segment index")
        t = time.perf_counter()
        s.storage.load_indexes()
        s.storage.flush()
        build_s = time.perf_counter() - t
        info = s.storage.index_info().get("audio#seg", {})
        log(f"index {info.get('factory')} built in {build_s:.1f} s; timing {queries} queries")
        q = gen.batch(queries + 3, n_segments + 1)  # held out: inserted batches have keys < n_segments
        times = []
        for i, v in enumerate(q):
            t = time.perf_counter()
            hits = s.search(vector=v, moments=True, k=10)
            if i >= 3:  # the first few warm the caches
                times.append(time.perf_counter() - t)
        assert hits and hits[0].start is not None
    size = _dir_bytes(store_dir)
    hours = n_segments * 2 / HOUR
    return {
        "segments": n_segments, "dim": dim, "index": info.get("factory"), "insert_seconds": round(insert_s, 1),
        "build_seconds": round(build_s, 1), "query_ms_median": round(statistics.median(times) * 1e3, 2),
        "query_ms_p95": round(sorted(times)[math.ceil(0.95 * len(times)) - 1] * 1e3, 2),
        "store_bytes": size, "store_mb_per_hour_1024d": round(size / 1e6 / hours, 2), "load": loadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 min of audio, 1 min of video, 20,000 segments")
    ap.add_argument("--audio-minutes", type=float, default=20)
    ap.add_argument("--video-minutes", type=float, default=4)
    ap.add_argument("--segments", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--parts", default="audio,video,latency", help="any of: audio, video, latency")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.audio_minutes, args.video_minutes, args.segments = 2, 1, 20_000
    out = {"environment": common.environment()}
    with tempfile.TemporaryDirectory(prefix="xsearch-moments-") as tmp:
        work = Path(tmp)
        if "audio" in parts:
            out["audio"] = index_speed(work, "audio", args.audio_minutes)
        if "video" in parts:
            out["video"] = index_speed(work, "video", args.video_minutes)
        if "latency" in parts:
            out["latency"] = query_latency(work, args.segments, args.queries)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
