"""Zero-shot classification: labels -> prompt texts -> scaled text outputs -> probabilities.

The probabilities are the original ImageBind's: a softmax over the products of the model's *scaled*
outputs, ``softmax(x @ t.T)``, where ``x`` is a file's output (its unit vector times its tower's logit
scale: 1 for images and video, the fixed scales of audio, depth, thermal and IMU) and ``t`` the labels'
text outputs (unit vectors times the text tower's learned scale). Several prompt templates per label
average their unit text vectors before the scale is applied (prompt ensembling); with one template
``t`` is exactly the model's text output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from xsearch.errors import UsageError

# One template per modality by default; "{}" is replaced by the label. Documented in docs/tags.md.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "image": ("a photo of a {}.",),
    "video": ("a video of a {}.",),
    "audio": ("the sound of a {}.",),
    "depth": ("a depth map of a {}.",),
    "thermal": ("a thermal image of a {}.",),
    "imu": ("{}",),
    "text": ("{}",),
}


@dataclass
class Classification:
    """One file's labels, most probable first."""

    path: str
    modality: str
    labels: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "modality": self.modality,
                "labels": [{"label": lab, "prob": p} for lab, p in self.labels]}


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list of labels: stripped, empty ones dropped, duplicates refused."""
    raw = labels.split(",") if isinstance(labels, str) else list(labels)
    out = []
    for lab in raw:
        if not isinstance(lab, str):
            raise UsageError(f"labels must be strings, not {lab!r}")
        if lab.strip():
            out.append(lab.strip())
    if not out:
        raise UsageError("give at least one label (e.g. --labels \"dog,car,bird\" or --labels-file FILE)")
    seen: set[str] = set()
    for lab in out:
        if lab in seen:
            raise UsageError(f"label {lab!r} is given twice; each label once")
        seen.add(lab)
    return out


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label a line; blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{os.fsdecode(path)}: cannot read the labels file ({e}); give a UTF-8 text file, "
                         "one label a line") from e
    labels = [line for line in lines if line and not line.startswith("#")]
    if not labels:
        raise UsageError(f"{os.fsdecode(path)}: the labels file holds no labels; write one label a line")
    return parse_labels(labels)


def templates_for(modality: str, templates: Sequence[str] | None) -> tuple[str, ...]:
    """The given templates (for every modality) or the modality's default ones; each must hold "{}"."""
    if not templates:
        return DEFAULT_TEMPLATES[modality]
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise UsageError(f"template {t!r} has no {{}} for the label; e.g. \"a photo of a {{}}.\"")
    return tuple(templates)


def prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Label-major: every template of the first label, then of the second... (str.replace: braces in a
    label are kept as they are)."""
    return [t.replace("{}", lab) for lab in labels for t in templates]


def label_matrix(embedder: Any, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(labels, dim) scaled text outputs: each label's prompts' unit vectors averaged, renormalised and
    multiplied by the text tower's logit scale."""
    unit = embedder.embed("text", prompts(labels, templates))
    mean = unit.reshape(len(labels), len(templates), -1).astype(np.float64).mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean * embedder.logit_scale("text")).astype(np.float32)


def probabilities(outputs: np.ndarray, label_outputs: np.ndarray) -> np.ndarray:
    """softmax(outputs @ label_outputs.T) per row, in float64 (the original's zero-shot probabilities)."""
    logits = np.asarray(outputs, np.float64) @ np.asarray(label_outputs, np.float64).T
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def ranked(labels: Sequence[str], probs: np.ndarray) -> list[tuple[str, float]]:
    """(label, probability) most probable first; ties keep the labels' order."""
    order = sorted(range(len(labels)), key=lambda i: -probs[i])
    return [(labels[i], float(probs[i])) for i in order]
