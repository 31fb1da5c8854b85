"""Helpers shared by bench/ingest.py and bench/query_latency.py.

* a cache directory for everything that is slow to make and safe to re-use
  (``$XSEARCH_BENCH_CACHE``, default ``/tmp/xsearch-bench-cache``): the HUGE
  random-weight model directory (``huge-random/config.json`` + ``checkpoint.pth``,
  4.8 GB) and an ``XSEARCH_HOME`` (``home/``) whose ``models/cache`` holds its
  per-tower safetensors conversion (another 4.8 GB);
* generated corpora: photos (1024x768 JPEG with natural-image-like content:
  smooth colour fields, edges, texture and sensor noise), 5 s WAV recordings,
  and many tiny files for the incremental re-run;
* running a command as a child process and reading ITS peak RSS: ``os.wait4``
  returns the resource usage of exactly that child (and its own waited-for
  children), so measurements never mix the way ``RUSAGE_CHILDREN`` maxima do.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

MACHINE = "2-core AMD EPYC, AVX-512, no GPU"
CACHE_ENV = "XSEARCH_BENCH_CACHE"
TINY_MODEL = ROOT / "tests" / "data" / "golden" / "imagebind" / "tiny"
HUGE_DIR_NAME = "huge-random"
_HUGE_MARKER = "complete"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> float | None:
    """1-minute load average: other processes on the same 2 cores slow everything down."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment() -> dict[str, Any]:
    import torch

    return {
        "machine": MACHINE,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_1min_at_start": loadavg(),
    }


def bench_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "/tmp/xsearch-bench-cache").absolute()


def bench_home() -> Path:
    """The XSEARCH_HOME the benches use: keeps the huge model's per-tower cache between runs."""
    return bench_cache() / "home"


def use_bench_home() -> Path:
    home = bench_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["XSEARCH_HOME"] = str(home)
    os.environ["XSEARCH_OFFLINE"] = "1"
    os.environ.pop("XSEARCH_STORE", None)
    os.environ.pop("XSEARCH_MODEL", None)
    return home


# ---------------------------------------------------------------- the HUGE random-weight model


def huge_model_dir(seed: int = 0) -> Path:
    """``<cache>/huge-random``: config.json (huge) + checkpoint.pth (all six towers, random weights).

    Written once (about 1.2e9 float32 values: 4.8 GB, a minute or two here), then
    re-used; a ``complete`` marker written last tells a finished directory from an
    interrupted one. The tensors are built tower by tower on the meta device and
    initialised in place, so the peak memory is the checkpoint's size.
    """
    import torch

    from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
    from xsearch.engine.modalities import IMAGEBIND_MODALITIES

    d = bench_cache() / HUGE_DIR_NAME
    if (d / _HUGE_MARKER).is_file() and (d / "checkpoint.pth").is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"writing the HUGE random-weight checkpoint to {d} (4.8 GB, once)")
    cfg = ImageBindConfig.huge()
    with torch.device("meta"):
        model = ImageBindModel(cfg, modalities=IMAGEBIND_MODALITIES)
    model = model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    sd = model.state_dict()
    tmp = d / "checkpoint.pth.tmp"
    torch.save(sd, tmp)
    del sd, model
    os.replace(tmp, d / "checkpoint.pth")
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1), encoding="utf-8")
    (d / _HUGE_MARKER).write_text(json.dumps({"seed": seed, "seconds": round(time.perf_counter() - t0, 1)}), encoding="utf-8")
    log(f"  written in {time.perf_counter() - t0:.0f} s")
    return d


def ensure_huge_converted(model_dir: Path) -> tuple[Path, float]:
    """Run the per-tower safetensors conversion (once; timed) under the bench XSEARCH_HOME."""
    from xsearch.engine import weights

    use_bench_home()
    t0 = time.perf_counter()
    cache = weights.ensure_converted(str(model_dir), progress=False)
    return cache, round(time.perf_counter() - t0, 2)


# ---------------------------------------------------------------- corpora


def photo_array(seed: int, size: tuple[int, int] = (1024, 768)) -> np.ndarray:
    """An (H, W, 3) uint8 image with the statistics of a photo rather than of white noise:
    a smooth colour field, a few hard-edged shapes, mid-frequency texture and sensor noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(40, w // 2)), y0 + int(rng.integers(40, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    img = np.asarray(base, dtype=np.float32)
    tex = Image.fromarray(rng.integers(0, 256, size=(h // 16, w // 16), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    img += (np.asarray(tex, dtype=np.float32)[..., None] - 128.0) * 0.25
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(4.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photo(path: Path, seed: int, size: tuple[int, int] = (1024, 768), quality: int = 90) -> Path:
    from PIL import Image

    Image.fromarray(photo_array(seed, size)).save(path, quality=quality)
    return path


def write_wav(path: Path, seed: int, seconds: float = 5.0, sr: int = 16000) -> Path:
    """A mono 16-bit WAV: a few drifting tones plus noise bursts."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for _ in range(3):
        f0 = rng.uniform(120, 2000)
        x += rng.uniform(0.05, 0.2) * np.sin(2 * math.pi * (f0 * t + rng.uniform(-40, 40) * t * t))
    x += rng.normal(0, 0.02, size=t.shape) * (np.sin(2 * math.pi * rng.uniform(0.5, 2) * t) > 0.5)
    sf.write(path, np.clip(x, -1, 1).astype(np.float32), sr, subtype="PCM_16")
    return path


