"""Small random-weight ImageBind models for tests (no download, no GPU)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel


def random_model(folder: Path, like: str | Path, *, seed: int, **overrides: int) -> str:
    """A model folder (config.json + checkpoint.pth) with ``like``'s config changed by ``overrides`` (e.g.
    ``out_embed_dim=16``) and random weights from ``seed``: another model, whose vectors live in another space."""
    cfg = json.loads((Path(like) / "config.json").read_text())
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = ImageBindModel(ImageBindConfig.from_dict(cfg))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(model.state_dict(), folder / "checkpoint.pth")
    return str(folder)
