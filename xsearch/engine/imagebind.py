"""ImageBind (Girdhar et al., CVPR 2023): six encoders into one embedding space.

The module tree mirrors the official implementation so that ``state_dict()`` has
exactly the official keys and shapes and ``imagebind_huge.pth`` loads strictly.
Attention runs through ``F.scaled_dot_product_attention``; everything else is the
original arithmetic (see ``tests/data/golden/imagebind/README.md``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.engine.modalities import IMAGEBIND_MODALITIES, tower
from xsearch.errors import ModelError

# Per-tower architecture facts that the checkpoint fixes (not constructor arguments).
_BIAS_KV = {"vision": False, "text": False, "audio": True, "depth": True, "thermal": True, "imu": True}
_PRE_LN = {"vision": True}
# Initial logit scales of the original (the checkpoint's values replace them).
_LOGIT_SCALE_INIT = {"text": 1 / 0.07, "audio": 20.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0}
_MAX_LOGIT_SCALE = 100.0


@dataclass
class ImageBindConfig:
    """Architecture of an ImageBind model.

    Field names are the keyword arguments of the original ``ImageBindModel``
    constructor; defaults are the huge model's values. Unknown keywords of the
    original constructor that do not change the architecture at inference time
    (drop-path rates) are accepted and ignored.
    """

    out_embed_dim: int = 1024
    video_frames: int = 2
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    audio_kernel_size: int = 16
    audio_stride: int = 10
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    depth_kernel_size: int = 16
    thermal_kernel_size: int = 16
    imu_kernel_size: int = 8
    imu_channels: int = 6
    imu_samples: int = 2000
    text_context_length: int = 77
    text_vocab_size: int = 49408
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    # Training-only knobs of the original constructor, kept so its kwargs load.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    _IGNORED = {"audio_drop_path", "depth_drop_path", "thermal_drop_path", "imu_drop_path"}

    def __post_init__(self) -> None:
        self.kernel_size = tuple(self.kernel_size)  # JSON gives a list
        for m in IMAGEBIND_MODALITIES:
            dim, heads = self.embed_dim(m), self.num_heads(m)
            if dim % heads:
                raise ModelError(f"{m}_embed_dim={dim} is not divisible by {m}_num_heads={heads}")

    @classmethod
    def huge(cls) -> "ImageBindConfig":
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageBindConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        unknown = {k: v for k, v in d.items() if k not in names}
        bad = set(unknown) - cls._IGNORED
        if bad:
            raise ModelError(f"unknown ImageBind config keys: {', '.join(sorted(bad))}")
        return cls(**known, extra=unknown)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ImageBindConfig":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError) as e:
            raise ModelError(f"{os.fspath(path)}: cannot read model config ({e})") from e

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        d["kernel_size"] = list(self.kernel_size)
        return d

    def embed_dim(self, m: str) -> int:
        return getattr(self, f"{m}_embed_dim")

    def num_blocks(self, m: str) -> int:
        return getattr(self, f"{m}_num_blocks")

    def num_heads(self, m: str) -> int:
        return getattr(self, f"{m}_num_heads")


# ---------------------------------------------------------------- building blocks


class Attention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (and optional bias_k/bias_v tokens), computed with SDPA."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        if bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        H = self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            # The learned key/value tokens are appended after projection, as in nn.MultiheadAttention.
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(B, 1, D)], dim=1)
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(B, 1, D)], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
        q, k, v = (t.reshape(B, -1, H, D // H).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias_kv: bool):
        super().__init__()
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, bias_kv)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_1(x), attn_mask)
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    def __init__(self, dim: int, num_blocks: int, num_heads: int, pre_ln: bool, bias_kv: bool):
        super().__init__()
        # Index 0 as in the original's Sequential(LayerNorm, Rearrange).
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6)) if pre_ln else None
        self.blocks = nn.ModuleList(Block(dim, num_heads, bias_kv) for _ in range(num_blocks))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if self.pre_transformer_layer is not None:
            x = self.pre_transformer_layer(x)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return x


class PatchStem(nn.Module):
    """A projection followed by an optional LayerNorm; tokens come out as (B, N, D)."""

    def __init__(self, proj: nn.Module, norm: nn.Module | None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if x.ndim > 3:  # convolution output B, D, (T), H, W -> B, N, D
            x = x.flatten(2).transpose(1, 2)
        return self.norm_layer(x) if self.norm_layer is not None else x


class PadIm2Video(nn.Module):
    """An image (4-D, or 5-D with one frame) becomes a clip of ``ntimes`` identical frames."""

    def __init__(self, ntimes: int):
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.ntimes, -1, -1)
        return x


class PosEmbed(nn.Module):
    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))


class TokenPreprocessor(nn.Module):
    """Stem -> class token -> learned position embedding (vision, audio, depth, thermal)."""

    def __init__(self, stem_name: str, stem: PatchStem, num_patches: int, dim: int):
        super().__init__()
        self.stem_name = stem_name
        setattr(self, stem_name, stem)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embedding_helper = PosEmbed(num_patches + 1, dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = getattr(self, self.stem_name)(x)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding_helper.pos_embed.to(tokens.dtype)


class IMUPreprocessor(nn.Module):
    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        dim, k = cfg.imu_embed_dim, cfg.imu_kernel_size
        self.kernel_size = k
        self.imu_stem = PatchStem(nn.Linear(cfg.imu_channels * k, dim, bias=False), nn.LayerNorm(dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, cfg.imu_samples // k + 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, T) -> (B, T/k, C*k), each window flattened channel-major.
        B = x.shape[0]
        x = x.unfold(-1, self.kernel_size, self.kernel_size).permute(0, 2, 1, 3).reshape(B, -1, x.shape[1] * self.kernel_size)
        tokens = self.imu_stem(x)
        cls = self.cls_token.to(tokens.dtype).expand(B, -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed.to(tokens.dtype)


class TextPreprocessor(nn.Module):
    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        dim, ctx = cfg.text_embed_dim, cfg.text_context_length
        # No random init here, and no triu_ on the meta device: both run torch's reference
        # kernels there, whose first use imports torch._dynamo (about 1 s of a text query).
        self.token_embedding = nn.Embedding(cfg.text_vocab_size, dim, _weight=torch.empty(cfg.text_vocab_size, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, ctx, dim))
        self.register_buffer("mask", torch.empty(ctx, ctx))
        if not self.mask.is_meta:
            self.mask.fill_(float("-inf")).triu_(1)

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L), L <= the context length -> (B, L, dim)."""
        pos = self.pos_embed[:, : tokens.shape[1]]
        return self.token_embedding(tokens) + pos.to(self.token_embedding.weight.dtype)