def make_media_corpus(root: Path, photos: int, audio: int = 0, *, size: tuple[int, int] = (1024, 768), seed: int = 0,
                      audio_seconds: float = 5.0) -> dict[str, Any]:
    """``root/photos/*.jpg`` and ``root/audio/*.wav``; returns counts, bytes and the seconds it took."""
    t0 = time.perf_counter()
    (root / "photos").mkdir(parents=True, exist_ok=True)
    nbytes = 0
    for i in range(photos):
        nbytes += write_photo(root / "photos" / f"photo_{i:05d}.jpg", seed + i, size).stat().st_size
    if audio:
        (root / "audio").mkdir(parents=True, exist_ok=True)
        for i in range(audio):
            nbytes += write_wav(root / "audio" / f"sound_{i:05d}.wav", seed + 10_000 + i, audio_seconds).stat().st_size
    return {"photos": photos, "audio": audio, "photo_size": list(size), "audio_seconds": audio_seconds if audio else None,
            "bytes": nbytes, "generated_s": round(time.perf_counter() - t0, 2)}


def make_small_corpus(root: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` tiny files in folders of 500: 32x24 PNG images and short .txt files, alternating."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    words = ["rain", "dog", "beach", "city", "night", "forest", "car", "bird", "song", "river", "snow", "market"]
    for i in range(n):
        folder = root / f"part_{i // 500:03d}"
        if i % 500 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).save(folder / f"img_{i:05d}.png")
        else:
            (folder / f"note_{i:05d}.txt").write_text(" ".join(rng.choice(words, 8)) + f" {i}\n", encoding="utf-8")
    return {"files": n, "generated_s": round(time.perf_counter() - t0, 2)}


def cached_corpus(name: str, build) -> tuple[Path, dict[str, Any]]:
    """``<cache>/corpora/<name>``, built once by ``build(dir) -> info`` (a marker holds the info).

    Generating 1024x768 photos costs ~50 ms each; re-runs of a bench re-use them. Files
    are never modified by the benches (each run indexes them into a fresh store).
    """
    import shutil

    d = bench_cache() / "corpora" / name
    marker = d / ".complete.json"  # hidden: the indexer's walk skips it
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        info["generated_s"] = 0.0
        info["reused"] = True
        return d, info
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    info = build(d)
    marker.write_text(json.dumps(info), encoding="utf-8")
    info["reused"] = False
    return d, info


# ---------------------------------------------------------------- child processes


# Runs in a fresh, small interpreter: it starts the command and reports wall time and the rusage of
# that one child. Measuring from the benchmark process itself would be wrong: Linux seeds a child's
# ru_maxrss with the RSS of the process it was forked (or vforked) from, here a GB-sized one.
_HELPER = r"""
import json, os, subprocess, sys, time
cmd, out, err, result, timeout = json.loads(sys.argv[1])
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - t0
p.returncode = os.waitstatus_to_exitcode(status)
with open(result, "w") as f:
    json.dump({"wall_s": wall, "rc": p.returncode, "maxrss_kb": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime}, f)
"""


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
                 cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds (spawn to exit), exit status, stdout, stderr tail and the
    child's peak RSS in MB (``ru_maxrss`` from ``os.wait4`` of that one child, started by a
    fresh helper interpreter so that no other process's peak mixes in)."""
    with tempfile.TemporaryDirectory(prefix="xsearch-bench-run-") as d:
        out, err, result = (os.path.join(d, n) for n in ("stdout", "stderr", "result.json"))
        spec = json.dumps([list(cmd), out, err, result, timeout])
        helper_env = dict(env if env is not None else os.environ)
        subprocess.run([sys.executable, "-S", "-c", _HELPER, spec], env=helper_env, cwd=cwd, check=True)
        with open(result, encoding="utf-8") as f:
            r = json.load(f)
        with open(out, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        with open(err, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
    return {
        "wall_s": round(r["wall_s"], 3),
        "rc": r["rc"],
        "peak_rss_mb": round(r["maxrss_kb"] / 1024, 1),  # Linux: kilobytes
        "user_s": round(r["user_s"], 2),
        "sys_s": round(r["sys_s"], 2),
        "stdout": stdout,
        "stderr_tail": stderr[-2000:],
    }


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.update(extra)
    return env


def drop_file_cache(paths: Sequence[Path]) -> bool:
    """Ask the kernel to drop these files' cached pages (posix_fadvise DONTNEED); best effort."""
    ok = True
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok
