from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "imagebind"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The ImageBind parity fixtures (read-only, beside the checkout)."""
    assert GOLDEN.is_dir(), f"missing fixtures at {GOLDEN}"
    return GOLDEN


@pytest.fixture(scope="session")
def golden_tensors(golden_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "tiny" / "tensors.pt", weights_only=True)
