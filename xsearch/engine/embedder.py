"""Files and tensors -> L2-normalised embedding vectors, with ImageBind.

``Embedder`` is the one object the indexer and the query side talk to:

* ``load(modality, path)`` decodes ONE file into the model's input tensor (thread
  safe, no model needed: the indexer's workers call it in parallel);
* ``embed_tensors(modality, batch)`` runs the model on a batch of loaded items;
* ``embed(modality, items)`` / ``embed_paths(modality, paths)`` do both.

Towers are loaded lazily: a text-only session never reads the vision weights.
Weights are stored in the compute dtype (bfloat16 where the hardware runs it
fast), not autocast over float32 weights, so each matmul reads half the bytes.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import threading
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xsearch.engine.imagebind import _MAX_LOGIT_SCALE, ImageBindConfig, ImageBindModel
from xsearch.engine.modalities import IMAGEBIND_MODALITIES, MODALITIES, tower
from xsearch.errors import ModelError, UsageError

__all__ = [
    "Embedder",
    "canonical_modality",
    "configure_threads",
    "cpu_has_fast_bf16",
    "default_batch_size",
    "resolve_chunk",
    "resolve_device",
    "resolve_dtype",
]

# Per user-facing modality: the number of dimensions of ONE clip (one model input row).
# A batch is then (B, *clip) = one clip per item, or (B, S, *clip) = S clips per item, averaged.
_CLIP_NDIM = {"image": 3, "video": 4, "audio": 3, "depth": 3, "thermal": 3, "imu": 2, "text": 1}

# Single-file loaders, imported on first use so that e.g. PyAV is only needed for video.
_LOADERS = {
    "image": ("xsearch.engine.preprocess.image", "load_image"),
    "video": ("xsearch.engine.preprocess.video", "load_video"),
    "audio": ("xsearch.engine.preprocess.audio", "load_audio"),
    "depth": ("xsearch.engine.preprocess.depth", "load_depth"),
    "thermal": ("xsearch.engine.preprocess.thermal", "load_thermal"),
    "imu": ("xsearch.engine.preprocess.imu", "load_imu"),
}

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

# Clips per forward pass: bounds activation memory (a batch of 8 videos is 120 vision clips). A GPU
# needs far larger batches to fill its units; ViT-H activations for 256 clips in bf16 are < 2 GB.
DEFAULT_CHUNK = 32
GPU_CHUNK = 256


# ---------------------------------------------------------------- device, dtype, threads


def canonical_modality(modality: str) -> str:
    """User-facing modality name ("vision" -> "image"); UsageError for an unknown one."""
    if modality == "vision":
        return "image"
    tower(modality)  # raises UsageError naming the valid choices
    return modality


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return dev


def default_batch_size(device: str | torch.device = "auto") -> int:
    """Files per embedding batch in an index run: 8 on the CPU (bigger batches gain ~5% there and hold
    more memory), 64 on a GPU, which needs many items in flight to be busy."""
    return 64 if resolve_device(device).type == "cuda" else 8


def resolve_chunk(chunk_size: int | None, device: torch.device) -> int:
    """Clips per forward pass: the given size, else DEFAULT_CHUNK on the CPU and GPU_CHUNK on a GPU."""
    if chunk_size is None:
        return GPU_CHUNK if device.type == "cuda" else DEFAULT_CHUNK
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be >= 1, not {chunk_size}")
    return int(chunk_size)


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 matmul instructions (AMX or AVX512_BF16), so bf16 beats fp32."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # private API: absent or broken on some builds
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA (float16 on GPUs without bf16) and on CPUs with bf16 units, else float32."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise UsageError(f"dtype {dtype} is not a floating-point type; use float32, bfloat16 or float16")
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def _usable_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


_threads_configured = False


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count once per process and return it.

    An explicit ``num_threads`` wins. Otherwise a user's OMP_NUM_THREADS /
    MKL_NUM_THREADS is left alone; failing that, torch's default (one thread per
    physical core of the host) is only lowered to the CPUs this process may use,
    because oversubscribing a container's quota makes every GEMM slower.
    """
    global _threads_configured
    if num_threads is not None:
        if num_threads < 1:
            raise UsageError(f"num_threads must be >= 1, not {num_threads}")
        torch.set_num_threads(num_threads)
    elif not _threads_configured and not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        usable = _usable_cpus()
        if torch.get_num_threads() > usable:
            torch.set_num_threads(usable)
    _threads_configured = True
    return torch.get_num_threads()


