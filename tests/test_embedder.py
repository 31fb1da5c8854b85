"""Embedder: golden parity, lazy tower loading, path vs tensor equality, bf16 agreement, IMU windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xsearch.engine.embedder import (
    DEFAULT_CHUNK,
    GPU_CHUNK,
    Embedder,
    cpu_has_fast_bf16,
    default_batch_size,
    resolve_chunk,
    resolve_dtype,
)
from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
from xsearch.engine.modalities import IMAGEBIND_MODALITIES
from xsearch.errors import MediaError, UsageError

GOLDEN_MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu", "video")
TEXTS = ["A dog.", "a photo of a dog barking at the mailman", "Rock &amp; roll — café 東京", ""]


@pytest.fixture
def tiny(golden_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fixture model directory, its converted-weights cache in a fresh $XSEARCH_HOME."""
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    return str(golden_dir / "tiny")


@pytest.fixture
def media(golden_dir: Path) -> dict[str, list[Path]]:
    root = golden_dir / "media"
    return {"image": sorted((root / "images").glob("*.jpg")), "audio": sorted((root / "audio").glob("*.wav"))}


def _medium_model() -> ImageBindModel:
    """Random weights, every tower 256 wide and 4 blocks deep: deeper than the fixture, fast on 2 cores."""
    kw: dict = {"out_embed_dim": 256}
    for m in IMAGEBIND_MODALITIES:
        kw.update({f"{m}_embed_dim": 256, f"{m}_num_blocks": 4, f"{m}_num_heads": 8})
    with torch.device("meta"):
        model = ImageBindModel(ImageBindConfig(**kw))
    model = model.to_empty(device="cpu")
    model.init_weights(seed=0)
    return model


@pytest.fixture(scope="module")
def medium() -> tuple[Embedder, Embedder]:
    """The same random medium model in float32 and in bfloat16 (an adopted model is cast in place)."""
    return (
        Embedder(_medium_model(), device="cpu", dtype="float32", model_id="medium"),
        Embedder(_medium_model(), device="cpu", dtype="bfloat16", model_id="medium"),
    )


def _write_media(tmp: Path) -> dict[str, list[Path]]:
    """Small depth, thermal, IMU, text and video files (the fixtures have photos and recordings only)."""
    rng = np.random.default_rng(0)
    out: dict[str, list[Path]] = {"depth": [], "thermal": [], "imu": [], "text": []}
    for i in range(2):
        d = tmp / f"depth{i}.png"
        Image.fromarray(rng.integers(400, 9000, (120, 160), dtype=np.uint16)).save(d)
        t = tmp / f"thermal{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 128), dtype=np.uint8), "L").save(t)
        out["depth"].append(d)
        out["thermal"].append(t)
    for i, seconds in enumerate((3, 12)):  # one window, then three
        p = tmp / f"imu{i}.npy"
        np.save(p, rng.normal(size=(6, 400 * seconds)).astype(np.float32))
        out["imu"].append(p)
    for i, text in enumerate(TEXTS[:2]):
        p = tmp / f"text{i}.txt"
        p.write_text(text, encoding="utf-8")
        out["text"].append(p)
    out["video"] = [_write_video(tmp / "clip.mp4", rng)]
    return out


def _write_video(path: Path, rng: np.random.Generator) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


# ---------------------------------------------------------------- parity and loading


def test_golden_parity_float32(tiny: str, golden_tensors: dict[str, torch.Tensor]) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    assert emb.dim == 24 and emb.dtype == torch.float32
    for m in GOLDEN_MODALITIES:
        got = emb.embed_tensors(m, golden_tensors[f"input.{m}"])
        ref = F.normalize(golden_tensors[f"output.{m}"], dim=-1).numpy()
        assert got.dtype == np.float32 and got.shape == ref.shape, m
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - ref).max() <= 1e-4, m


