"""Peak memory of an index run: many small files and one very long recording.

Indexes, each into a fresh store with the tiny fixture model, as separate ``xsearch index`` processes:

* ``baseline``: the first ``--baseline-files`` of the small files (start-up, model, a short run);
* ``short_wav``: a 5-second WAV of the same rate and channels (the audio tower's own baseline);
* ``wav``: only the long WAV (``--wav-minutes`` at ``--wav-rate`` Hz, ``--wav-channels`` channels);
* ``full``: all ``--files`` small files (32x24 PNGs and short texts, alternating) plus the WAV.

and prints one JSON object: each run's peak RSS (``ru_maxrss`` of exactly that child, see
bench/common.py), wall time and counts, plus ``growth_mb`` (full minus baseline) and
``per_file_kb`` (that growth over the extra files: what a per-file leak would show as).
Decoding the whole WAV at once would cost ``wav.decoded_mb`` (float32 samples); the audio
loader reads only its three clip windows, so ``wav_growth_mb`` (long WAV minus 5-second WAV)
stays far below it.

    python bench/memory.py                      # 10,000 files + a 2-hour 16 kHz mono WAV (~2-3 min first run)
    python bench/memory.py --files 2000 --wav-minutes 20 --wav-rate 48000 --wav-channels 2
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TINY_MODEL, bench_cache, cached_corpus, child_env, environment, loadavg, log, make_small_corpus, run_measured,
)


def write_long_wav(path: Path, seconds: float, sr: int, channels: int) -> Path:
    """A 16-bit WAV written 10 s at a time (never held whole): a slowly gliding tone."""
    import numpy as np
    import soundfile as sf

    block = sr * 10
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, subtype="PCM_16") as f:
        done, total = 0, int(seconds * sr)
        while done < total:
            n = min(block, total - done)
            t = (done + np.arange(n)) / sr
            x = (0.2 * np.sin(2 * math.pi * (220 + 0.01 * t) * t)).astype(np.float32)
            f.write(np.repeat(x[:, None], channels, axis=1))
            done += n
    return path


def _index(paths: list[Path], store: Path, model: str) -> dict:
    cmd = [sys.executable, "-m", "xsearch.cli.main", "index", *map(str, paths), "--store", str(store),
           "--model", model, "--no-progress", "--json"]
    r = run_measured(cmd, env=child_env())
    if r["rc"] not in (0, 1):
        raise SystemExit(f"xsearch index failed ({r['rc']}): {r['stderr_tail']}")
    rep = json.loads(r["stdout"])
    return {"peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"], "index_s": rep["seconds"],
            "embedded": rep["embedded"], "failed": rep["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--baseline-files", type=int, default=500)
    ap.add_argument("--wav-minutes", type=float, default=120.0)
    ap.add_argument("--wav-rate", type=int, default=16_000)
    ap.add_argument("--wav-channels", type=int, default=1)
    ap.add_argument("--model", default=str(TINY_MODEL))
    args = ap.parse_args()

    t0 = time.perf_counter()
    corpus, info = cached_corpus(f"small-{args.files}", lambda d: make_small_corpus(d, args.files))
    wav_dir = bench_cache() / "corpora" / f"wav-{args.wav_minutes:g}min-{args.wav_rate}hz-{args.wav_channels}ch"
    wav = wav_dir / "long.wav"
    if not wav.is_file():
        log(f"writing {wav} ({args.wav_minutes:g} min)")
        wav_dir.mkdir(parents=True, exist_ok=True)
        tmp_wav = wav_dir / ".long.tmp.wav"  # hidden: never indexed
        write_long_wav(tmp_wav, args.wav_minutes * 60, args.wav_rate, args.wav_channels)
        tmp_wav.rename(wav)
    parts = sorted(p for p in corpus.iterdir() if p.is_dir())
    per_part = len(list(parts[0].iterdir())) if parts else 0
    n_base_parts = max(1, math.ceil(args.baseline_files / max(per_part, 1)))
    base_parts = parts[:n_base_parts]
    base_files = sum(len(list(p.iterdir())) for p in base_parts)

    out = {"bench": "memory", "environment": environment(), "model": args.model,
           "files": args.files, "wav": {"minutes": args.wav_minutes, "rate_hz": args.wav_rate,
                                        "channels": args.wav_channels, "file_mb": round(wav.stat().st_size / 2**20, 1),
                                        "decoded_mb": round(args.wav_minutes * 60 * args.wav_rate * args.wav_channels * 4 / 2**20, 1)},
           "corpus": info}
    with tempfile.TemporaryDirectory(prefix="xsearch-bench-memory-") as tmp:
        tmp = Path(tmp)
        log(f"baseline: {base_files} files")
        out["baseline"] = _index(base_parts, tmp / "s_base", args.model) | {"files": base_files}
        short = tmp / "short"
        short.mkdir()
        write_long_wav(short / "short.wav", 5.0, args.wav_rate, args.wav_channels)
        log("a 5-second WAV, then the long WAV alone")
        out["short_wav"] = _index([short], tmp / "s_short", args.model)
        out["wav_only"] = _index([wav_dir], tmp / "s_wav", args.model)
        log(f"full: {args.files} files + the WAV")
        out["full"] = _index([corpus, wav_dir], tmp / "s_full", args.model) | {"files": args.files + 1}
        shutil.rmtree(tmp, ignore_errors=True)
    growth = out["full"]["peak_rss_mb"] - out["baseline"]["peak_rss_mb"]
    out["growth_mb"] = round(growth, 1)
    out["per_file_kb"] = round(max(growth, 0.0) * 1024 / max(args.files - base_files, 1), 2)
    out["wav_growth_mb"] = round(out["wav_only"]["peak_rss_mb"] - out["short_wav"]["peak_rss_mb"], 1)
    out["loadavg_1min_at_end"] = loadavg()
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