# ---------------------------------------------------------------- batching helpers


def _flatten_clips(modality: str, batch: Tensor | Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """A batch -> (all clips stacked as (N, *clip), clips per item).

    Accepts a tensor ``(B, *clip)`` (one clip per item), ``(B, S, *clip)`` (S clips
    per item), or a list of per-item tensors ``clip`` / ``(S_i, *clip)`` whose clip
    counts may differ (IMU windows, clips of short recordings).
    """
    k = _CLIP_NDIM[modality]
    if isinstance(batch, Tensor):
        if batch.ndim == k + 1:
            return batch, [1] * batch.shape[0]
        if batch.ndim == k + 2:
            B, S = batch.shape[:2]
            return batch.reshape(B * S, *batch.shape[2:]), [S] * B
        raise UsageError(
            f"{modality} batch has shape {tuple(batch.shape)}; expected {k + 1} dimensions "
            f"(items, *clip) or {k + 2} (items, clips, *clip), or a list of per-item tensors"
        )
    items = list(batch)
    clips: list[Tensor] = []
    counts: list[int] = []
    for i, t in enumerate(items):
        if not isinstance(t, Tensor) or t.ndim not in (k, k + 1):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise UsageError(f"{modality} item {i} is {shape}; expected a tensor with {k} or {k + 1} dimensions")
        t = t.unsqueeze(0) if t.ndim == k else t
        if t.shape[0] == 0:
            raise UsageError(f"{modality} item {i} has no clips/windows to embed")
        clips.append(t)
        counts.append(t.shape[0])
    if not clips:
        return torch.empty(0), []
    shapes = {tuple(c.shape[1:]) for c in clips}
    if len(shapes) > 1:
        raise UsageError(f"{modality} items have different clip shapes {sorted(shapes)}; they cannot share a batch")
    return torch.cat(clips), counts


def _average_clips(out: Tensor, counts: list[int]) -> Tensor:
    """Per-item mean of the per-clip (scaled, not renormalised) outputs, as the original model does."""
    if all(c == 1 for c in counts):
        return out
    if len(set(counts)) == 1:
        return out.reshape(len(counts), counts[0], -1).mean(dim=1)
    return torch.stack([seg.mean(dim=0) for seg in out.split(counts)])


def _served(modalities: Iterable[str]) -> tuple[str, ...]:
    """User-facing modalities whose towers the given modalities need (image <-> video share one)."""
    towers = {tower(canonical_modality(m)) for m in modalities}
    if not towers:
        raise UsageError("modalities is empty; name at least one of " + ", ".join(MODALITIES))
    return tuple(m for m in MODALITIES if tower(m) in towers)


def _as_list(items: Sequence, modality: str) -> list:
    if isinstance(items, (str, bytes, os.PathLike)):  # a lone string would be iterated letter by letter
        raise UsageError(f"{modality} items must be a list (of paths or texts), not a single {type(items).__name__}")
    return list(items)


def _as_path(item: object, modality: str) -> str | os.PathLike:
    if not isinstance(item, (str, os.PathLike)):
        raise UsageError(f"{modality} items must be file paths, not {type(item).__name__}")
    return item


class BatchEmbedder:
    """``embed`` / ``embed_paths`` on top of a subclass's ``load``, ``tokenize`` and ``embed_tensors``."""

    def _init_runtime(self, device: str | torch.device, dtype: str | torch.dtype, num_threads: int | None,
                      chunk_size: int | None) -> None:
        """Where and how the model runs: device, compute dtype, CPU threads, clips per forward pass."""
        self._device = resolve_device(device)
        self._dtype = resolve_dtype(dtype, self._device)
        if self._device.type == "cpu" or num_threads is not None:
            configure_threads(num_threads)
        self.chunk_size = resolve_chunk(chunk_size, self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def load(self, modality: str, path: str | os.PathLike) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_tensors(self, modality: str, batch: Tensor | Sequence[Tensor]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_modality(self, modality: str) -> str:
        return canonical_modality(modality)

    def embed(self, modality: str, items: Sequence[str | os.PathLike], batch_size: int = 8, *,
              scaled: bool = False) -> np.ndarray:
        """Embed items: file paths, except for ``"text"`` where a ``str`` is the text itself
        (an ``os.PathLike`` such as ``pathlib.Path`` is read as a text file).

        Returns float32 ``(len(items), dim)``, rows L2-normalised (``scaled``: the model's own outputs,
        see ``embed_tensors``). Raises MediaError naming the first file that cannot be decoded.
        """
        m = self._check_modality(modality)
        items = _as_list(items, m)
        if m != "text":
            return self.embed_paths(m, items, batch_size, scaled=scaled)
        for it in items:
            if not isinstance(it, (str, os.PathLike)):
                raise UsageError(f"text items must be str (texts) or paths, not {type(it).__name__}")

        def text_batch(chunk: Sequence[str | os.PathLike]) -> Tensor:
            texts = [it for it in chunk if isinstance(it, str)]
            tokens = iter(self.tokenize(texts)) if texts else iter(())
            return torch.stack([next(tokens) if isinstance(it, str) else self.load("text", it) for it in chunk])

        return self._run_batches(m, items, batch_size, text_batch, scaled)

    def embed_paths(self, modality: str, paths: Sequence[str | os.PathLike], batch_size: int = 8, *,
                    scaled: bool = False) -> np.ndarray:
        """Embed files of any modality (text files too): ``(len(paths), dim)`` float32, unit rows."""
        m = self._check_modality(modality)
        paths = [_as_path(p, m) for p in _as_list(paths, m)]
        return self._run_batches(m, paths, batch_size, lambda chunk: [self._load_quietly(m, p) for p in chunk], scaled)

    def _load_quietly(self, modality: str, path: str | os.PathLike) -> Tensor:
        # A query file's decoder warnings must not reach the terminal either (see preprocess.noise).
        from xsearch.engine.preprocess.noise import capture

        with capture(path):
            return self.load(modality, path)

    embed_files = embed_paths

    def _run_batches(
        self, modality: str, items: Sequence, batch_size: int, make: Callable[[Sequence], Tensor | list[Tensor]],
        scaled: bool = False,
    ) -> np.ndarray:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, not {batch_size}")
        extra = {"scaled": True} if scaled else {}  # only embedders with logit scales take the keyword
        parts = [self.embed_tensors(modality, make(items[i : i + batch_size]), **extra)
                 for i in range(0, len(items), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)


def _import_loader(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(module), name)


def _weights():
    # Imported late: the weights module pulls in download/cache machinery a prebuilt model never needs.
    return importlib.import_module("xsearch.engine.weights")


# ---------------------------------------------------------------- the embedder


class Embedder(BatchEmbedder):
    """ImageBind embeddings of files and texts, L2-normalised float32 rows.

    ``model``: a model name (``"imagebind_huge"``, default) or a directory with
    ``config.json`` + ``checkpoint.pth``, whose towers are loaded on first use of
    their modality; or an already built :class:`ImageBindModel`, which is used as
    is and moved/cast IN PLACE to ``device``/``dtype`` (no copy of a 4.8 GB model).

    ``modalities``: the modalities this embedder serves. Given, the first use
    loads all their towers in one read of the checkpoint, and modalities of
    other towers are refused ("image" and "video" share the vision tower, so
    either allows both); None, any modality is allowed and each tower is
    loaded alone the first time it is needed.

    ``dtype``: ``"auto"`` (bf16 on CUDA and on CPUs with bf16 units, else
    float32), ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype.
    LayerNorm, softmax and norm reductions accumulate in float32 inside torch's
    bf16 kernels; the returned vectors are renormalised in float32.
    """

    def __init__(
        self,
        model: str | os.PathLike | ImageBindModel | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        modalities: Iterable[str] | None = None,
        *,
        num_threads: int | None = None,
        chunk_size: int | None = None,
        model_id: str | None = None,
    ):
        self._init_runtime(device, dtype, num_threads, chunk_size)
        self._modalities = None if modalities is None else _served(modalities)
        self._lock = threading.Lock()
        self._models: dict[str, ImageBindModel] = {}  # tower -> the model object holding it
        self._model_id = model_id
        self._prebuilt = isinstance(model, ImageBindModel)
        if isinstance(model, ImageBindModel):
            self._name = None
            self._adopt(model)
        else:
            self._name = None if model is None else os.fspath(model)

    # ------------------------------------------------------------ properties

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this embedder accepts."""
        return self._modalities if self._modalities is not None else MODALITIES

    @property
    def loaded_towers(self) -> tuple[str, ...]:
        """ImageBind towers whose weights are in memory now (in ImageBind's order)."""
        return tuple(m for m in IMAGEBIND_MODALITIES if m in self._models)

    @property
    def models(self) -> list[ImageBindModel]:
        """The distinct model objects loaded so far (one per load of a set of towers)."""
        return list({id(m): m for m in self._models.values()}.values())

    @property
    def dim(self) -> int:
        """Length of the embedding vectors."""
        return self._config().out_embed_dim

    @property
    def model_id(self) -> str:
        """Identifies the weights; recorded with each vector so incompatible vectors are never mixed."""
        if self._model_id is None:
            if self._prebuilt:
                cfg = json.dumps(self.models[0].config.to_dict(), sort_keys=True)
                self._model_id = "imagebind-custom-" + hashlib.sha256(cfg.encode()).hexdigest()[:12]
            else:
                self._model_id = _weights().model_id(self._name)
        return self._model_id

    # ------------------------------------------------------------ models

    def _adopt(self, model: ImageBindModel) -> None:
        model.to(device=self._device, dtype=self._dtype).eval().requires_grad_(False)
        for t in model.modalities:
            self._models[t] = model
        if self._modalities is not None:
            missing = sorted({tower(m) for m in self._modalities} - set(model.modalities))
            if missing:
                raise ModelError(f"the given model has no {', '.join(missing)} tower(s) for the requested modalities")

    def _config(self) -> ImageBindConfig:
        if self._models:
            return self.models[0].config
        resolved = _weights().resolve_model_name(self._name)
        if os.path.isdir(resolved):  # a model directory: its config.json, no weights read
            return ImageBindConfig.from_json(os.path.join(resolved, "config.json"))
        return ImageBindConfig.huge()

    def model_for(self, modality: str) -> ImageBindModel:
        """The model holding ``modality``'s tower, loading it on first use."""
        m = canonical_modality(modality)
        if self._modalities is not None and m not in self._modalities:
            raise UsageError(
                f"this embedder was created for {', '.join(self._modalities)} only; "
                f"create it with modalities including {m!r}"
            )
        t = tower(m)
        model = self._models.get(t)
        if model is not None:
            return model
        with self._lock:
            if t not in self._models:
                if self._prebuilt:
                    raise ModelError(f"the given model has no {t} tower; build it with {t!r} in its modalities")
                self._load_towers(t)
            return self._models[t]

    def _load_towers(self, t: str) -> None:
        wanted = [t]
        if self._modalities is not None:  # one read of the checkpoint for every declared tower
            wanted = list(dict.fromkeys(tower(m) for m in self._modalities if tower(m) not in self._models))
        model = _weights().load_imagebind(self._name, modalities=wanted, device=self._device, dtype=self._dtype)
        model.to(device=self._device, dtype=self._dtype).eval().requires_grad_(False)
        for name in model.modalities:
            self._models.setdefault(name, model)

    # ------------------------------------------------------------ decoding

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Texts -> ``LongTensor[N, 77]`` (the CLIP tokenizer of the original)."""
        return _import_loader("xsearch.engine.preprocess.text", "tokenize")(list(texts))

    def load(self, modality: str, path: str | os.PathLike) -> Tensor:
        """Decode ONE file into the model's input (no batch axis). Raises MediaError naming the file.

        image (3,224,224); video (15,3,2,224,224); audio (3,1,128,204); depth and
        thermal (1,224,224); imu (W,6,2000); text: a text file's token ids (77,).
        Needs no model, so worker threads may call it in parallel.
        """
        m = canonical_modality(modality)
        if m == "text":
            text = _import_loader("xsearch.engine.preprocess.text", "load_text")(path)
            return self.tokenize([text])[0]
        return _import_loader(*_LOADERS[m])(path)

    # ------------------------------------------------------------ embedding

    def embed_tensors(self, modality: str, batch: Tensor | Sequence[Tensor], *, scaled: bool = False) -> np.ndarray:
        """Embed a batch of loaded items: float32 ``(B, dim)``, rows L2-normalised.

        ``scaled``: the original model's outputs instead, not normalised: each clip's unit vector times
        the tower's logit scale (``logit_scale``), averaged over an item's clips. Zero-shot
        probabilities are a softmax over their products with the scaled text outputs.

        ``batch`` is ``(B, *clip)``, ``(B, clips, *clip)`` (clips averaged per item),
        or a list of per-item tensors as ``load`` returns them (clip counts may
        differ, e.g. IMU items with different numbers of 5-second windows).
        A clip is (3,H,W) image, (3,2,H,W) video, (1,128,204) audio, (1,H,W)
        depth/thermal, (6,2000) imu, (77,) text tokens.
        """
        m = canonical_modality(modality)
        clips, counts = _flatten_clips(m, batch)
        if not counts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model_for(m)
        out = torch.cat([self._forward(model, m, chunk) for chunk in clips.split(self.chunk_size)])
        out = _average_clips(out, counts)
        return out.numpy() if scaled else F.normalize(out, dim=-1).numpy()

    def logit_scale(self, modality: str) -> float:
        """The factor the model's postprocessor multiplies ``modality``'s unit vectors by: the text tower's
        learned scale, the fixed ones of audio, depth, thermal and IMU (each min(exp(log scale), 100)),
        1 for images and video (the vision tower has none). Read from the checkpoint: a tower that is
        not loaded is not loaded for it."""
        t = tower(canonical_modality(modality))
        if t == "vision":
            return 1.0
        key = f"modality_postprocessors.{t}.1.log_logit_scale"
        model = self._models.get(t)
        if model is not None:
            log_scale = float(model.modality_postprocessors[t][1].log_logit_scale.float())
        elif self._prebuilt:
            raise ModelError(f"the given model has no {t} tower; build it with {t!r} in its modalities")
        else:
            from safetensors import safe_open

            path = _weights().ensure_converted(self._name) / f"{t}.safetensors"
            with safe_open(path, framework="pt") as f:
                log_scale = float(f.get_tensor(key).float())
        return min(math.exp(log_scale), _MAX_LOGIT_SCALE)

    @torch.inference_mode()
    def _forward(self, model: ImageBindModel, modality: str, chunk: Tensor) -> Tensor:
        if modality == "text":
            x = chunk.to(self._device, torch.long)
        else:
            x = chunk.to(self._device, self._dtype)
        if x.ndim >= 5:
            # A batch of video clips: the model reads >=5-D input as (items, clips, ...), so one clip per item.
            x = x.unsqueeze(1)
        return model.embed(tower(modality), x).float().cpu()
