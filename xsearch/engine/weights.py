"""Model weights: name a model, download its checkpoint, convert it once, load only the towers needed.

A model is named either

* ``imagebind_huge`` (the default): the official checkpoint, downloaded from
  :data:`HUGE_URL` to ``<models_dir>/imagebind_huge.pth`` on first use, with
  :meth:`ImageBindConfig.huge`; or
* a directory holding ``config.json`` (keyword arguments of the original model
  constructor) and ``checkpoint.pth`` (a state dict saved with ``torch.save``).

``$XSEARCH_MODEL`` names the model when the caller does not.

On first use a checkpoint is split into one safetensors file per tower in
``<models_dir>/cache/<name>-<key>/`` (``vision``, ``text``, ``audio``, ``depth``,
``thermal``, ``imu``), plus ``config.json`` and a ``complete`` marker written
last. Loading then memory-maps only the towers asked for: a text query never
reads the 2.5 GB vision tower. Every file is written under a temporary name
and renamed into place, and a directory without the marker is rebuilt, so a
conversion killed half-way leaves nothing that passes for valid.

The cache key is ``sha256(size, config, first 16 MiB, last 16 MiB)`` (16 hex
digits), not a hash of the whole 4.8 GB file, which would take tens of seconds
on every start. It ignores mtimes and paths, so a copied checkpoint keeps its
cache. The two ends suffice for ``torch.save`` files: the head holds the
pickled key names, shapes and dtypes, and the tail holds the zip central
directory, which records a CRC-32 of every tensor, so changed weights change
the tail.

Security: checkpoints are only unpickled by ``torch.load(..., weights_only=True)``,
which refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pickle
import re
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
from xsearch.engine.modalities import IMAGEBIND_MODALITIES, tower
from xsearch.errors import ModelError, UsageError
from xsearch.paths import models_dir

HUGE = "imagebind_huge"
HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
HUGE_FILENAME = "imagebind_huge.pth"
# The official file's tensor data alone is 1,200,786,990 float32 values (see the
# golden shapes file); the zip container adds a few hundred KB. The exact file size
# is not pinned here (it could not be verified offline): the server's Content-Length
# is checked instead, and this floor rejects an error page or a truncated copy.
HUGE_MIN_SIZE = 1_200_786_990 * 4

# Said with the first download (and when it cannot happen): the official weights are not for every use.
HUGE_LICENCE = (
    "The ImageBind weights are licensed CC BY-NC-SA 4.0: non-commercial use only. For other uses, the OpenCLIP "
    "backend (xsearch.engine.OpenCLIPEmbedder: permissive weights, image and text only) works without them."
)

MODEL_ENV = "XSEARCH_MODEL"
OFFLINE_ENV = "XSEARCH_OFFLINE"
PROGRESS_ENV = "XSEARCH_PROGRESS"  # "always": draw the bar even when stderr is not a terminal
CONNECT_TIMEOUT = 10.0  # seconds; urllib applies it to the connect and to each read
MARKER = "complete"

_RETRIES = 3  # resumptions after a connection dropped mid-download
_CHUNK = 1 << 20
_HASH_SPAN = 16 << 20
_CACHE_FORMAT = 1
_DIR_FILES = ("config.json", "checkpoint.pth")
_KEY_RE = re.compile(r"^modality_(?:preprocessors|trunks|heads|postprocessors)\.([a-z]+)\.")


# ---------------------------------------------------------------- naming


@dataclass(frozen=True)
class _Spec:
    name: str  # the resolved name: HUGE or an absolute directory path
    label: str  # short, file-system safe
    checkpoint: Path
    config: ImageBindConfig
    url: str | None = None
    min_size: int | None = None


def _describe() -> str:
    return (
        f"a model is {HUGE!r} or a directory holding config.json (ImageBind constructor keywords) "
        "and checkpoint.pth (a state dict saved with torch.save)"
    )


def resolve_model_name(name: str | None = None) -> str:
    """The model to use: ``name``, else ``$XSEARCH_MODEL``, else ``imagebind_huge``.

    Returns ``"imagebind_huge"`` or the absolute path of a model directory.
    """
    raw = name or os.environ.get(MODEL_ENV, "").strip() or HUGE
    if raw == HUGE:
        return HUGE
    path = Path(raw).expanduser()
    if not path.exists():
        raise ModelError(f"{raw}: no such model; {_describe()}")
    if not path.is_dir():
        raise ModelError(f"{path}: not a model directory; {_describe()}")
    for f in _DIR_FILES:
        if not (path / f).is_file():
            raise ModelError(f"{path}: missing {f}; {_describe()}")
    return str(path.resolve())


def _spec(resolved: str) -> _Spec:
    if resolved == HUGE:
        return _Spec(HUGE, HUGE, models_dir() / HUGE_FILENAME, ImageBindConfig.huge(), HUGE_URL, HUGE_MIN_SIZE)
    path = Path(resolved)
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._") or "model"
    return _Spec(resolved, label, path / "checkpoint.pth", ImageBindConfig.from_json(path / "config.json"))


def checkpoint_path(name: str | None = None) -> Path:
    """Where the model's ``.pth`` is (or will be, once downloaded)."""
    return _spec(resolve_model_name(name)).checkpoint


