from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden" / "imagebind"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The ImageBind parity fixtures, kept in the repository (tests/data/golden/SOURCE.md)."""
    assert GOLDEN.is_dir(), f"missing fixtures at {GOLDEN}"
    return GOLDEN


@pytest.fixture(scope="session")
def golden_tensors(golden_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "tiny" / "tensors.pt", weights_only=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Tests never touch the user's real ~/.local/share/xsearch (tests may still override)."""
    import os

    old = {k: os.environ.get(k) for k in ("XSEARCH_HOME", "XSEARCH_STORE", "XSEARCH_MODEL", "XSEARCH_OFFLINE")}
    os.environ["XSEARCH_HOME"] = str(tmp_path_factory.mktemp("xsearch_home"))
    os.environ["XSEARCH_OFFLINE"] = "1"
    os.environ.pop("XSEARCH_STORE", None)
    os.environ.pop("XSEARCH_MODEL", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model(golden_dir: Path) -> str:
    """The fixture model directory (config.json + checkpoint.pth) as a --model value."""
    return str(golden_dir / "tiny")
