"""Query specifications: one or more weighted inputs, the target modalities, filters.

Weights use one syntax for file paths and free text alike: ``VALUE@WEIGHT``,
where WEIGHT is a number (negative subtracts): ``"dog.jpg@2"``, ``"sunny@-0.5"``.
A value without a trailing ``@number`` has weight 1; a file that exists under
its full name (``photo@2.jpg``, ``a@3``) is always taken literally.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from xsearch.engine.modalities import MODALITIES
from xsearch.errors import UsageError

INPUT_MODALITIES = MODALITIES  # text, image, video, audio, depth, thermal, imu
_WEIGHT = re.compile(r"^(?P<value>.*)@(?P<weight>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$", re.DOTALL)


@dataclass
class QueryInput:
    """One query input. ``kind`` is a modality, ``"like"`` (an indexed path) or ``"vector"``."""

    kind: str
    value: Any
    weight: float = 1.0

    def describe(self) -> dict[str, Any]:
        value = f"<vector dim={len(self.value)}>" if self.kind == "vector" else self.value
        return {"kind": self.kind, "value": value, "weight": self.weight}


def parse_weighted(raw: str, *, is_path: bool) -> tuple[str, float]:
    """Split ``VALUE@WEIGHT`` into (value, weight)."""
    if is_path and os.path.exists(raw):
        return raw, 1.0
    m = _WEIGHT.match(raw)
    if not m or not m.group("value"):
        return raw, 1.0
    return m.group("value"), float(m.group("weight"))


def as_inputs(kind: str, values: Any) -> list[QueryInput]:
    """Normalise a Python-API argument into inputs.

    Accepts a value, a ``(value, weight)`` pair, or a list of either. Strings use the
    ``VALUE@WEIGHT`` syntax; vectors (``kind="vector"``) are arrays.
    """
    if values is None:
        return []
    if kind == "vector":
        arr = np.asarray(values, dtype=np.float32)
        rows = arr[None] if arr.ndim == 1 else arr
        return [QueryInput("vector", r) for r in rows]
    if isinstance(values, (str, os.PathLike)) or (isinstance(values, tuple) and len(values) == 2 and isinstance(values[1], (int, float))):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, tuple):
            value, weight = v
            out.append(QueryInput(kind, os.fspath(value) if kind != "text" else value, float(weight)))
        else:
            value, weight = parse_weighted(os.fspath(v), is_path=(kind != "text"))
            out.append(QueryInput(kind, value, weight))
    return out


def parse_targets(target: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"all"``/None -> None (every modality); else the named modalities (comma lists allowed)."""
    if target is None:
        return None
    names = [target] if isinstance(target, str) else list(target)
    flat = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not flat or "all" in flat:
        return None
    for n in flat:
        if n not in INPUT_MODALITIES:
            raise UsageError(f"unknown target {n!r}; expected 'all' or one of {', '.join(INPUT_MODALITIES)}")
    return tuple(dict.fromkeys(flat))


@dataclass
class QuerySpec:
    inputs: list[QueryInput]
    targets: tuple[str, ...] | None = None  # None: all modalities
    k: int = 10
    folder: str | None = None  # only results under this folder
    glob: str | None = None  # only results whose path matches this glob
    min_score: float | None = None

    @property
    def exclude(self) -> tuple[str, ...]:
        """Paths never returned: the ``like`` inputs themselves ("more like this", not "this")."""
        return tuple(i.value for i in self.inputs if i.kind == "like")

    def validate(self) -> None:
        if not self.inputs:
            raise UsageError("give at least one query input (--text, --image, --audio, --video, --depth, --thermal, --imu, --like)")
        if self.k < 1:
            raise UsageError(f"-k must be at least 1, not {self.k}")
        if all(i.weight == 0 for i in self.inputs):
            raise UsageError("every query input has weight 0")

    def describe(self) -> dict[str, Any]:
        return {
            "inputs": [i.describe() for i in self.inputs],
            "target": list(self.targets) if self.targets else "all",
            "k": self.k,
            "filters": {"folder": self.folder, "glob": self.glob, "min_score": self.min_score},
        }