def test_text_only_never_loads_other_towers(tiny: str) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    assert emb.dim == 24 and emb.model_id.startswith("dir:tiny-")  # neither loads a tower
    assert emb.loaded_towers == ()
    vecs = emb.embed("text", TEXTS)
    assert vecs.shape == (len(TEXTS), 24)
    assert emb.loaded_towers == ("text",)
    assert [m.modalities for m in emb.models] == [("text",)]
    assert set(emb.models[0].state_dict()) and all(".text." in k for k in emb.models[0].state_dict())
    # A later image needs the vision tower: loaded alone, beside the text model.
    emb.embed_tensors("image", torch.zeros(1, 3, 224, 224))
    assert sorted(m.modalities for m in emb.models) == [("text",), ("vision",)]


def test_declared_modalities_load_together_and_limit_use(tiny: str) -> None:
    emb = Embedder(tiny, device="cpu", dtype="bfloat16", modalities=["vision", "text"])
    assert emb.modalities == ("image", "video", "text")  # video shares the vision tower
    emb.embed("text", ["a bird"])
    assert [m.modalities for m in emb.models] == [("vision", "text")]
    assert all(p.dtype == torch.bfloat16 for p in emb.models[0].parameters())  # weights stored in bf16
    with pytest.raises(UsageError, match="audio"):
        emb.embed_tensors("audio", torch.zeros(1, 3, 1, 128, 204))
    assert emb.loaded_towers == ("vision", "text")


def test_paths_equal_loaded_tensors(tiny: str, media: dict[str, list[Path]], tmp_path: Path) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    files = {**media, **_write_media(tmp_path)}
    for modality, paths in files.items():
        by_path = emb.embed_paths(modality, paths, batch_size=2)
        loaded = [emb.load(modality, p) for p in paths]
        by_tensor = emb.embed_tensors(modality, loaded)
        assert by_path.shape == (len(paths), 24), modality
        assert np.abs(by_path - by_tensor).max() <= 1e-5, modality
    # Text: strings are texts; embed_paths / Path items read the files.
    texts = emb.embed("text", TEXTS[:2])
    assert np.abs(emb.embed_paths("text", files["text"]) - texts).max() <= 1e-5
    assert np.abs(emb.embed("text", [files["text"][0], TEXTS[1]]) - texts).max() <= 1e-5
    # "vision" is "image"; batch size does not change results.
    one = emb.embed("image", media["image"], batch_size=1)
    assert np.abs(emb.embed("vision", media["image"], batch_size=8) - one).max() <= 1e-5


def test_shapes_from_loaders(tiny: str, media: dict[str, list[Path]], tmp_path: Path) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    files = _write_media(tmp_path)
    assert tuple(emb.load("image", media["image"][0]).shape) == (3, 224, 224)
    assert tuple(emb.load("audio", media["audio"][0]).shape) == (3, 1, 128, 204)
    assert tuple(emb.load("video", files["video"][0]).shape) == (15, 3, 2, 224, 224)
    assert tuple(emb.load("depth", files["depth"][0]).shape) == (1, 224, 224)
    assert tuple(emb.load("thermal", files["thermal"][0]).shape) == (1, 224, 224)
    assert [tuple(emb.load("imu", p).shape) for p in files["imu"]] == [(1, 6, 2000), (3, 6, 2000)]
    tokens = emb.load("text", files["text"][0])
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (77,)
    assert emb.loaded_towers == ()  # decoding needs no model


# ---------------------------------------------------------------- IMU windows


def test_imu_variable_window_counts(tiny: str) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(1)
    items = [torch.randn(w, 6, 2000, generator=gen) for w in (1, 3, 2)]
    got = emb.embed_tensors("imu", items)
    model = emb.model_for("imu")
    with torch.inference_mode():
        want = torch.stack([model.embed("imu", x).mean(dim=0) for x in items])  # scaled outputs, averaged
    assert np.abs(got - F.normalize(want, dim=-1).numpy()).max() <= 1e-5
    # Batch composition does not matter, and a fixed window count may come as one 4-D tensor.
    assert np.abs(emb.embed_tensors("imu", items[1:2]) - got[1:2]).max() <= 1e-5
    same = torch.stack([items[1], items[1][[2, 0, 1]]])
    four_d = emb.embed_tensors("imu", same)
    assert np.abs(four_d - got[1]).max() <= 1e-5
    with pytest.raises(UsageError, match="no clips"):
        emb.embed_tensors("imu", [torch.zeros(0, 6, 2000)])


