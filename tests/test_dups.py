"""Near-duplicate groups: real re-encoded, resized and cropped files, a video with the sound and a still
taken from it, constructed vectors for the grouping itself; nothing is ever deleted."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import xsearch
from tests.awkward import run_cli
from tests.corpus import write_audio, write_image
from tests.helpers.media import extract_still, extract_wav, image_variants, photo_frame, reencoded_wav, static_video
from xsearch.query import dups as D

# The tiny random-weight model separates little: distinct files of one modality reach a cosine of 0.996
# with it, while a re-encode, a resize, a 4-pixel crop or a re-encoded WAV stay above 0.9995.
STRICT = 0.999


@pytest.fixture(scope="module")
def dup_store(tmp_path_factory, golden_dir, tiny_model):
    root = tmp_path_factory.mktemp("dups")
    media = root / "media"
    dogs = image_variants(golden_dir / "media" / "images" / "dog_image.jpg", media / "dogs")
    others = media / "others"
    others.mkdir()
    for name in ("car_image.jpg", "bird_image.jpg"):
        shutil.copy(golden_dir / "media" / "images" / name, others / name)
    for i in range(2):
        write_image(others / f"gen{i}.png", 20 + i, size=(200, 150))
    sounds = media / "sounds"
    sounds.mkdir()
    shutil.copy(golden_dir / "media" / "audio" / "dog_audio.wav", sounds / "dog.wav")
    reencoded_wav(sounds / "dog.wav", sounds / "dog_16bit.flac")
    shutil.copy(golden_dir / "media" / "audio" / "car_audio.wav", sounds / "car.wav")
    write_audio(sounds / "tone.wav", 700.0, seconds=3)
    clips = media / "clips"
    clips.mkdir()
    static_video(clips / "clip.mp4", photo_frame(1), freq=330)
    static_video(clips / "other.mp4", photo_frame(2), freq=520)
    extract_wav(clips / "clip.mp4", sounds / "clip_sound.wav")
    extract_still(clips / "clip.mp4", others / "clip_still.png")
    # Newest first decides between equal resolutions: make the original the newest.
    for i, p in enumerate(dogs):
        os.utime(p, ns=(10**18 if p.name == "dog_image.jpg" else 10**17 + i, ) * 2)
    store = xsearch.open(root / "store", model=tiny_model, device="cpu")
    report = store.index([media])
    assert report.failed == 0
    yield store, media
    store.close()


def _names(group) -> list[str]:
    return [Path(m.path).name for m in group.members]


def test_reencoded_resized_and_cropped_photos_form_one_group_with_the_largest_newest_as_keeper(dup_store):
    store, media = dup_store
    groups = [g for g in store.duplicates(target="image", threshold=STRICT)]
    assert len(groups) == 1
    g = groups[0]
    assert sorted(_names(g)) == ["dog_image.jpg", "dog_image_crop.jpg", "dog_image_q60.jpg", "dog_image_small.png"]
    assert g.keeper.path.endswith("dog_image.jpg") and g.keeper.keeper and g.keeper.score == 1.0
    assert all(STRICT <= m.score <= 1.0 for m in g.members)
    assert g.kind == "same"


def test_a_reencoded_wav_is_grouped_with_its_original(dup_store):
    store, _ = dup_store
    groups = store.duplicates(target="audio", threshold=STRICT)
    assert [sorted(_names(g)) for g in groups] == [["dog.wav", "dog_16bit.flac"]]


def test_cross_pairs_a_videos_sound_with_the_wav_cut_from_it_and_the_video_with_its_still(dup_store):
    store, _ = dup_store
    plain = store.duplicates(threshold=STRICT)
    assert all(g.kind == "same" for g in plain)
    cross = [g for g in store.duplicates(threshold=STRICT, cross=True, cross_threshold=0.998) if g.kind != "same"]
    got = sorted((g.kind, _names(g)[0], sorted(_names(g)[1:])) for g in cross)
    assert got == [("audio-track", "clip.mp4", ["clip_sound.wav"]), ("still", "clip.mp4", ["clip_still.png"])]
    track = next(g for g in cross if g.kind == "audio-track")
    assert track.members[1].modality == "audio" and track.members[1].score > 0.9999


def test_cli_dups_lists_groups_as_json_and_paths_and_deletes_nothing(dup_store):
    store, media = dup_store
    before = sorted(p for p in media.rglob("*"))
    where = str(store.path)
    js = run_cli("dups", "--threshold", str(STRICT), "--store", where, "--json")
    assert js.returncode == 0, js.stderr
    groups = json.loads(js.stdout)["groups"]
    assert sorted(len(g["members"]) for g in groups) == [2, 4]
    assert all(g["members"][0]["keeper"] and g["keeper"] == g["members"][0]["path"] for g in groups)
    paths = run_cli("dups", "--threshold", str(STRICT), "--target", "image", "--store", where, "--paths")
    assert sorted(Path(p).name for p in paths.stdout.splitlines()) == [
        "dog_image_crop.jpg", "dog_image_q60.jpg", "dog_image_small.png"]
    assert sorted(p for p in media.rglob("*")) == before
    bad = run_cli("dups", "--threshold", "2", "--store", where)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _planted(n: int, d: int, pairs: int, cos: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """n unit vectors in clusters (cosine ~0.5 inside one) with `pairs` copies at `cos` to their source."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(4, n // 200), d)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = []
    for k, src in enumerate(rng.choice(n - pairs, size=pairs, replace=False)):
        dst = n - pairs + k
        noise = rng.standard_normal(d).astype(np.float32)
        noise -= noise @ x[src] * x[src]
        x[dst] = cos * x[src] + np.sqrt(1 - cos**2) * noise / np.linalg.norm(noise)
        planted.append((int(src), int(dst)))
    return x, planted


