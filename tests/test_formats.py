"""Images, audio and video are found by content, as far as Pillow and FFmpeg decode them: every image
format Pillow writes, HEIC (pillow-heif) and camera RAW (rawpy), and the audio and video containers
FFmpeg reads, under odd or missing extensions, are embedded with the tiny model; text, CSV and random
bytes are not taken for media."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.helpers.formats import (AUDIO_CONTAINERS, VIDEO_CONTAINERS, write_audio_av, write_every_image_format,
                                   write_heic, write_layered_psd, write_linear_dng, write_video_av)
from xsearch.indexer.detect import detect_modality


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("formats")
    media = root / "media"
    images = write_every_image_format(media / "images")
    images["HEIC"] = write_heic(media / "images" / "phone_photo_heic_without_extension")
    images["DNG"] = write_linear_dng(media / "images" / "camera.DNG")
    images["PSD"] = write_layered_psd(media / "images" / "layered_psd_without_extension")
    (media / "audio").mkdir()
    (media / "video").mkdir()
    audio = {name: write_audio_av(media / "audio" / name, fmt, codec, rate=rate)
             for name, (fmt, codec, rate) in AUDIO_CONTAINERS.items()}
    video = {name: write_video_av(media / "video" / name, fmt, codec, options=opts)
             for name, (fmt, codec, opts) in VIDEO_CONTAINERS.items()}
    store = xsearch.open(root / "store", model=tiny_model)
    report = store.index([media])
    items = {it.path: it for it in store.storage.items()}
    yield {"images": images, "audio": audio, "video": video, "report": report, "items": items}
    store.close()


def _status(items, path: Path) -> tuple[str | None, str | None, str | None]:
    it = items.get(str(path))
    return (it.modality, it.status, it.error) if it else (None, "skipped", None)


def test_every_image_format_pillow_writes_is_embedded_under_odd_or_missing_names(indexed):
    got = {fmt: _status(indexed["items"], p) for fmt, p in indexed["images"].items()}
    assert {fmt: s for fmt, s in got.items() if s[:2] != ("image", "ok")} == {}
    # The set really covers the formats the issue names (not only the few the old extension list knew).
    assert {"AVIF", "DDS", "PPM", "JPEG2000", "ICO", "ICNS", "MPO", "QOI", "PCX", "SGI", "XBM", "TGA", "APNG",
            "HEIC", "DNG", "PSD"} <= set(got)


def test_audio_containers_ffmpeg_reads_are_embedded_as_audio(indexed):
    got = {name: _status(indexed["items"], p) for name, p in indexed["audio"].items()}
    assert {n: s for n, s in got.items() if s[:2] != ("audio", "ok")} == {}


def test_video_containers_ffmpeg_reads_are_embedded_as_video(indexed):
    got = {name: _status(indexed["items"], p) for name, p in indexed["video"].items()}
    assert {n: s for n, s in got.items() if s[:2] != ("video", "ok")} == {}


def test_the_run_reports_nothing_failed_or_skipped(indexed):
    report = indexed["report"]
    assert (report.failed, report.skipped, report.errors) == (0, 0, [])


def test_text_csv_and_random_bytes_are_not_taken_for_media(tmp_path):
    cases = {
        "notes": b"BMW and Porsche are cars, this is a note\n" * 10,  # starts like a BMP
        "page": b"P1 is the first paragraph of this text\n" * 10,  # starts like a PBM
        "list.dat": b"\x0a\x0a shopping list\n",  # starts like a PCX
        "app.ts": b"export const x: number = 1;\n" * 20,  # TypeScript, not a transport stream
        "sizes.h": b"#define icon_width 16\n#define icon_height 16\n",  # an XBM would say so in its extension
        "table.csv": b"a,b,c\n1,2,3\n",
        "blob.bin": np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "fake.tga": b"this is not a targa file at all\n",
        "fake.ico": b"\x00\x00\x01\x00 not an icon, text after the magic\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {name: detect_modality(str(tmp_path / name)) for name in cases} == {name: None for name in cases}


def test_an_m4a_whose_brand_says_mp4_stays_audio(tmp_path):
    path = write_audio_av(tmp_path / "voice.m4a", "mp4", "aac")  # "isom" brand, as many phones write
    assert open(path, "rb").read(12)[8:12] != b"M4A "
    assert detect_modality(str(path)) == "audio"


def test_an_mpeg_transport_stream_named_ts_is_video_by_content(tmp_path):
    path = write_video_av(tmp_path / "capture.ts", "mpegts", "mpeg2video")
    assert detect_modality(str(path)) == "video"


@pytest.mark.parametrize("extra, module, write", [("heif", "pillow_heif", write_heic), ("raw", "rawpy", write_linear_dng)])
def test_a_photo_needing_an_absent_extra_is_recorded_with_what_to_install(tmp_path, extra, module, write):
    """Without pillow-heif (rawpy), HEIC (RAW) cannot be read: the failure says which extra reads it."""
    import subprocess
    import sys

    path = write(tmp_path / ("photo.heic" if extra == "heif" else "photo.dng"))
    code = (f"import sys; sys.modules[{module!r}] = None\n"  # as if the extra were not installed
            "from xsearch.engine.preprocess.image import load_image\n"
            "from xsearch.errors import MediaError\n"
            f"try:\n    load_image({str(path)!r})\nexcept MediaError as e:\n    print(e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert f'pip install "xsearch[{extra}]"' in out.stdout, out.stderr