# ---------------------------------------------------------------- bf16


def test_bf16_agrees_on_fixture_inputs(medium: tuple[Embedder, Embedder], golden_tensors: dict[str, torch.Tensor]) -> None:
    fp32, bf16 = medium
    assert bf16.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in bf16.models[0].parameters())
    for m in GOLDEN_MODALITIES:
        x = golden_tensors[f"input.{m}"]
        cos = _cos(fp32.embed_tensors(m, x), bf16.embed_tensors(m, x))
        assert cos.min() >= 0.999, (m, cos)


def test_bf16_agrees_on_preprocessed_media(
    medium: tuple[Embedder, Embedder], media: dict[str, list[Path]], tmp_path: Path
) -> None:
    fp32, bf16 = medium
    files = {**media, **_write_media(tmp_path)}
    files.pop("video")  # same tower as images, 15 clips: covered by the fixture's video input
    for modality, paths in files.items():
        a, b = fp32.embed_paths(modality, paths), bf16.embed_paths(modality, paths)
        assert _cos(a, b).min() >= 0.999, (modality, _cos(a, b))
    a, b = fp32.embed("text", TEXTS), bf16.embed("text", TEXTS)
    assert _cos(a, b).min() >= 0.999


def test_default_model_needs_no_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path))
    emb = Embedder(device="cpu")
    assert emb.model_id == "imagebind_huge" and emb.dim == 1024 and emb.loaded_towers == ()


def test_dtype_and_device_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(UsageError, match="dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(UsageError, match="device"):
        Embedder("imagebind_huge", device="tpu")


def test_batch_sizes_follow_the_device(tiny: str) -> None:
    assert resolve_chunk(None, torch.device("cpu")) == DEFAULT_CHUNK
    assert resolve_chunk(None, torch.device("cuda")) == GPU_CHUNK > DEFAULT_CHUNK  # a GPU wants big batches
    assert resolve_chunk(5, torch.device("cuda")) == 5
    assert default_batch_size("cpu") == 8  # files per batch in an index run
    assert default_batch_size("auto") == (64 if torch.cuda.is_available() else 8)
    with pytest.raises(UsageError, match="chunk_size"):
        resolve_chunk(0, torch.device("cpu"))
    small = Embedder(tiny, device="cpu", dtype="float32", chunk_size=2)
    whole = Embedder(tiny, device="cpu", dtype="float32")
    assert small.chunk_size == 2 and whole.chunk_size == DEFAULT_CHUNK
    x = torch.randn(5, 3, 224, 224)
    assert np.allclose(small.embed_tensors("image", x), whole.embed_tensors("image", x), atol=1e-5)


# ---------------------------------------------------------------- errors


def test_errors_are_clear(tiny: str, tmp_path: Path) -> None:
    emb = Embedder(tiny, device="cpu", dtype="float32")
    with pytest.raises(UsageError, match="unknown modality 'smell'.*image, video, text"):
        emb.embed("smell", ["x"])
    with pytest.raises(UsageError, match="unknown modality"):
        emb.embed_tensors("lidar", torch.zeros(1, 3))
    with pytest.raises(UsageError, match="must be a list"):
        emb.embed("text", "a lone string")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(MediaError, match="broken.jpg") as err:
        emb.embed("image", [bad])
    assert err.value.path == str(bad)
    with pytest.raises(UsageError, match="expected 4 dimensions"):
        emb.embed_tensors("image", torch.zeros(3, 224))
    assert emb.embed("image", []).shape == (0, 24)
    assert emb.loaded_towers == ()