class SelectElement(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index, ...]


class TextHead(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: Tensor, eos: Tensor) -> Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eos])


class Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, p=2)


class LogitScale(nn.Module):
    def __init__(self, learnable: bool):
        super().__init__()
        if learnable:
            self.log_logit_scale = nn.Parameter(torch.empty(()))
        else:
            self.register_buffer("log_logit_scale", torch.empty(()))

    def forward(self, x: Tensor) -> Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=_MAX_LOGIT_SCALE).to(x.dtype) * x


# ---------------------------------------------------------------- the model


def _preprocessor(m: str, cfg: ImageBindConfig) -> nn.Module:
    dim = cfg.embed_dim(m)
    if m == "text":
        return TextPreprocessor(cfg)
    if m == "imu":
        return IMUPreprocessor(cfg)
    if m == "vision":
        kt, kh, kw = cfg.kernel_size
        conv = nn.Conv3d(3, dim, kernel_size=cfg.kernel_size, stride=cfg.kernel_size, bias=False)
        n = (cfg.video_frames // kt) * (cfg.image_size // kh) * (cfg.image_size // kw)
        return TokenPreprocessor("rgbt_stem", PatchStem(nn.Sequential(PadIm2Video(cfg.video_frames), conv), None), n, dim)
    if m == "audio":
        k, s = cfg.audio_kernel_size, cfg.audio_stride
        conv = nn.Conv2d(1, dim, kernel_size=k, stride=s, bias=False)
        n = ((cfg.audio_num_mel_bins - k) // s + 1) * ((cfg.audio_target_len - k) // s + 1)
        return TokenPreprocessor("rgbt_stem", PatchStem(conv, nn.LayerNorm(dim)), n, dim)
    k = cfg.depth_kernel_size if m == "depth" else cfg.thermal_kernel_size
    conv = nn.Conv2d(1, dim, kernel_size=k, stride=k, bias=False)
    n = (cfg.image_size // k) ** 2
    return TokenPreprocessor("depth_stem" if m == "depth" else "rgbt_stem", PatchStem(conv, nn.LayerNorm(dim)), n, dim)


def _head(m: str, cfg: ImageBindConfig) -> nn.Module:
    dim, out = cfg.embed_dim(m), cfg.out_embed_dim
    if m == "text":
        return TextHead(dim, out)
    layers: list[nn.Module] = [nn.LayerNorm(dim, eps=1e-6), SelectElement(0)]
    if m == "imu":
        layers.append(nn.Dropout(0.5))  # inactive in eval; keeps the official index of the Linear
    layers.append(nn.Linear(dim, out, bias=False))
    return nn.Sequential(*layers)


def _postprocessor(m: str) -> nn.Module:
    if m == "vision":
        return nn.Sequential(Normalize())
    return nn.Sequential(Normalize(), LogitScale(learnable=(m == "text")))


class ImageBindModel(nn.Module):
    """The six ImageBind towers. ``forward({modality: tensor}) -> {modality: tensor}``.

    Keys are ImageBind's modality names; ``"image"`` and ``"video"`` are accepted
    as aliases of ``"vision"``. Inputs with 5 or more dimensions are clip lists
    (``(B, clips, ...)``): each clip is embedded and the outputs are averaged.
    ``modalities`` builds only some towers (a text query needs no vision tower).
    """

    def __init__(self, config: ImageBindConfig | None = None, modalities: tuple[str, ...] | None = None):
        super().__init__()
        self.config = cfg = config or ImageBindConfig()
        self.modalities = tuple(modalities or IMAGEBIND_MODALITIES)
        self.modality_preprocessors = nn.ModuleDict({m: _preprocessor(m, cfg) for m in self.modalities})
        self.modality_trunks = nn.ModuleDict(
            {
                m: Trunk(cfg.embed_dim(m), cfg.num_blocks(m), cfg.num_heads(m), _PRE_LN.get(m, False), _BIAS_KV[m])
                for m in self.modalities
            }
        )
        self.modality_heads = nn.ModuleDict({m: _head(m, cfg) for m in self.modalities})
        self.modality_postprocessors = nn.ModuleDict({m: _postprocessor(m) for m in self.modalities})
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Random weights in the original's style (for tests and benchmarks without a checkpoint)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        norms = {id(p) for mod in self.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()}
        for name, p in self.named_parameters():
            if name.endswith("log_logit_scale"):
                continue
            if id(p) in norms:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in self.modalities:
            if m in _LOGIT_SCALE_INIT:
                self.modality_postprocessors[m][1].log_logit_scale.fill_(math.log(_LOGIT_SCALE_INIT[m]))
        if "text" in self.modalities:
            pre = self.modality_preprocessors["text"]
            pre.mask.copy_(torch.full_like(pre.mask, float("-inf")).triu_(1))

    def embed(self, modality: str, x: Tensor) -> Tensor:
        """Embed one modality's batch: the original's scaled output, shape (B, out_embed_dim)."""
        m = tower(modality)
        if m not in self.modalities:
            raise ModelError(f"this model was built without the {m} tower")
        reduce = x.ndim >= 5
        if reduce:
            B, S = x.shape[:2]
            x = x.reshape(B * S, *x.shape[2:])
        if m == "text":
            pre = self.modality_preprocessors["text"]
            eos = x.argmax(dim=-1)
            # Causal attention: the outputs read at the end-of-text tokens depend on no later
            # position, so only the first max(eos) + 1 positions are computed (a query: ~10 of 77).
            n = int(eos.max()) + 1 if x.shape[0] else x.shape[1]
            tokens = self.modality_trunks["text"](pre(x[:, :n]), pre.mask[:n, :n])
            out = self.modality_heads["text"](tokens, eos)
        else:
            tokens = self.modality_trunks[m](self.modality_preprocessors[m](x))
            out = self.modality_heads[m](tokens)
        out = self.modality_postprocessors[m](out)
        if reduce:
            out = out.reshape(B, S, -1).mean(dim=1)
        return out

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.embed(k, v) for k, v in inputs.items() if v is not None}
