"""Query specifications: one or more weighted inputs, the target modalities, filters.

Weights use one syntax for file paths and free text alike: ``VALUE@WEIGHT``,
where WEIGHT is a number (negative subtracts): ``"dog.jpg@2"``, ``"sunny@-0.5"``.
A value without a trailing ``@number`` has weight 1; a file that exists under
its full name (``photo@2.jpg``, ``a@3``) is always taken literally. A weight is 0
or between ``MIN_WEIGHT`` and ``MAX_WEIGHT`` in size.

Messages here are shared by the CLI, the Python API and the HTTP API, so they
name inputs by kind (``like``, ``image``), never by a CLI flag.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from xsearch.engine.modalities import MODALITIES
from xsearch.errors import UsageError

INPUT_MODALITIES = MODALITIES  # text, image, video, audio, depth, thermal, imu
# nan and inf are matched too, so that "x@nan" is refused as a weight rather than searched for as text.
_WEIGHT = re.compile(
    r"^(?P<value>.*)@(?P<weight>[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf(inity)?))$", re.DOTALL | re.IGNORECASE
)
# The query is the normalised weighted sum, so only ratios of weights matter, and float32 vectors cannot
# resolve ratios much beyond 1e7: a weight outside this range is a typo or an overflow, not a wish.
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6
_PATH_MAX = 4096  # Linux's PATH_MAX: no longer path can be opened
_WEIGHT_RANGE = f"use 0 or a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g} in size (negative subtracts)"


@dataclass
class QueryInput:
    """One query input. ``kind`` is a modality, ``"like"`` (an indexed path, or an item id as an int) or
    ``"vector"``."""

    kind: str
    value: Any
    weight: float = 1.0
    start: float | None = None  # a span of the file (PATH#t=START,END), seconds; None: the whole file
    end: float | None = None

    def describe(self) -> dict[str, Any]:
        value = f"<vector dim={len(self.value)}>" if self.kind == "vector" else self.value
        span = {} if self.start is None else {"start": self.start, "end": self.end}
        return {"kind": self.kind, "value": value, "weight": self.weight, **span}


def check_weight(weight: Any, what: str, shown: str | None = None) -> float:
    """``weight`` as a float, or a UsageError naming ``what`` (the input) and the weight as ``shown``."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise UsageError(f"{what}: the weight must be a number, not {weight!r}")
    w = float(weight)
    shown = shown if shown is not None else repr(weight)
    if math.isnan(w):
        raise UsageError(f"{what}: weight {shown} is not a number; {_WEIGHT_RANGE}")
    if w != 0 and not MIN_WEIGHT <= abs(w) <= MAX_WEIGHT:  # inf included
        raise UsageError(f"{what}: weight {shown} is out of range; {_WEIGHT_RANGE}")
    return w


def parse_weighted(raw: str, *, is_path: bool) -> tuple[str, float]:
    """Split ``VALUE@WEIGHT`` into (value, weight); a weight out of range is a UsageError."""
    if is_path and os.path.exists(raw):
        return raw, 1.0
    m = _WEIGHT.match(raw)
    if not m or not m.group("value"):
        return raw, 1.0
    text = m.group("weight")
    weight = float(text)
    # "1e-400" parses to 0.0: a weight meant as non-zero (too small), not one that switches the input off.
    if weight == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        raise UsageError(f"{raw!r}: weight {text} is out of range; {_WEIGHT_RANGE}")
    check_weight(weight, repr(raw), text)
    return m.group("value"), weight


def as_inputs(kind: str, values: Any) -> list[QueryInput]:
    """Normalise a Python-API argument into inputs.

    Accepts a value, a ``(value, weight)`` pair, or a list of either. Strings use the
    ``VALUE@WEIGHT`` syntax; vectors (``kind="vector"``) are arrays; ``like`` also takes item ids (ints).
    """
    if values is None:
        return []
    if kind == "vector":
        try:
            arr = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise UsageError(f"vector: expected an array of numbers (one vector, or one per row), "
                             f"not {type(values).__name__} ({e})") from None
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise UsageError(f"vector: expected one vector or a 2-d array of them, not an array of shape {arr.shape}")
        rows = arr[None] if arr.ndim == 1 else arr
        return [QueryInput("vector", r) for r in rows]
    if _is_one(values) or (kind == "like" and _is_id(values)):
        values = [values]
    elif not isinstance(values, (list, tuple)):
        raise UsageError(f"{kind}: expected {_expected(kind)}, a (value, weight) pair, or a list of them; "
                         f"not {values!r} ({type(values).__name__})")
    out = []
    for v in values:
        if isinstance(v, tuple) and len(v) == 2:
            value, weight = v
            out.append(QueryInput(kind, _value(kind, value), check_weight(weight, f"{kind} input {value!r}")))
        elif kind == "like" and _is_id(v):
            out.append(QueryInput(kind, int(v)))
        else:
            value, weight = parse_weighted(_value(kind, v), is_path=(kind != "text"))
            out.append(QueryInput(kind, value, weight))
    if kind != "text":
        from xsearch.query.moments import split_fragment

        for inp in out:
            if isinstance(inp.value, str):  # (an item id names no span)
                inp.value, inp.start, inp.end = split_fragment(kind, inp.value)
    return out


