"""How embedding vectors are stored as bytes in the database (no pickle: raw little-endian floats).

float16 halves the store and keeps cosine similarity: for a unit vector each component keeps ~11 bits,
so the round-trip cosine is ~1 - 1e-7 (we require >= MIN_ROUNDTRIP_COSINE before choosing it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
MIN_ROUNDTRIP_COSINE = 0.9999


def as_matrix(x: np.ndarray, *, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, d) copy of `x` with every row L2-normalised (cosine = inner product)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a (n, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} contain an all-zero vector, which has no direction")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def roundtrip_cosine(x: np.ndarray, dtype: str) -> np.ndarray:
    """Per row, cosine between `x` and `x` stored as `dtype` and read back."""
    x = np.asarray(x, dtype=np.float32)
    y = x.astype(DTYPES[dtype]).astype(np.float32)
    num = np.einsum("ij,ij->i", x.astype(np.float64), y.astype(np.float64))
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return num / np.maximum(den, 1e-30)


def choose_dtype(x: np.ndarray) -> str:
    """float16 when it keeps every vector's cosine >= MIN_ROUNDTRIP_COSINE, float32 otherwise."""
    return "float16" if roundtrip_cosine(x, "float16").min() >= MIN_ROUNDTRIP_COSINE else "float32"


def encode_rows(x: np.ndarray, dtype: str) -> np.ndarray:
    """The stored bytes of each row, as a (n, dim * itemsize) uint8 array (one database blob per row)."""
    raw = np.ascontiguousarray(x, dtype=DTYPES[dtype])
    return raw.view(np.uint8).reshape(len(raw), -1)


def decode(blobs: Sequence[bytes], dtype: str, dim: int) -> np.ndarray:
    """float32 (n, dim) from stored blobs, in the order given."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return decode_rows(np.frombuffer(b"".join(blobs), dtype=np.uint8), len(blobs), dtype, dim)


# |x|^2 of a stored row differs from 1 by less than this (10x float16's worst rounding).
UNIT_TOLERANCE = 0.01


def decode_rows(raw: np.ndarray, n: int, dtype: str, dim: int, *, damaged_as_nan: bool = False) -> np.ndarray:
    """float32 (n, dim) unit rows from n stored rows laid end to end in a uint8 buffer.

    ``damaged_as_nan``: a row that is not of unit length (zeroed, 0xFF-filled, garbage: stored vectors
    always are) comes back as NaN, so that a caller reading unchecked bytes sees the damage in its scores.
    """
    flat = np.ascontiguousarray(raw).reshape(-1).view(DTYPES[dtype])
    if flat.size != n * dim:
        raise ValueError(f"stored vectors do not have {dim} {dtype} values each")
    out = _f16_to_f32(flat) if dtype == "float16" else flat.astype(np.float32)
    return _unit(out.reshape(n, dim), UNIT_TOLERANCE if damaged_as_nan else None)


_F16_TO_F32_SCALE = np.float32(2.0**112)  # 2**(127 - 15): float32 exponent bias minus float16's


def _f16_to_f32(h: np.ndarray) -> np.ndarray:
    """Finite float16 -> float32, bit-identical to ``astype`` and ~1.7x faster (numpy converts
    element by element; re-ranking decodes hundreds of stored vectors per query). The float16 bits
    shifted into float32 position are the value times 2**-112, subnormals included; one multiply fixes
    the exponent. Stored vectors are finite (checked on the way in), so inf/NaN need no case."""
    u = h.view(np.int16).astype(np.int32)
    f = ((u & 0x7FFF) << 13).view(np.float32)
    f *= _F16_TO_F32_SCALE
    return np.copysign(f, u.astype(np.float32), out=f)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` as it will read back from the store: indexes hold exactly this, so fresh and rebuilt agree."""
    return _unit(x.astype(DTYPES[dtype]).astype(np.float32))


def _unit(x: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    # Rounding to float16 moves the norm off 1 by ~1e-4; re-normalising keeps inner products true cosines.
    sq = np.einsum("ij,ij->i", x, x)
    if tolerance is not None:
        sq[~(np.abs(sq - 1) < tolerance)] = np.nan  # `~(<)` also catches a NaN norm
    with np.errstate(invalid="ignore"):
        x /= np.sqrt(sq)[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def id_checksum(ids: np.ndarray) -> str:
    """An order-independent fingerprint of a set of ids (count + sum of mixed 64-bit hashes)."""
    v = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = v * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
        total = int(h.sum(dtype=np.uint64))
    return f"{len(v)}:{total:016x}"
