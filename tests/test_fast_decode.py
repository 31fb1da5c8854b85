"""Fast (draft) JPEG decoding for indexing, and the indexer's per-run content-hash memo.

``load_image`` stays exact by default; ``fast=True`` (or ``with fast_decode():`` in
a thread) lets libjpeg decode a large JPEG at 1/2..1/8 scale first. Embeddings must
stay within cosine 0.999 of the exact pipeline.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch.engine.embedder import Embedder
from xsearch.engine.preprocess import image as I

MIN_COS = 0.999


def photo(path: Path, seed: int, size: tuple[int, int], quality: int = 90) -> Path:
    """A photo-like JPEG: smooth colour field, a few hard edges, texture and noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        img[y0 : y0 + int(rng.integers(20, h // 2)), x0 : x0 + int(rng.integers(20, w // 2))] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=quality)
    return path


def reference_tensor(path: Path) -> torch.Tensor:
    """The original pipeline written out with torch ops (ToTensor + Normalize), for bit-exactness."""
    img = Image.open(path).convert("RGB")
    img = I.center_crop(I.resize_short_side(img))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(I.CLIP_MEAN).view(3, 1, 1)) / torch.tensor(I.CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, golden_dir) -> list[Path]:
    d = tmp_path_factory.mktemp("photos")
    made = [
        photo(d / "landscape.jpg", 1, (1024, 768)),
        photo(d / "portrait.jpg", 2, (768, 1024)),
        photo(d / "large.jpg", 3, (2048, 1536)),
        photo(d / "odd.jpg", 4, (1001, 453)),
        photo(d / "panorama.jpg", 5, (2400, 460), quality=75),
    ]
    return sorted((golden_dir / "media" / "images").glob("*.jpg")) + made


@pytest.fixture(scope="module")
def tiny_fp32(tiny_model) -> Embedder:
    return Embedder(tiny_model, device="cpu", dtype="float32")


def test_default_is_exact_and_bit_identical(photos):
    for p in photos:
        x = I.load_image(p)
        assert x.is_contiguous() and x.dtype == torch.float32 and x.shape == (3, 224, 224)
        assert torch.equal(x, reference_tensor(p)), p
        assert torch.equal(I.load_image(p, fast=False), x)


def test_fast_decodes_large_jpegs_at_reduced_scale(photos, tmp_path):
    big = next(p for p in photos if p.name == "large.jpg")
    assert I.open_image(big).size == (2048, 1536)
    assert I.open_image(big, I.DRAFT_MIN_SHORT_SIDE).size == (512, 384)  # 1/4: short side 384 >= 336
    land = next(p for p in photos if p.name == "landscape.jpg")
    assert I.open_image(land, I.DRAFT_MIN_SHORT_SIDE).size == (512, 384)  # 1/2
    # Too small to scale (short side < 2 x 336: the golden photos too), or not a JPEG: fast is exact.
    small = photo(tmp_path / "small.jpg", 7, (1000, 640))
    assert I.open_image(small, I.DRAFT_MIN_SHORT_SIDE).size == (1000, 640)
    for p in [small, *(p for p in photos if p.parent.name == "images")]:
        assert torch.equal(I.load_image(p, fast=True), I.load_image(p)), p
    png = tmp_path / "large.png"
    Image.open(big).save(png)
    assert torch.equal(I.load_image(png, fast=True), I.load_image(png))
    # Fast decoding changes pixels only a little, never the geometry.
    x, y = I.load_image(big), I.load_image(big, fast=True)
    assert x.shape == y.shape and not torch.equal(x, y)
    assert (x - y).abs().mean().item() < 0.05


def test_fast_embeddings_agree_with_exact_on_fixture_model(photos, tiny_fp32):
    exact = tiny_fp32.embed_tensors("image", torch.stack([I.load_image(p) for p in photos]))
    fast = tiny_fp32.embed_tensors("image", torch.stack([I.load_image(p, fast=True) for p in photos]))
    cos = (exact * fast).sum(axis=1)
    assert cos.min() >= MIN_COS, dict(zip([p.name for p in photos], cos.round(6)))


def test_fast_decode_policy_is_thread_local(photos):
    big = next(p for p in photos if p.name == "large.jpg")
    exact, fast = I.load_image(big), I.load_image(big, fast=True)
    seen = {}

    def other():
        seen["enabled"] = I.fast_decode_enabled()
        seen["x"] = I.load_image(big)

    assert not I.fast_decode_enabled()
    with I.fast_decode():
        assert I.fast_decode_enabled()
        assert torch.equal(I.load_image(big), fast)
        assert torch.equal(I.load_image(big, fast=False), exact)  # an explicit argument wins
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with I.fast_decode(False):
            assert torch.equal(I.load_image(big), exact)
        assert I.fast_decode_enabled()
    assert not I.fast_decode_enabled()
    assert seen["enabled"] is False and torch.equal(seen["x"], exact)


def _vectors(store) -> dict[str, np.ndarray]:
    items = store.storage.items(status="ok")
    vecs = store.storage.get_vectors([it.id for it in items])
    return {Path(it.path).name: v for it, v in zip(items, vecs)}


@pytest.mark.parametrize("fast", [True, False])
def test_indexer_fast_decode_option(tmp_path, photos, tiny_model, fast):
    from xsearch.api import Store
    from xsearch.indexer import Indexer

    media = tmp_path / "media"
    media.mkdir()
    for p in photos:
        shutil.copy(p, media / p.name)
    with Store(tmp_path / "store", model=tiny_model, dtype="float32") as store:
        indexer = Indexer(store.storage, lambda: store.embedder, store.model_id, batch_size=4, fast_decode=fast)
        report = indexer.run([str(media)])
        assert report.embedded == len(photos) and report.failed == 0
        got = _vectors(store)
        exact = store.embedder.embed("image", [media / p.name for p in photos])
    cos = np.array([float(got[p.name] @ e) / float(np.linalg.norm(got[p.name])) for p, e in zip(photos, exact)])
    assert cos.min() >= (MIN_COS if fast else 0.99999), cos


def test_store_index_decodes_fast_by_default(tmp_path, photos, tiny_model, monkeypatch):
    from xsearch.api import Store

    media = tmp_path / "media"
    media.mkdir()
    big = next(p for p in photos if p.name == "large.jpg")
    shutil.copy(big, media / big.name)
    calls = []
    real = I.open_image

    def spy(path, draft_short_side=None):
        calls.append(draft_short_side)
        return real(path, draft_short_side)

    monkeypatch.setattr(I, "open_image", spy)
    with Store(tmp_path / "store", model=tiny_model) as store:
        assert store.index([media]).embedded == 1
    assert calls == [I.DRAFT_MIN_SHORT_SIDE]


def test_copies_found_within_a_run_and_across_runs(tmp_path, photos, tiny_model):
    """A file whose content was embedded earlier (this run or a previous one) takes the stored vector."""
    from xsearch.api import Store

    media = tmp_path / "media"
    (media / "a").mkdir(parents=True)
    (media / "m").mkdir()
    (media / "z").mkdir()
    src = next(p for p in photos if p.name == "landscape.jpg")
    shutil.copy(src, media / "a" / "first.jpg")
    for i, p in enumerate(photos[:5]):  # enough files between the two copies that the first is committed
        if p != src:
            shutil.copy(p, media / "m" / f"{i}_{p.name}")
    shutil.copy(src, media / "z" / "second.jpg")
    with Store(tmp_path / "store", model=tiny_model, dtype="float32") as store:
        report = store.index([media], batch_size=1, workers=1)
        assert report.failed == 0 and report.copied == 1
        assert report.embedded + report.copied == sum(1 for f in media.rglob("*.jpg"))
        v = _vectors(store)
        assert np.array_equal(v["first.jpg"], v["second.jpg"])
        shutil.copy(src, media / "third.jpg")
        again = store.index([media])
        assert (again.embedded, again.copied, again.unchanged) == (0, 1, report.embedded + report.copied)
        assert np.array_equal(_vectors(store)["third.jpg"], v["first.jpg"])


def test_light_model_runs_single_threaded_and_threads_are_restored(tmp_path, photos, tiny_model, monkeypatch):
    """A tiny tower's forward gains nothing from intra-op threads and loses much to decode workers."""
    from xsearch.api import Store
    from xsearch.indexer import pipeline

    media = tmp_path / "media"
    media.mkdir()
    for p in photos[:4]:
        shutil.copy(p, media / p.name)
    before = torch.get_num_threads()
    seen = []
    with Store(tmp_path / "store", model=tiny_model) as store:
        emb = store.embedder
        real = emb.embed_tensors

        def spy(modality, batch):
            seen.append(torch.get_num_threads())
            return real(modality, batch)

        monkeypatch.setattr(emb, "embed_tensors", spy)
        torch.set_num_threads(2)
        try:
            assert store.index([media], batch_size=2).embedded == 4
            assert seen and set(seen) == {1}
            assert torch.get_num_threads() == 2
            seen.clear()
            monkeypatch.setattr(pipeline, "LIGHT_MODEL_PARAMS", 0)  # a "heavy" model keeps every thread
            for p in photos[4:6]:  # new content: embedded in this second run
                shutil.copy(p, media / p.name)
            store.index([media], batch_size=2)
            assert seen and set(seen) == {2}
        finally:
            torch.set_num_threads(before)