# ---------------------------------------------------------------- cache key

_key_memo: dict[tuple[Any, ...], str] = {}


def _config_json(config: ImageBindConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _checkpoint_key(path: Path, config: ImageBindConfig) -> str:
    """Size + config + sha256 of both 16 MiB ends (see the module docstring for why that suffices)."""
    st = path.stat()
    cfg = _config_json(config)
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, cfg)  # mtime only to skip re-hashing in-process
    if memo not in _key_memo:
        h = hashlib.sha256(f"xsearch-checkpoint-v1\n{st.st_size}\n{cfg}\n".encode())
        with open(path, "rb") as f:
            if st.st_size <= 2 * _HASH_SPAN:
                h.update(f.read())
            else:
                h.update(f.read(_HASH_SPAN))
                f.seek(st.st_size - _HASH_SPAN)
                h.update(f.read(_HASH_SPAN))
        _key_memo[memo] = h.hexdigest()[:16]
    return _key_memo[memo]


def _cache_dir(spec: _Spec, checkpoint: Path) -> Path:
    return models_dir() / "cache" / f"{spec.label}-{_checkpoint_key(checkpoint, spec.config)}"


def _missing_checkpoint(spec: _Spec) -> ModelError:
    return ModelError(
        f"{spec.checkpoint}: checkpoint not downloaded yet; it comes from {spec.url} "
        "(load the model once with network access, or put the file there yourself)"
    )


def cache_dir(name: str | None = None) -> Path:
    """The model's converted-weights directory (which may not exist yet). Needs the checkpoint."""
    spec = _spec(resolve_model_name(name))
    if not spec.checkpoint.is_file():
        raise _missing_checkpoint(spec)
    return _cache_dir(spec, spec.checkpoint)


def model_id(name: str | None = None) -> str:
    """A short stable identifier of the weights, recorded by the store with each vector.

    ``"imagebind_huge"`` for the official checkpoint, ``"dir:<basename>-<key8>"`` for a
    model directory (the key changes when the checkpoint or config does).
    """
    spec = _spec(resolve_model_name(name))
    if spec.name == HUGE:
        return HUGE
    return f"dir:{spec.label}-{_checkpoint_key(spec.checkpoint, spec.config)[:8]}"


def same_model(a: str, b: str) -> bool:
    """Whether two model ids name the same weights. A model folder's id ends with a key of its checkpoint
    and config: a copy of the folder under another name is the same model, though its label differs."""
    if a == b:
        return True
    if a.startswith("dir:") and b.startswith("dir:"):
        return a.rsplit("-", 1)[-1] == b.rsplit("-", 1)[-1]
    return False


