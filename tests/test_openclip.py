"""OpenCLIPEmbedder on a tiny random-weight open_clip model saved to a local file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xsearch.engine.openclip import OpenCLIPEmbedder
from xsearch.errors import MediaError, ModelError, UsageError

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = ["a dog", "a photo of a car", "A bird."]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model-config JSON, random weights saved with torch.save, and the open_clip model itself."""
    d = tmp_path_factory.mktemp("openclip")
    config = d / "xsearch-test-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem)
    weights = d / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return {"config": config, "weights": weights, "model": model.eval(), "preprocess": preprocess, "arch": config.stem}


@pytest.fixture(scope="module")
def emb(tiny_clip: dict) -> OpenCLIPEmbedder:
    return OpenCLIPEmbedder(tiny_clip["config"], tiny_clip["weights"], device="cpu", dtype="float32")


@pytest.fixture
def images(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "media" / "images").glob("*.jpg"))


def test_shapes_norms_and_properties(emb: OpenCLIPEmbedder, images: list[Path]) -> None:
    img, txt = emb.embed("image", images), emb.embed("text", TEXTS)
    assert img.shape == (3, 32) and txt.shape == (3, 32) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert emb.dim == 32 and emb.dtype == torch.float32 and emb.device == torch.device("cpu")
    assert emb.model_id.startswith("openclip:xsearch-test-tiny-clip:")
    assert tuple(emb.load("image", images[0]).shape) == (3, 64, 64)


def test_equals_open_clip_directly(emb: OpenCLIPEmbedder, tiny_clip: dict, images: list[Path]) -> None:
    model, preprocess = tiny_clip["model"], tiny_clip["preprocess"]
    tokens = open_clip.get_tokenizer(tiny_clip["arch"])(TEXTS)
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        want_img = F.normalize(model.encode_image(pixels), dim=-1).numpy()
        want_txt = F.normalize(model.encode_text(tokens), dim=-1).numpy()
    assert np.abs(emb.embed("image", images) - want_img).max() <= 1e-5
    assert np.abs(emb.embed_tensors("image", pixels) - want_img).max() <= 1e-5
    assert np.abs(emb.embed("text", TEXTS) - want_txt).max() <= 1e-5
    assert np.abs(emb.embed_tensors("text", tokens) - want_txt).max() <= 1e-5


def test_same_input_same_vector(emb: OpenCLIPEmbedder, images: list[Path], tmp_path: Path) -> None:
    img = emb.embed("image", images)
    # Each image retrieves itself: identical input, identical vector, whatever the batch.
    again = emb.embed("image", images[::-1], batch_size=1)[::-1]
    assert np.abs(img - again).max() <= 1e-5
    assert (np.argmax(img @ again.T, axis=1) == np.arange(len(images))).all()
    txt = emb.embed("text", TEXTS)
    assert np.abs(emb.embed("text", TEXTS[1:2]) - txt[1:2]).max() <= 1e-5
    f = tmp_path / "query.txt"
    f.write_text(TEXTS[2], encoding="utf-8")
    assert np.abs(emb.embed_paths("text", [f]) - txt[2:]).max() <= 1e-5
    scores = txt @ img.T  # a valid (texts x images) similarity matrix
    assert scores.shape == (3, 3) and np.all(np.abs(scores) <= 1 + 1e-5)


def test_bf16_agrees(tiny_clip: dict, emb: OpenCLIPEmbedder, images: list[Path]) -> None:
    bf16 = OpenCLIPEmbedder(tiny_clip["arch"], tiny_clip["weights"], device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    for m, items in (("image", images), ("text", TEXTS)):
        cos = (emb.embed(m, items) * bf16.embed(m, items)).sum(axis=1)
        assert cos.min() >= 0.999, (m, cos)


def test_errors(tiny_clip: dict, emb: OpenCLIPEmbedder, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only image and text, not audio"):
        emb.embed("audio", ["x.wav"])
    with pytest.raises(UsageError, match="only image and text"):
        emb.embed_tensors("depth", torch.zeros(1, 1, 64, 64))
    with pytest.raises(ModelError, match="never downloads"):
        OpenCLIPEmbedder(tiny_clip["arch"], "openai", device="cpu")
    with pytest.raises(ModelError, match="unknown OpenCLIP architecture"):
        OpenCLIPEmbedder("no-such-arch", tiny_clip["weights"], device="cpu")
    with pytest.raises(ModelError, match="Hugging Face"):
        OpenCLIPEmbedder("ViT-B-16-SigLIP", tiny_clip["weights"], device="cpu")
    wrong = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(ModelError, match="wrong.pt"):
        OpenCLIPEmbedder(tiny_clip["arch"], wrong, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MediaError, match="bad.png"):
        emb.embed("image", [bad])
