"""Model weights: naming, download (against a local HTTP server), conversion and tower-wise loading."""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from xsearch import paths
from xsearch.engine import weights
from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
from xsearch.engine.modalities import IMAGEBIND_MODALITIES
from xsearch.errors import ModelError

INPUTS = ("vision", "text", "audio", "depth", "thermal", "imu", "video")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    for var in ("XSEARCH_MODEL", "XSEARCH_OFFLINE", "XSEARCH_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture
def tiny(golden_dir: Path) -> Path:
    return golden_dir / "tiny"


def reference_model(model_dir: Path) -> ImageBindModel:
    """The plain way: full model, strict load of the whole checkpoint."""
    model = ImageBindModel(ImageBindConfig.from_json(model_dir / "config.json"))
    model.load_state_dict(torch.load(model_dir / "checkpoint.pth", weights_only=True), strict=True)
    return model.eval()


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in ("config.json", "checkpoint.pth"):
        shutil.copy(src / f, dst / f)
    return dst


# ---------------------------------------------------------------- paths and names


def test_paths_follow_xsearch_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.xsearch_home() == home
    assert paths.models_dir() == home / "models"
    assert paths.default_store_dir() == home / "store"
    monkeypatch.delenv("XSEARCH_HOME")
    assert paths.xsearch_home().name == "xsearch"


def test_resolve_model_name(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert weights.resolve_model_name(None) == "imagebind_huge"
    assert weights.resolve_model_name("imagebind_huge") == "imagebind_huge"
    monkeypatch.setenv("XSEARCH_MODEL", str(tiny))
    assert weights.resolve_model_name(None) == str(tiny.resolve())
    assert weights.resolve_model_name("imagebind_huge") == "imagebind_huge"  # explicit wins


def test_bad_model_names(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ModelError, match="no such model.*config.json"):
        weights.resolve_model_name(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"missing config\.json"):
        weights.load_imagebind(str(empty))
    (empty / "config.json").write_text((tiny / "config.json").read_text())
    with pytest.raises(ModelError, match=r"missing checkpoint\.pth"):
        weights.load_imagebind(str(empty))
    with pytest.raises(ModelError, match="not a model directory"):
        weights.resolve_model_name(str(tiny / "config.json"))


def test_huge_offline_says_where_to_put_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSEARCH_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        weights.load_imagebind(modalities=["text"])
    assert str(home / "models" / "imagebind_huge.pth") in str(e.value)
    assert weights.HUGE_URL in str(e.value)
    assert "CC BY-NC-SA 4.0" in str(e.value) and "OpenCLIP" in str(e.value)  # the licence, and the alternative
    assert weights.model_id() == "imagebind_huge"
    assert weights.cached_files() == {}


def test_huge_config_matches_official_state_dict(golden_dir: Path) -> None:
    official = json.loads((golden_dir / "imagebind_huge_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = ImageBindModel(ImageBindConfig.huge())
    sd = model.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == official
    groups = weights.split_state_dict(sd)
    assert sum(len(g) for g in groups.values()) == len(official)
    assert all(weights.modality_of_key(k) == m for m, g in groups.items() for k in g)
    assert weights.HUGE_MIN_SIZE == 4 * sum(torch.Size(s).numel() for s in official.values())


# ---------------------------------------------------------------- conversion and loading


def test_conversion_writes_one_file_per_tower(tiny: Path, home: Path) -> None:
    cache = weights.ensure_converted(str(tiny))
    assert cache.parent == home / "models" / "cache"
    assert re.fullmatch(r"tiny-[0-9a-f]{16}", cache.name)
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted([f"{m}.safetensors" for m in IMAGEBIND_MODALITIES] + ["config.json", "complete"])
    files = weights.cached_files(str(tiny))
    assert files["text"] == cache / "text.safetensors" and files["config"] == cache / "config.json"
    assert weights.ensure_converted(str(tiny)) == cache  # done once
    ckpt = torch.load(tiny / "checkpoint.pth", weights_only=True)
    from safetensors import safe_open

    for m in IMAGEBIND_MODALITIES:
        with safe_open(cache / f"{m}.safetensors", framework="pt") as f:
            keys = set(f.keys())
        assert keys and keys == {k for k in ckpt if weights.modality_of_key(k) == m}


def test_text_only_model_matches_full_strict_load(tiny: Path, golden_tensors: dict[str, torch.Tensor]) -> None:
    model = weights.load_imagebind(str(tiny), modalities=["text"])
    assert model.modalities == ("text",)
    assert all(k.split(".")[1] == "text" for k in model.state_dict())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = golden_tensors["input.text"]
    with torch.no_grad():
        out = model.embed("text", x)
        ref = reference_model(tiny).embed("text", x)
    assert torch.equal(out, ref)
    want = golden_tensors["output.text"]
    assert (out - want).abs().max() <= 1e-4 * want.abs().max()


def test_all_towers_match_full_strict_load(tiny: Path, golden_tensors: dict[str, torch.Tensor]) -> None:
    model = weights.load_imagebind(str(tiny))
    ref = reference_model(tiny)
    with torch.no_grad():
        for m in INPUTS:
            x = golden_tensors[f"input.{m}"]
            assert torch.equal(model.embed(m, x), ref.embed(m, x)), m
    image_only = weights.load_imagebind(str(tiny), modalities=["image", "video"])
    assert image_only.modalities == ("vision",)


def test_text_loads_without_the_vision_file(tiny: Path) -> None:
    cache = weights.ensure_converted(str(tiny))
    (cache / "vision.safetensors").rename(cache / "elsewhere")
    model = weights.load_imagebind(str(tiny), modalities=["text"])
    assert model.modalities == ("text",)
    with pytest.raises(ModelError) as e:
        weights.load_imagebind(str(tiny), modalities=["image"])
    assert "vision.safetensors is missing" in str(e.value) and "delete that directory" in str(e.value)
    assert str(cache) in str(e.value)


def test_damaged_cache_file_is_reported(tiny: Path) -> None:
    cache = weights.ensure_converted(str(tiny))
    (cache / "audio.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=f"audio.safetensors.*{re.escape(str(cache))}.*delete"):
        weights.load_imagebind(str(tiny), modalities=["audio"])


def test_interrupted_conversion_is_redone(tiny: Path) -> None:
    cache = weights.cache_dir(str(tiny))
    cache.mkdir(parents=True)  # what a kill half-way leaves: some files, no marker
    (cache / "text.safetensors").write_bytes(b"half a file")
    (cache / ".vision.safetensors.tmp-1-abcd").write_bytes(b"x")
    assert weights.cached_files(str(tiny)) == {}
    assert weights.ensure_converted(str(tiny)) == cache
    assert not (cache / ".vision.safetensors.tmp-1-abcd").exists()
    assert (cache / "complete").is_file()
    weights.load_imagebind(str(tiny), modalities=["text"])


def test_cache_key_ignores_location_but_not_content(tiny: Path, tmp_path: Path) -> None:
    copy = copy_model(tiny, tmp_path / "tiny")
    assert weights.model_id(str(copy)) == weights.model_id(str(tiny))
    assert re.fullmatch(r"dir:tiny-[0-9a-f]{8}", weights.model_id(str(tiny)))
    sd = torch.load(copy / "checkpoint.pth", weights_only=True)
    sd["modality_heads.text.proj.1.weight"] += 1
    torch.save(sd, copy / "checkpoint.pth")
    assert weights.model_id(str(copy)) != weights.model_id(str(tiny))
    assert weights.cache_dir(str(copy)) != weights.cache_dir(str(tiny))


def test_own_random_config(tmp_path: Path) -> None:
    dims = {"vision": 16, "text": 16, "audio": 8, "depth": 8, "thermal": 12, "imu": 8}
    cfg = {"out_embed_dim": 8}
    for m, d in dims.items():
        cfg.update({f"{m}_embed_dim": d, f"{m}_num_blocks": 1, f"{m}_num_heads": 2})
    config = ImageBindConfig.from_dict(cfg)
    torch.manual_seed(0)
    ref = ImageBindModel(config).eval()
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save(ref.state_dict(), d / "checkpoint.pth")

    model = weights.load_imagebind(str(d), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    inputs = {
        "vision": torch.randn(2, 3, 224, 224),
        "text": torch.randint(0, 49408, (2, 77)),
        "audio": torch.randn(2, 3, 1, 128, 204),
        "depth": torch.randn(2, 1, 224, 224),
        "thermal": torch.randn(2, 1, 224, 224),
        "imu": torch.randn(2, 6, 2000),
    }
    with torch.no_grad():
        for m, x in inputs.items():
            x64 = x if m == "text" else x.double()
            want = ref.embed(m, x)
            got = model.embed(m, x64)
            assert got.dtype == torch.float64
            assert (got.float() - want).abs().max() <= 1e-5 * want.abs().max(), m


def test_checkpoint_not_matching_config(tiny: Path, tmp_path: Path) -> None:
    d = copy_model(tiny, tmp_path / "wrong")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_num_blocks"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"checkpoint\.pth: does not match.*missing.*text.*config\.json"):
        weights.load_imagebind(str(d))


def test_unknown_keys_rejected(tiny: Path, tmp_path: Path) -> None:
    d = copy_model(tiny, tmp_path / "extra")
    sd = torch.load(d / "checkpoint.pth", weights_only=True)
    sd["logit_bias"] = torch.zeros(1)
    torch.save(sd, d / "checkpoint.pth")
    with pytest.raises(ModelError, match="belong to no ImageBind tower, e.g. logit_bias"):
        weights.ensure_converted(str(d))


class Payload:  # not a tensor: weights_only unpickling must refuse it
    pass


def test_only_weights_are_unpickled(tiny: Path, tmp_path: Path) -> None:
    d = copy_model(tiny, tmp_path / "evil")
    torch.save({"modality_heads.text.x": Payload()}, d / "checkpoint.pth")
    with pytest.raises(ModelError, match="refused to load"):
        weights.load_imagebind(str(d))
    (d / "checkpoint.pth").write_bytes(b"<html>404</html>")
    with pytest.raises(ModelError, match=r"checkpoint\.pth"):
        weights.load_imagebind(str(d))


# ---------------------------------------------------------------- download


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours ``Range: bytes=N-`` unless ``server.ranges`` is off."""

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append(self.headers.get("Range"))
        data = srv.payload
        rng = self.headers.get("Range") if srv.ranges else None
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
        if rng and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_next:  # drop the connection half-way, once
            srv.cut_next = False
            body = body[: len(body) // 2]
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up early, on purpose
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.payload = bytes(range(256)) * 4000 + b"end"
    srv.seen, srv.ranges, srv.cut_next = [], True, False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/imagebind_huge.pth"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download(server, home: Path) -> None:
    dest = paths.models_dir() / "model.pth"
    assert weights.download(server.url, dest, expected_size=len(server.payload), progress=False) == dest
    assert dest.read_bytes() == server.payload
    assert not dest.with_name("model.pth.part").exists()
    assert server.seen == [None]
    weights.download(server.url, dest)  # present: nothing fetched
    assert server.seen == [None]


def test_download_resumes_partial_file(server, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(server.payload[:12345])
    weights.download(server.url, dest, progress=False)
    assert server.seen == ["bytes=12345-"]
    assert dest.read_bytes() == server.payload


def test_download_restarts_when_server_ignores_range(server, tmp_path: Path) -> None:
    server.ranges = False
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(b"stale bytes")
    weights.download(server.url, dest, progress="always")  # the forced bar must not break anything
    assert dest.read_bytes() == server.payload


def test_download_resumes_after_dropped_connection(server, tmp_path: Path) -> None:
    server.cut_next = True
    dest = tmp_path / "model.pth"
    weights.download(server.url, dest, progress=False)
    assert server.seen[0] is None and server.seen[1] == f"bytes={len(server.payload) // 2}-"
    assert dest.read_bytes() == server.payload


def test_download_complete_part_file(server, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(server.payload)
    weights.download(server.url, dest, progress=False)  # server answers 416: nothing left
    assert dest.read_bytes() == server.payload


def test_download_size_mismatch(server, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    with pytest.raises(ModelError, match=f"expected {len(server.payload) + 1:,}"):
        weights.download(server.url, dest, expected_size=len(server.payload) + 1, progress=False)
    with pytest.raises(ModelError, match=r"expected at least .*discarded"):
        weights.download(server.url, dest, min_size=len(server.payload) * 2, progress=False)
    assert not dest.exists() and not dest.with_name("model.pth.part").exists()


def test_download_connection_refused_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "models" / "imagebind_huge.pth"
    url = f"http://127.0.0.1:{port}/imagebind_huge.pth"
    with pytest.raises(ModelError) as e:
        weights.download(url, dest, progress=False, timeout=5)
    assert str(dest) in str(e.value) and url in str(e.value)
    assert not dest.exists()


def test_offline_never_connects(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSEARCH_OFFLINE", "1")
    dest = tmp_path / "model.pth"
    with pytest.raises(ModelError, match=re.escape(str(dest))):
        weights.download(server.url, dest, progress=False)
    assert server.seen == []


def test_the_first_download_says_the_weights_licence(server, home: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(weights, "HUGE_URL", server.url)  # the local server stands in for the official host
    monkeypatch.setattr(weights, "HUGE_MIN_SIZE", len(server.payload))
    ckpt = weights._ensure_checkpoint(weights._spec("imagebind_huge"), progress=False)
    assert ckpt.read_bytes() == server.payload
    said = capsys.readouterr().err
    assert "non-commercial" in said and "CC BY-NC-SA 4.0" in said and "OpenCLIP" in said
    weights._ensure_checkpoint(weights._spec("imagebind_huge"), progress=False)  # downloaded: said only once
    assert capsys.readouterr().err == ""