def cached_files(name: str | None = None) -> dict[str, Path]:
    """``{tower: .safetensors path, "config": config.json}`` of a completed conversion, else ``{}``.

    Never downloads or converts anything.
    """
    spec = _spec(resolve_model_name(name))
    if not spec.checkpoint.is_file():
        return {}
    cache = _cache_dir(spec, spec.checkpoint)
    if not (cache / MARKER).is_file():
        return {}
    files = {m: cache / f"{m}.safetensors" for m in IMAGEBIND_MODALITIES}
    files["config"] = cache / "config.json"
    return files


# ---------------------------------------------------------------- download


class _Interrupted(Exception):
    """The connection broke after the download started: worth resuming."""


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _manual_hint(url: str, dest: Path, reason: str, size: int | None) -> str:
    size_note = f" ({size:,} bytes)" if size else ""
    return (
        f"cannot download {url}: {reason}. Download that file yourself (for example on another "
        f"machine) and put it at {dest}{size_note}, or use another model: --model DIR or {MODEL_ENV}=DIR "
        "(a directory with config.json + checkpoint.pth)."
    )


def _show_progress(progress: bool | str) -> tuple[bool, bool]:
    """(draw a bar, force terminal rendering)."""
    forced = progress == "always" or (bool(progress) and os.environ.get(PROGRESS_ENV) == "always")
    return forced or (bool(progress) and sys.stderr.isatty()), forced


@contextlib.contextmanager
def _progress_bar(progress: bool | str, label: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    show, forced = _show_progress(progress)
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True, force_terminal=True if forced else None)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never write the same download or cache."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; temp names + os.replace still keep files whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes a-b/N`` or ``bytes */N`` -> (a, N)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m[1]) if m[1] is not None else None
    return start, (int(m[2]) if m[2] != "*" else None)


def _open(url: str, part: Path, have: int, timeout: float, dest: Path, size: int | None):
    headers = {"User-Agent": "xsearch", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: complete already, or the file changed
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if total == have:
                return None
            part.unlink(missing_ok=True)
            raise _Interrupted(f"server refused to resume {part}; starting over") from e
        raise ModelError(_manual_hint(url, dest, f"HTTP {e.code} {e.reason}", size)) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise ModelError(_manual_hint(url, dest, str(reason), size)) from e


def _fetch_once(url: str, part: Path, dest: Path, expected_size: int | None, progress: bool | str, timeout: float) -> int | None:
    """Append what the server has beyond ``part``'s length; return the full size if the server said."""
    have = part.stat().st_size if part.exists() else 0
    resp = _open(url, part, have, timeout, dest, expected_size)
    if resp is None:
        return have
    with resp:
        if have and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Interrupted(f"server resumed at byte {start}, not {have}; starting over")
        else:  # a fresh download, or a server that ignores Range: start from zero
            have, total = 0, None
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"{url} is {total:,} bytes, expected {expected_size:,}; not the file xsearch expects. "
                f"Put the right file at {dest} yourself."
            )
        _stream(resp, part, have, total, progress, dest.name)
    return total


