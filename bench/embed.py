"""Embedding throughput of the HUGE ImageBind towers (random weights), fp32 vs bf16 vs int8-dynamic.

    python bench/embed.py [--modalities vision,text,audio] [--batches 1,8] [--repeats 2] [--quick]

Prints one JSON object on stdout (progress goes to stderr). Towers are built one
at a time (``ImageBindModel(ImageBindConfig.huge(), modalities=[m])``, seed 0) so
memory stays bounded by the largest tower (vision: 2.5 GB in fp32). For each
modality it reports items/s at each batch size for float32 and for the dtype
``Embedder`` picks by default ("auto": bf16 on this CPU if it has bf16 units),
the speed of the auto dtype at the largest batch over float32 at batch 1, and
the cosine agreement of both with float32 on the same inputs. int8 dynamic
quantisation of the ``nn.Linear`` layers (``torch.ao.quantization.quantize_dynamic``)
is measured too (the attention input projection is a raw parameter in the
official layout, so it stays float32). Video items are 15 vision clips each:
their rate is derived from the vision rate.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np
import torch

# Runnable as a script from the repository root or from bench/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xsearch.engine.embedder import Embedder, configure_threads, cpu_has_fast_bf16, resolve_dtype  # noqa: E402
from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel  # noqa: E402
from xsearch.engine.modalities import IMAGEBIND_MODALITIES  # noqa: E402

VIDEO_CLIPS = 15  # load_video: 5 temporal x 3 spatial clips per file
AUDIO_CLIPS = 3  # load_audio: three 2-second clips per file


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_inputs(m: str, n: int, cfg: ImageBindConfig, seed: int = 0) -> torch.Tensor:
    """A batch of ``n`` items shaped as the loaders produce them (stacked)."""
    g = torch.Generator().manual_seed(seed)
    if m == "vision":
        return torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)
    if m == "audio":
        return torch.randn(n, AUDIO_CLIPS, 1, cfg.audio_num_mel_bins, cfg.audio_target_len, generator=g)
    if m in ("depth", "thermal"):
        return torch.randn(n, 1, cfg.image_size, cfg.image_size, generator=g)
    if m == "imu":
        return torch.randn(n, cfg.imu_channels, cfg.imu_samples, generator=g)
    # text: start token, random BPE ids, end token (the largest id), zero padding
    tokens = torch.zeros(n, cfg.text_context_length, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        tokens[i, 0] = 49406
        tokens[i, 1 : length + 1] = torch.randint(1, 49000, (length,), generator=g)
        tokens[i, length + 1] = 49407
    return tokens


def build_tower(m: str, device: str = "cpu") -> ImageBindModel:
    """The huge tower with random weights, allocated once on ``device`` (meta build, then init)."""
    with torch.device("meta"):
        model = ImageBindModel(ImageBindConfig.huge(), modalities=(m,))
    model = model.to_empty(device=device)
    model.init_weights(seed=0)
    return model


def loadavg() -> float | None:
    """1-minute load average: other processes on the same cores slow every OpenMP barrier."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) per call over ``repeats`` calls.

    CPU time is the load-robust number on a shared machine: with one thread it is
    the compute time however often the process was descheduled (with more threads
    it also counts OpenMP spin-waiting).
    """
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def measure(
    emb: Embedder, m: str, inputs: torch.Tensor, batches: list[int], repeats: int, label: str | None = None
) -> tuple[dict, dict, np.ndarray]:
    """items/s (wall) and items per CPU-second per batch size, after a batch-1 warm-up; the largest batch's outputs.

    On a GPU each batch size gets its own warm-up call (cuBLAS/cuDNN pick kernels per shape), and the
    timed call includes the host-to-device copy of the inputs and the copy of the vectors back.
    """
    emb.embed_tensors(m, inputs[:1])  # warm-up: oneDNN primitives, first-touch allocations
    rates, cpu_rates = {}, {}
    for b in batches:
        if emb.device.type == "cuda":
            emb.embed_tensors(m, inputs[:b])
        wall, cpu = time_calls(lambda: emb.embed_tensors(m, inputs[:b]), repeats)
        rates[f"b{b}"] = round(b / wall, 3)
        cpu_rates[f"b{b}"] = round(b / cpu, 3)
        log(f"  {m} {label or str(emb.dtype).replace('torch.', '')} batch {b}: {wall:.2f} s/batch wall, {cpu:.2f} s CPU, {b / wall:.3f} items/s (load {loadavg()})")
    return rates, cpu_rates, emb.embed_tensors(m, inputs[: max(batches)])


def agreement(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    cos = (ref * other).sum(axis=1)
    return {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}


def bench_int8(model: ImageBindModel, m: str, inputs: torch.Tensor, batches: list[int], repeats: int, ref: np.ndarray) -> dict:
    """Dynamic int8 Linear layers on the fp32 tower (consumes it: quantised in place)."""
    try:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        n_q = sum(1 for mod in q.modules() if "quantized" in type(mod).__module__ and "Linear" in type(mod).__name__)
        emb = Embedder(q, device="cpu", dtype="float32", model_id="bench-int8")
        rates, cpu_rates, out = measure(emb, m, inputs, batches, repeats, label="int8-dynamic")
        notes = sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, DeprecationWarning)})
        return {
            "items_per_s": rates,
            "items_per_cpu_s": cpu_rates,
            "quantized_linears": n_q,
            "cos_vs_fp32": agreement(ref, out),
            "warnings": notes,
        }
    except Exception as e:  # report, do not abort the benchmark
        log(f"  int8 failed: {e!r}")
        return {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc(limit=3).splitlines()[-3:]}


def bench_modality(m: str, batches: list[int], repeats: int, auto: torch.dtype, int8: bool,
                   device: str = "cpu") -> dict:
    cfg = ImageBindConfig.huge()
    load_before = loadavg()
    inputs = make_inputs(m, max(batches), cfg)
    t0 = time.perf_counter()
    model = build_tower(m, device)
    params = sum(p.numel() for p in model.parameters())
    log(f"{m}: {params / 1e6:.0f}M parameters, built in {time.perf_counter() - t0:.1f} s")
    fp32 = Embedder(model, device=device, dtype="float32", model_id="bench")
    fp32_rates, fp32_cpu, ref = measure(fp32, m, inputs, batches, repeats)
    result: dict[str, Any] = {
        "params_M": round(params / 1e6, 1),
        "float32": {"items_per_s": fp32_rates, "items_per_cpu_s": fp32_cpu},
    }
    if int8:
        result["int8_dynamic"] = bench_int8(model, m, inputs, [max(batches)], repeats, ref)
    if int8:  # quantisation consumed the float32 tower: build it again (same seed, same weights)
        del model
        gc.collect()
        model = build_tower(m, device)
    emb = Embedder(model, device=device, dtype=auto, model_id="bench")  # casts the tower in place
    rates, cpu_rates, out = measure(emb, m, inputs, batches, repeats)
    name = str(auto).replace("torch.", "")
    result[name] = {"items_per_s": rates, "items_per_cpu_s": cpu_rates, "cos_vs_fp32": agreement(ref, out)}
    big, small = f"b{max(batches)}", f"b{min(batches)}"
    result[f"speedup_{name}_{big}_vs_fp32_{small}"] = {
        "wall": round(rates[big] / fp32_rates[small], 2),
        "cpu_time": round(cpu_rates[big] / fp32_cpu[small], 2),
    }
    q = result.get("int8_dynamic", {})
    if "items_per_s" in q:
        q[f"speedup_vs_fp32_{small}"] = {
            "wall": round(q["items_per_s"][big] / fp32_rates[small], 2),
            "cpu_time": round(q["items_per_cpu_s"][big] / fp32_cpu[small], 2),
        }
    result["loadavg_1min_before_after"] = [load_before, loadavg()]
    del emb, fp32, model
    gc.collect()
    if device == "cuda":
        result["cuda_peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return result


def environment(device: str = "cpu") -> dict[str, Any]:
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    gpu = {}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "gpu": props.name,
            "gpu_memory_GiB": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            # SDPA picks flash attention for unmasked bf16/fp16 attention when these are on
            "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
            "sdpa_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return {
        **gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "mkldnn_bf16": bool(mkldnn_bf16()) if mkldnn_bf16 else None,
        "threads": torch.get_num_threads(),
        "loadavg_1min_at_start": loadavg(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", default=",".join(IMAGEBIND_MODALITIES), help="comma-separated towers (default: all six)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per measurement (median; default 2)")
    p.add_argument("--quick", action="store_true", help="one timed call per measurement")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 dynamic quantisation run")
    p.add_argument("--dtype", default="auto", help="the dtype compared with float32 (default: Embedder's auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: Embedder's choice)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the towers run (cuda: no int8 run; try --batches 1,32,256)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    mods = [m.strip() for m in args.modalities.split(",") if m.strip()]
    mods = ["vision" if m in ("image", "video") else m for m in mods]
    unknown = sorted(set(mods) - set(IMAGEBIND_MODALITIES))
    if unknown:
        raise SystemExit(f"unknown modalities {unknown}; choose from {', '.join(IMAGEBIND_MODALITIES)}")
    batches = sorted({int(b) for b in args.batches.split(",")})
    repeats = 1 if args.quick else max(1, args.repeats)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch build sees no CUDA GPU")
    auto = resolve_dtype(args.dtype, torch.device(args.device))
    int8 = not args.no_int8 and args.device == "cpu"  # dynamic quantisation is a CPU backend
    report: dict[str, Any] = {
        "model": "imagebind_huge architecture, random weights (seed 0)",
        "device": args.device,
        "environment": environment(args.device),
        "dtype_auto": str(auto).replace("torch.", ""),
        "batches": batches,
        "repeats": repeats,
        "modalities": {},
    }
    t0 = time.perf_counter()
    for m in dict.fromkeys(mods):
        report["modalities"][m] = bench_modality(m, batches, repeats, auto, int8, args.device)
    if "vision" in report["modalities"]:
        v = report["modalities"]["vision"]
        report["modalities"]["video (derived: 15 vision clips per item)"] = {
            k: {b: round(r / VIDEO_CLIPS, 4) for b, r in v[k]["items_per_s"].items()}
            for k in v
            if isinstance(v[k], dict) and "items_per_s" in v[k]
        }
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
