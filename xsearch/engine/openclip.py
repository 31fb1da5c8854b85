"""An OpenCLIP model behind the :class:`~xsearch.engine.embedder.Embedder` interface (image and text only).

Weights always come from a local file: xsearch never lets open_clip download.
Only architectures whose text side is built into open_clip work offline: those
with the CLIP byte-pair tokenizer and a native text transformer (ViT-B-32,
ViT-L-14, ...). Architectures with a Hugging Face tokenizer or text model
(SigLIP, mT5/XLM-R/RoBERTa text towers) are refused with a ModelError, because
building them would fetch files from the Hugging Face Hub.

``arch`` may also be the path of an open_clip model-config JSON (``embed_dim``,
``vision_cfg``, ``text_cfg``); the architecture then takes the file's stem as name.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xsearch.engine.embedder import (
    BatchEmbedder,
    _average_clips,
    _flatten_clips,
    _import_loader,
    canonical_modality,
)
from xsearch.errors import MediaError, ModelError, UsageError

__all__ = ["OpenCLIPEmbedder", "OPENCLIP_MODALITIES"]

OPENCLIP_MODALITIES = ("image", "text")
_ID_SPAN = 1 << 20  # bytes hashed at each end of the weights file for the model id


def _open_clip():
    import open_clip  # heavy import (timm, ...): only when an OpenCLIP model is asked for

    return open_clip


def _register_arch(arch: str | os.PathLike) -> str:
    """A built-in architecture name, or a model-config JSON registered under its file stem."""
    oc = _open_clip()
    path = Path(arch)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelError(f"{path}: no such OpenCLIP model-config file")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot read OpenCLIP model config ({e})") from e
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ModelError(f"{path}: not an OpenCLIP model config (needs embed_dim, vision_cfg and text_cfg)")
        oc.add_model_config(path)
        return path.stem
    name = os.fspath(arch)
    if oc.get_model_config(name) is None:
        raise ModelError(
            f"unknown OpenCLIP architecture {name!r}; use one of open_clip.list_models() "
            "(e.g. ViT-B-32) or the path of a model-config JSON"
        )
    return name


def _check_offline(arch: str) -> dict[str, Any]:
    """Refuse architectures that would reach the Hugging Face Hub for a tokenizer or text model."""
    cfg = _open_clip().get_model_config(arch)
    text = cfg.get("text_cfg", {})
    hf = text.get("hf_tokenizer_name") or text.get("hf_model_name")
    if hf or "siglip" in arch.lower():
        raise ModelError(
            f"OpenCLIP architecture {arch!r} needs a Hugging Face tokenizer or text model"
            f"{f' ({hf})' if hf else ''}, which xsearch does not download; "
            "use an architecture with the built-in CLIP tokenizer (e.g. ViT-B-32, ViT-B-16, ViT-L-14)"
        )
    return cfg


def _check_weights(arch: str, pretrained: str | os.PathLike) -> Path:
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelError(
            f"{os.fspath(pretrained)}: no such weights file; xsearch never downloads OpenCLIP weights: "
            f"pass the path of a local {arch} checkpoint (.pt, .pth, .bin or .safetensors)"
        )
    return path.resolve()


def _weights_digest(path: Path) -> str:
    """sha256 of size + both 1 MiB ends: cheap, and changes when the weights do (see weights.py)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        h.update(f.read(_ID_SPAN))
        if size > 2 * _ID_SPAN:
            f.seek(size - _ID_SPAN)
        h.update(f.read(_ID_SPAN))
    return h.hexdigest()[:12]


class OpenCLIPEmbedder(BatchEmbedder):
    """Image and text embeddings from an OpenCLIP model, L2-normalised float32 rows.

    Same interface as :class:`~xsearch.engine.embedder.Embedder` (``load``,
    ``embed_tensors``, ``embed``, ``embed_paths``, ``dim``, ``model_id``,
    ``dtype``, ``device``); modalities other than image and text raise UsageError.
    """

    def __init__(
        self,
        arch: str | os.PathLike,
        pretrained: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        *,
        num_threads: int | None = None,
        chunk_size: int | None = None,
    ):
        self._init_runtime(device, dtype, num_threads, chunk_size)
        self.arch = _register_arch(arch)
        cfg = _check_offline(self.arch)
        self.weights_path = _check_weights(self.arch, pretrained)
        self.model, self.preprocess = self._create(self.weights_path)
        self.model.to(device=self._device, dtype=self._dtype).eval().requires_grad_(False)
        self.tokenizer = _open_clip().get_tokenizer(self.arch)
        self._dim = int(cfg["embed_dim"])
        self._model_id = f"openclip:{self.arch}:{_weights_digest(self.weights_path)}"

    def _create(self, path: Path):
        try:
            model, _, preprocess = _open_clip().create_model_and_transforms(self.arch, pretrained=str(path), device="cpu")
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
            raise ModelError(f"{path}: cannot load as OpenCLIP {self.arch} weights ({e})") from e
        return model, preprocess

    # ------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        """``openclip:<arch>:<digest of the weights file>``."""
        return self._model_id

    @property
    def modalities(self) -> tuple[str, ...]:
        return OPENCLIP_MODALITIES

    def _check_modality(self, modality: str) -> str:
        m = canonical_modality(modality)
        if m not in OPENCLIP_MODALITIES:
            raise UsageError(
                f"the OpenCLIP model {self.arch} embeds only image and text, not {m}; "
                "use the ImageBind Embedder for video, audio, depth, thermal and IMU"
            )
        return m

    # ------------------------------------------------------------ decoding

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts))

    def load(self, modality: str, path: str | os.PathLike) -> Tensor:
        """One file -> model input: image (3, S, S) with the model's own transform; text file -> token ids."""
        m = self._check_modality(modality)
        if m == "text":
            text = _import_loader("xsearch.engine.preprocess.text", "load_text")(path)
            return self.tokenize([text])[0]
        from xsearch.engine.preprocess.image import open_image

        img = open_image(path)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        try:
            return self.preprocess(img.convert("RGB"))
        except (OSError, ValueError) as e:
            raise MediaError(path, f"cannot convert image to RGB ({e})") from e

    # ------------------------------------------------------------ embedding

    def embed_tensors(self, modality: str, batch: Tensor | Sequence[Tensor]) -> np.ndarray:
        """``(B, 3, S, S)`` images or ``(B, ctx)`` token ids (or lists of items) -> ``(B, dim)`` unit rows."""
        m = self._check_modality(modality)
        clips, counts = _flatten_clips(m, batch)
        if not counts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = torch.cat([self._forward(m, chunk) for chunk in clips.split(self.chunk_size)])
        return F.normalize(_average_clips(out, counts), dim=-1).numpy()

    @torch.inference_mode()
    def _forward(self, modality: str, chunk: Tensor) -> Tensor:
        if modality == "text":
            out = self.model.encode_text(chunk.to(self._device, torch.long), normalize=False)
        else:
            out = self.model.encode_image(chunk.to(self._device, self._dtype), normalize=False)
        # Per-clip unit vectors, so averaging clips weighs each equally (CLIP features are unscaled).
        return F.normalize(out.float(), dim=-1).cpu()