def _stream(resp: Any, part: Path, have: int, total: int | None, progress: bool | str, label: str) -> None:
    try:
        with open(part, "ab" if have else "wb") as f, _progress_bar(progress, label, total, have) as advance:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Interrupted(str(e) or type(e).__name__) from e
                if not chunk:
                    break
                f.write(chunk)
                advance(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ModelError(f"{part}: cannot write the download ({e}); free some space or fix the permissions") from e


def download(
    url: str,
    dest: str | os.PathLike,
    expected_size: int | None = None,
    progress: bool | Literal["always"] = True,
    *,
    min_size: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest`` (returned at once if it exists) with urllib only.

    Bytes go to ``dest + ".part"``, which a later call resumes with an HTTP Range
    request; the file is renamed to ``dest`` only once complete and of the right
    size (``expected_size``, else the server's length; at least ``min_size``).
    A bar is drawn on stderr when ``progress`` and stderr is a terminal
    (``progress="always"`` or ``$XSEARCH_PROGRESS=always`` forces it).
    ``$XSEARCH_OFFLINE=1`` forbids the network. Failing to connect raises
    :class:`ModelError` within ``timeout`` seconds, naming the URL and ``dest``.
    """
    dest = Path(dest)
    if _offline():
        raise ModelError(_manual_hint(url, dest, f"{OFFLINE_ENV} is set", expected_size))
    part = dest.with_name(dest.name + ".part")
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another process finished it while we waited for the lock
            return dest
        total = _fetch_with_resume(url, part, dest, expected_size, progress, timeout)
        _check_size(part, dest, url, expected_size if expected_size is not None else total, min_size)
        os.replace(part, dest)
    return dest


def _fetch_with_resume(url: str, part: Path, dest: Path, expected_size: int | None, progress: bool | str, timeout: float) -> int | None:
    error = ""
    for _ in range(_RETRIES + 1):
        try:
            total = _fetch_once(url, part, dest, expected_size, progress, timeout)
        except _Interrupted as e:
            error = str(e)
            continue
        size = part.stat().st_size if part.exists() else 0
        if total is None or size >= total:
            return total
        error = f"connection closed after {size:,} of {total:,} bytes"
    raise ModelError(
        f"downloading {url} to {dest} kept failing ({error}). The partial file {part} is kept: "
        "run again to resume, or put the complete file at "
        f"{dest} yourself."
    )


def _check_size(part: Path, dest: Path, url: str, want: int | None, min_size: int | None) -> None:
    size = part.stat().st_size
    expected = None
    if want is not None and size != want:
        expected = f"{want:,} bytes"
    elif min_size is not None and size < min_size:
        expected = f"at least {min_size:,} bytes"
    if expected:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{url} gave {size:,} bytes, expected {expected}; the download was discarded. "
            f"Try again, or put the right file at {dest} yourself."
        )


def _ensure_checkpoint(spec: _Spec, progress: bool | str) -> Path:
    ckpt = spec.checkpoint
    if not ckpt.is_file():
        if spec.url is None:
            raise ModelError(f"{ckpt}: missing; {_describe()}")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        licence = HUGE_LICENCE if spec.name == HUGE else ""
        if licence and not _offline():
            print(f"xsearch: downloading {spec.url} to {ckpt} (once). {licence}", file=sys.stderr, flush=True)
        try:
            download(spec.url, ckpt, progress=progress, min_size=spec.min_size)
        except ModelError as e:
            raise ModelError(f"{e} {licence}".rstrip()) from e
    if spec.min_size is not None and ckpt.stat().st_size < spec.min_size:
        raise ModelError(
            f"{ckpt}: {ckpt.stat().st_size:,} bytes, but the {spec.name} checkpoint is at least "
            f"{spec.min_size:,}; delete it (it will be downloaded again from {spec.url})"
        )
    return ckpt


# ---------------------------------------------------------------- conversion


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict, memory-mapped. Only ``weights_only`` unpickling, ever."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            # A pre-1.6 (non-zip) file cannot be mapped; read it whole, still weights-only.
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{path}: refused to load: it holds more than tensors (or is not a PyTorch checkpoint). "
            "xsearch only reads plain state dicts; re-save it with torch.save(model.state_dict())."
        ) from e
    except Exception as e:  # truncated zip, I/O error...
        raise ModelError(f"{path}: cannot read the checkpoint ({e}); it may be incomplete: delete it and get it again") from e
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ModelError(f"{path}: not a state dict (a mapping of names to tensors); save it with torch.save(model.state_dict())")
    return dict(sd)


def modality_of_key(key: str) -> str | None:
    """The tower a state-dict key belongs to (``modality_<part>.<tower>.``...), or None."""
    m = _KEY_RE.match(key)
    return m[1] if m and m[1] in IMAGEBIND_MODALITIES else None


def split_state_dict(sd: Mapping[str, torch.Tensor], source: str | os.PathLike = "state dict") -> dict[str, dict[str, torch.Tensor]]:
    """``{tower: {key: tensor}}``; every key must belong to exactly one tower."""
    groups: dict[str, dict[str, torch.Tensor]] = {m: {} for m in IMAGEBIND_MODALITIES}
    unknown = []
    for k, v in sd.items():
        m = modality_of_key(k)
        if m is None:
            unknown.append(k)
        else:
            groups[m][k] = v
    if unknown:
        raise ModelError(
            f"{os.fspath(source)}: {len(unknown)} key(s) belong to no ImageBind tower, e.g. {', '.join(unknown[:3])}; "
            "expected keys like modality_trunks.<vision|text|audio|depth|thermal|imu>.*"
        )
    return groups


def _check_against_config(sd: Mapping[str, torch.Tensor], config: ImageBindConfig, source: Path) -> None:
    """Catch a config.json that does not describe the checkpoint before writing anything."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ImageBindModel(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    problems = []
    if missing := sorted(expected.keys() - got.keys()):
        problems.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    if extra := sorted(got.keys() - expected.keys()):
        problems.append(f"{len(extra)} unexpected key(s), e.g. {', '.join(extra[:3])}")
    if shapes := sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k]):
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {k}: checkpoint {list(got[k])}, config {list(expected[k])}")
    if problems:
        raise ModelError(f"{source}: does not match its configuration ({'; '.join(problems)}); check config.json")


def _packed(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors wants contiguous tensors that own their storage; copy only those that do not."""
    out, seen = {}, set()
    for k, v in tensors.items():
        storage = v.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != v.numel() * v.element_size()
        seen.add(storage.data_ptr())
        out[k] = v.clone(memory_format=torch.contiguous_format) if shared or not v.is_contiguous() else v
    return out


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _verify_split(cache: Path, sd: Mapping[str, torch.Tensor]) -> None:
    """Re-read the headers written: each checkpoint key in exactly one file, with its shape."""
    seen: dict[str, str] = {}
    for m in IMAGEBIND_MODALITIES:
        with safe_open(cache / f"{m}.safetensors", framework="pt") as f:
            for k in f.keys():
                if k in seen or k not in sd or list(f.get_slice(k).get_shape()) != list(sd[k].shape):
                    raise ModelError(f"{cache}: conversion produced a bad {m}.safetensors (key {k}); delete {cache} and run again")
                seen[k] = m
    if len(seen) != len(sd):
        raise ModelError(f"{cache}: conversion lost {len(sd) - len(seen)} key(s); delete {cache} and run again")


def _convert(checkpoint: Path, config: ImageBindConfig, cache: Path, key: str) -> None:
    if cache.exists():  # leftovers of an interrupted conversion (no marker): start clean
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    sd = _load_checkpoint(checkpoint)
    groups = split_state_dict(sd, checkpoint)
    _check_against_config(sd, config, checkpoint)
    files = {}
    for m, tensors in groups.items():
        path = cache / f"{m}.safetensors"
        meta = {"format": "pt", "modality": m, "source": checkpoint.name}
        _write_atomic(path, lambda tmp, t=tensors, md=meta: save_file(_packed(t), tmp, metadata=md))
        files[path.name] = path.stat().st_size
    _verify_split(cache, sd)
    _write_atomic(cache / "config.json", lambda tmp: tmp.write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8"))
    marker = {"format": _CACHE_FORMAT, "key": key, "checkpoint": str(checkpoint), "files": files}
    _write_atomic(cache / MARKER, lambda tmp: tmp.write_text(json.dumps(marker, indent=1), encoding="utf-8"))


def ensure_converted(name: str | None = None, progress: bool | Literal["always"] = True) -> Path:
    """Download (``imagebind_huge``) and convert the checkpoint if needed; return the cache directory.

    The conversion needs about the checkpoint's size again in disk space.
    """
    spec = _spec(resolve_model_name(name))
    ckpt = _ensure_checkpoint(spec, progress)
    cache = _cache_dir(spec, ckpt)
    if (cache / MARKER).is_file():
        return cache
    with _file_lock(cache.with_name(cache.name + ".lock")):
        if not (cache / MARKER).is_file():  # another process may have finished meanwhile
            _convert(ckpt, spec.config, cache, cache.name.rsplit("-", 1)[-1])
    return cache


# ---------------------------------------------------------------- loading


def _towers(modalities: Iterable[str] | str | None) -> tuple[str, ...]:
    if modalities is None:
        return IMAGEBIND_MODALITIES
    if isinstance(modalities, str):
        modalities = [modalities]
    wanted = {tower(m) for m in modalities}
    if not wanted:
        raise UsageError("no modality asked for; name at least one of " + ", ".join(IMAGEBIND_MODALITIES))
    return tuple(m for m in IMAGEBIND_MODALITIES if m in wanted)


def _damaged(cache: Path, what: str) -> ModelError:
    return ModelError(f"{what} in the converted-weights cache {cache}; delete that directory and run again to rebuild it")


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _st_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _read_cast(path: Path, header: Mapping[str, Any], base: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor read through one scratch buffer and cast to ``dtype`` at once (floating point only).

    Mapping the file and casting the model afterwards keeps the file's pages resident
    beside the cast copy (the huge text tower: 1.4 GB float32 + 0.7 GB bf16 at the peak);
    here the stored copy never exceeds the largest tensor.
    """
    spans = {k: v["data_offsets"] for k, v in header.items()}
    scratch = torch.empty(max((b - a for a, b in spans.values()), default=0), dtype=torch.uint8)
    buf = memoryview(scratch.numpy())
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for k, info in header.items():
            a, b = spans[k]
            f.seek(base + a)
            done = 0
            while done < b - a:
                got = f.readinto(buf[done : b - a])
                if not got:
                    raise ValueError(f"{k}: the file ends early")
                done += got
            t = scratch[: b - a].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
            out[k] = t.to(dtype, copy=True) if t.is_floating_point() else t.clone()
    return out


def _read_tower(cache: Path, m: str, sizes: Mapping[str, int], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A tower's tensors: memory-mapped as stored, or (``dtype`` given and different) read and cast one by one."""
    path = cache / f"{m}.safetensors"
    if not path.is_file():
        raise _damaged(cache, f"{path.name} is missing")
    if sizes.get(path.name) not in (None, path.stat().st_size):
        raise _damaged(cache, f"{path.name} has the wrong size")
    try:
        if dtype is not None:
            header, base = _st_header(path)
            floats = [_ST_DTYPES[v["dtype"]] for v in header.values() if _ST_DTYPES[v["dtype"]].is_floating_point]
            if any(d != dtype for d in floats):
                return _read_cast(path, header, base, dtype)
        return load_file(path)  # memory-mapped: pages are read when the tower runs
    except Exception as e:
        raise _damaged(cache, f"{path.name} is unreadable ({e})") from e


def _marker_sizes(cache: Path) -> dict[str, int]:
    try:
        return dict(json.loads((cache / MARKER).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(cache, f"the {MARKER} marker is unreadable ({e})") from e


def load_imagebind(
    name: str | None = None,
    modalities: Iterable[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    progress: bool | Literal["always"] = True,
) -> ImageBindModel:
    """An ImageBind model with only the towers for ``modalities`` (default: all), ready for inference.

    ``modalities`` are ImageBind names or user names (``image``/``video`` -> ``vision``).
    The model is built on the meta device and its tensors are assigned straight
    from the memory-mapped safetensors files, so no second copy is allocated; on
    the CPU a ``dtype`` other than the stored one is applied while reading, tensor
    by tensor, so the stored copy is never resident as a whole. ``device`` then
    moves it. Returned in eval mode without grads.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise UsageError(f"dtype must be a floating-point type, not {dtype}")
    towers = _towers(modalities)
    cache = ensure_converted(name, progress)
    sizes = _marker_sizes(cache)
    if not (cache / "config.json").is_file():
        raise _damaged(cache, "config.json is missing")
    config = ImageBindConfig.from_json(cache / "config.json")
    with torch.device("meta"):
        model = ImageBindModel(config, modalities=towers)
    sd: dict[str, torch.Tensor] = {}
    cast = dtype if torch.device(device).type == "cpu" else None
    for m in towers:
        sd.update(_read_tower(cache, m, sizes, cast))
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise _damaged(cache, f"the weights do not fit the model ({e})") from e
    if leftover := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise _damaged(cache, f"no weights for {', '.join(leftover[:3])}")
    model.to(device=torch.device(device), dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