def test_groups_through_the_cells_find_every_planted_pair_and_nothing_else():
    x, planted = _planted(6000, 64, 40, 0.97)
    quantizer = D.train_quantizer(x)
    assert quantizer.ntotal > 16  # many cells: the search is not all pairs
    pairs = D.similar_pairs(x, 0.95, quantizer, probes=2)
    assert sorted(map(tuple, pairs.tolist())) == sorted(planted)
    exact = D.similar_pairs(x, 0.95, None, probes=1)
    assert sorted(map(tuple, exact.tolist())) == sorted(planted)


def test_chains_of_near_duplicates_join_into_one_group():
    pairs = np.array([[1, 2], [2, 5], [7, 8]])
    assert D.components(pairs) == [[1, 2, 5], [7, 8]]


def test_store_duplicates_above_the_exact_size_use_a_quantizer_and_keep_names(tmp_path, tiny_model):
    n = D.EXACT_MAX + 500
    x, planted = _planted(n, 24, 30, 0.99, seed=3)
    with xsearch.open(tmp_path / "s", model=tiny_model, device="cpu") as store:
        ids = store.add_vectors(x, modality="image", paths=[f"v{i}" for i in range(n)])
        groups = store.duplicates(threshold=0.98)
    found = sorted(tuple(sorted(int(m.path[1:]) for m in g.members)) for g in groups)
    assert found == sorted(tuple(sorted(p)) for p in planted)
    assert len(ids) == n


def test_keeper_prefers_resolution_then_duration_then_newest():
    from xsearch.storage.records import Item

    def item(i, facts, mtime):
        return Item(id=i, path=f"p{i}", modality="image", size=1, mtime_ns=mtime, content_hash=None, facts=facts,
                    status="ok", error=None, model=None, root=None, indexed_at=0.0)

    small_new = item(1, {"width": 10, "height": 10}, 5)
    big_old = item(2, {"width": 20, "height": 20}, 1)
    assert max([small_new, big_old], key=D.keeper_key) is big_old
    long_old, short_new = item(3, {"duration": 9.0}, 1), item(4, {"duration": 2.0}, 9)
    assert max([short_new, long_old], key=D.keeper_key) is long_old
    assert max([item(5, {}, 1), item(6, {}, 2)], key=D.keeper_key).id == 6



def _scenes_video(path: Path, frames: list[np.ndarray], seconds_each: float = 4.0, fps: int = 4) -> Path:
    """A silent MPEG-4 video showing each frame for ``seconds_each`` seconds, in turn."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for _ in range(int(seconds_each * fps)):
                for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


def test_videos_with_moments_are_compared_window_by_window_so_a_shared_intro_is_not_enough(tmp_path, tiny_model):
    from PIL import Image

    intro, rest_a, rest_b = photo_frame(70), photo_frame(71), photo_frame(72)
    media = tmp_path / "media"
    media.mkdir()
    _scenes_video(media / "a.mp4", [intro, rest_a])
    _scenes_video(media / "b.mp4", [intro, rest_b])  # the same intro, then another scene
    smaller = [np.asarray(Image.fromarray(f).resize((128, 96), Image.BICUBIC)) for f in (intro, rest_a)]
    _scenes_video(media / "a-small.mp4", smaller)  # a at another resolution: a real duplicate
    with xsearch.open(tmp_path / "store", model=tiny_model, device="cpu") as store:
        store.index([media], moments=True)
        by_name = {Path(it.path).name: it for it in store.storage.items(modality="video")}
        vec = {n: store.storage.get_vectors([it.id])[0] for n, it in by_name.items()}
        win = {n: np.stack([s.vector for s in sorted(store.storage.item_segments(it.id, vectors=True),
                                                     key=lambda s: s.start) if s.modality == "video"])
               for n, it in by_name.items()}
        whole_ab = float(vec["a.mp4"] @ vec["b.mp4"])
        aligned_ab = D.aligned_similarity(win["a.mp4"], win["b.mp4"])
        aligned_dup = D.aligned_similarity(win["a.mp4"], win["a-small.mp4"])
        # The whole-file vectors average the shared intro in, so they read as closer than the windows do.
        assert aligned_ab < whole_ab and aligned_ab < aligned_dup
        threshold = (max(aligned_ab, whole_ab - 1e-4) + min(whole_ab, aligned_dup)) / 2
        threshold = min(threshold, aligned_dup - 1e-6, float(vec["a.mp4"] @ vec["a-small.mp4"]) - 1e-6)
        assert aligned_ab < threshold <= whole_ab  # by the whole-file vector alone, a and b would be duplicates
        groups = store.duplicates(target="video", threshold=threshold)
    assert [sorted(_names(g)) for g in groups] == [["a-small.mp4", "a.mp4"]]
