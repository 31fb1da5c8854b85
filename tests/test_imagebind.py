"""ImageBindModel itself against the fixture: strict load of the official layout, forward() as the original.

The fixture's tolerance for model outputs is max|ours - ref| <= 1e-4 * max|ref| per modality, in float32
on the CPU, on the raw (scaled, not normalised) outputs that forward() returns.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel

MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")


def load_tiny(golden_dir: Path) -> ImageBindModel:
    cfg = ImageBindConfig(**json.loads((golden_dir / "tiny" / "config.json").read_text()))
    model = ImageBindModel(cfg)
    state = torch.load(golden_dir / "tiny" / "checkpoint.pth", weights_only=True)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def test_forward_matches_the_original_outputs(golden_dir, golden_tensors):
    model = load_tiny(golden_dir)
    with torch.inference_mode():
        out = model({m: golden_tensors[f"input.{m}"] for m in MODALITIES})
        # Video is vision input with clips: (B, clips, 3, 2, H, W) -> per-clip outputs averaged.
        video = model({"vision": golden_tensors["input.video"]})["vision"]
    assert set(out) == set(MODALITIES)
    for m in MODALITIES:
        ref = golden_tensors[f"output.{m}"]
        assert out[m].shape == ref.shape and out[m].dtype == torch.float32, m
        assert (out[m] - ref).abs().max() <= 1e-4 * ref.abs().max(), m
    ref = golden_tensors["output.video"]
    assert video.shape == ref.shape and (video - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_outputs_are_scaled_not_normalised(golden_dir, golden_tensors):
    """Text carries the learned logit scale, depth/thermal/IMU their fixed ones; vision none. (Audio's
    three clips are averaged after scaling, so its norms sit below its scale.)"""
    model = load_tiny(golden_dir)
    with torch.inference_mode():
        out = model({m: golden_tensors[f"input.{m}"] for m in MODALITIES})
    norms = {m: out[m].norm(dim=-1) for m in MODALITIES}
    assert torch.allclose(norms["vision"], torch.ones_like(norms["vision"]), atol=1e-5)
    for m in ("text", "depth", "thermal", "imu"):
        assert (norms[m] - norms[m].mean()).abs().max() <= 1e-4 * norms[m].mean(), m  # one scale per modality