def _is_id(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_one(values: Any) -> bool:
    """One input (a value or a ``(value, weight)`` pair) rather than a list of them."""
    if isinstance(values, (str, bytes, os.PathLike)) or hasattr(values, "read"):  # a file object: said in _value
        return True
    return isinstance(values, tuple) and len(values) == 2 and isinstance(values[1], numbers.Real) and not isinstance(values[1], bool)


def _expected(kind: str) -> str:
    return "a string" if kind == "text" else "an indexed path or an item id" if kind == "like" else "a file path"


def _value(kind: str, value: Any) -> str | int:
    """A text or path input as a str (a like input's item id as an int); anything else is the caller's
    mistake, said plainly."""
    if kind == "text":
        if isinstance(value, str):
            return value
    elif kind == "like" and _is_id(value):
        return int(value)
    elif hasattr(value, "read"):
        raise UsageError(f"{kind}: got an open file ({type(value).__name__}); pass its path instead")
    elif isinstance(value, (str, bytes, os.PathLike)):
        name = os.fsdecode(value)
        # A path never holds a NUL, nor runs to kilobytes: such a value is a file's content, not its name.
        if "\0" in name or len(name) > _PATH_MAX:
            what = f"{len(value)} bytes of data" if isinstance(value, bytes) else f"a string of {len(name)} characters"
            raise UsageError(f"{kind}: got {what}, not a file path; save the data to a file and pass its path")
        return name
    raise UsageError(f"{kind}: expected {_expected(kind)} or a (value, weight) pair, not {value!r} ({type(value).__name__})")


def parse_targets(target: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"all"``/None -> None (every modality); else the named modalities (comma lists allowed)."""
    if target is None:
        return None
    names = [target] if isinstance(target, str) else list(target)
    flat = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not flat:  # "" is a slip (an empty variable), not a wish for every modality
        raise UsageError(f"empty target: name 'all' or one of {', '.join(INPUT_MODALITIES)}")
    if "all" in flat:
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
    tags: tuple[str, ...] = ()  # only items carrying every one of these tags (xsearch.storage.tags)
    moments: bool = False  # return moments (spans of recordings indexed with moments) instead of files

    @property
    def exclude(self) -> tuple[str | int, ...]:
        """Never returned: the ``like`` inputs themselves, paths or item ids ("more like this", not "this");
        a ``like`` of a span excludes only that span (from moments)."""
        return tuple(i.value for i in self.inputs if i.kind == "like" and i.start is None)

    def validate(self) -> None:
        """Raise a UsageError for a spec that cannot be run (no inputs, empty text, bad weights or k)."""
        if not self.inputs:
            raise UsageError(f"give at least one query input: {', '.join(INPUT_MODALITIES)}, like or vector")
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise UsageError(f"k must be a whole number of at least 1, not {self.k!r}")
        for i in self.inputs:
            if i.kind == "vector":
                continue
            check_weight(i.weight, f"{i.kind} input {i.value!r}")
            if i.kind == "like" and _is_id(i.value):
                continue  # an item id; one that names no item is reported when looked up
            if not isinstance(i.value, str):
                raise UsageError(f"{i.kind}: expected {_expected(i.kind)}, not {i.value!r} ({type(i.value).__name__})")
            if not i.value.strip():
                raise UsageError("empty text query: give some words to search for" if i.kind == "text"
                                 else f"empty {i.kind} path: name a file")
        if all(i.weight == 0 for i in self.inputs):
            raise UsageError("every query input has weight 0")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(self.min_score, numbers.Real)
                                           or not math.isfinite(self.min_score)):
            raise UsageError(f"min_score must be a finite number (a cosine similarity, -1 to 1), not {self.min_score!r}")

    def describe(self) -> dict[str, Any]:
        return {
            "inputs": [i.describe() for i in self.inputs],
            "target": list(self.targets) if self.targets else "all",
            "k": self.k,
            "filters": {"folder": self.folder, "glob": self.glob, "min_score": self.min_score,
                        **({"tags": list(self.tags)} if self.tags else {})},
            **({"moments": True} if self.moments else {}),
        }
