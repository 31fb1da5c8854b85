"""Zero-shot classification (the original's probabilities), stored tags and the tag filter."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import xsearch
from tests.awkward import run_cli
from tests.corpus import write_image
from xsearch.engine.embedder import Embedder
from xsearch.errors import UsageError
from xsearch.query.classify import label_matrix, probabilities

# fixture key -> our modality name
PAIRS = [("vision", "image"), ("video", "video"), ("audio", "audio"), ("depth", "depth"), ("thermal", "thermal"),
         ("imu", "imu")]


@pytest.fixture(scope="module")
def embedder(tiny_model: str) -> Embedder:
    return Embedder(tiny_model, device="cpu", dtype="float32")


@pytest.mark.parametrize("key,modality", PAIRS)
def test_classify_reproduces_the_originals_probabilities_from_the_reference_outputs(golden_tensors, embedder, key, modality):
    text = embedder.embed_tensors("text", golden_tensors["input.text"], scaled=True)
    x = embedder.embed_tensors(modality, golden_tensors[f"input.{key}"], scaled=True)
    ours = probabilities(x, text)
    ref_out, ref_text = golden_tensors[f"output.{key}"].double(), golden_tensors["output.text"].double()
    reference = torch.softmax(ref_out @ ref_text.T, dim=1).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    # The scales are the checkpoint's: the outputs themselves match, not just their ranking.
    np.testing.assert_allclose(x, ref_out.numpy(), rtol=0, atol=1e-4 * float(ref_out.abs().max()))


def test_logit_scales_are_read_from_the_checkpoint_without_loading_the_tower(golden_tensors, tiny_model):
    fresh = Embedder(tiny_model, device="cpu", dtype="float32")
    for key, modality in PAIRS:
        expected = float(golden_tensors[f"output.{key}"][0].norm()) if key != "video" else 1.0
        if key not in ("video", "audio"):  # video and audio average clips: their norm is below the scale
            assert fresh.logit_scale(modality) == pytest.approx(expected, rel=1e-5)
    assert fresh.logit_scale("text") == pytest.approx(float(golden_tensors["output.text"][0].norm()), rel=1e-5)
    assert fresh.loaded_towers == ()


def test_label_texts_with_the_plain_template_are_the_models_text_outputs(golden_tensors, embedder, golden_dir):
    texts = json.loads((golden_dir / "tiny" / "texts.json").read_text(encoding="utf-8"))[:4]
    mat = label_matrix(embedder, texts, ["{}"])
    ref = golden_tensors["output.text"][:4].numpy()
    np.testing.assert_allclose(mat, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_store_classify_of_the_fixture_photos_gives_the_reference_probabilities(golden_tensors, golden_dir, tiny_model, tmp_path):
    texts = json.loads((golden_dir / "tiny" / "texts.json").read_text(encoding="utf-8"))[:4]
    photos = [golden_dir / "media" / p for p in json.loads((golden_dir / "tiny" / "cases.json").read_text())["images"]]
    with xsearch.open(tmp_path / "s", model=tiny_model, device="cpu", dtype="float32") as store:
        results = store.classify(photos, texts, templates="{}")
    ref = torch.softmax(golden_tensors["output.vision"].double() @ golden_tensors["output.text"][:4].double().T, dim=1)
    for r, row in zip(results, ref.numpy()):
        got = dict(r.labels)
        assert r.modality == "image"
        np.testing.assert_allclose([got[t] for t in texts], row, rtol=0, atol=1e-4)
        assert [lab for lab, _ in r.labels] == [texts[i] for i in np.argsort(-row, kind="stable")]


def test_several_templates_average_their_text_vectors(embedder):
    one = label_matrix(embedder, ["dog"], ["a photo of a {}."])
    two = label_matrix(embedder, ["dog"], ["a photo of a {}.", "a drawing of a {}."])
    a = embedder.embed("text", ["a photo of a dog.", "a drawing of a dog."])
    mean = a.mean(axis=0) / np.linalg.norm(a.mean(axis=0))
    np.testing.assert_allclose(two[0], mean * embedder.logit_scale("text"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(one, two)


def test_bad_labels_and_templates_are_refused_before_the_model_loads(tiny_model, tmp_path, golden_dir):
    photo = golden_dir / "media" / "images" / "dog_image.jpg"
    with xsearch.open(tmp_path / "s", model=tiny_model, device="cpu") as store:
        with pytest.raises(UsageError, match="twice"):
            store.classify([photo], "dog,dog")
        with pytest.raises(UsageError, match=r"no \{\}"):
            store.classify([photo], "dog,cat", templates="a photo")
        with pytest.raises(UsageError, match="no such file"):
            store.classify([tmp_path / "nope.jpg"], "dog,cat")
        assert store._embedder is None


# ------------------------------------------------------------------ stored tags


LABELS = ["dog", "car", "bird", "rain"]


@pytest.fixture()
def tagged_store(tmp_path, golden_dir, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    for p in sorted((golden_dir / "media" / "images").iterdir()):
        shutil.copy(p, media / p.name)
    for p in sorted((golden_dir / "media" / "audio").iterdir()):
        shutil.copy(p, media / p.name)
    for i in range(3):
        write_image(media / f"gen{i}.png", i + 10, size=(120, 90))
    store = xsearch.open(tmp_path / "store", model=tiny_model, device="cpu", dtype="float32")
    store.index([media])
    yield store, media
    store.close()


def _tags(store, path) -> list[tuple[str, float, str]]:
    item = store.storage.item_by_path(str(path))
    return [(t["label"], t["prob"], t["set"]) for t in store.tags_of([item.id]).get(item.id, [])]


def test_tags_are_stored_with_probabilities_and_their_label_sets_name(tagged_store):
    store, media = tagged_store
    report = store.tag(LABELS, name="animals", top=2)
    assert report["tagged"] == 9
    dog = media / "dog_image.jpg"
    tags = _tags(store, dog)
    assert len(tags) == 2 and {s for _, _, s in tags} == {"animals"}
    # An image's stored vector is its output (no scale): the tags are classify's top two, to float16 precision.
    ranked = store.classify([dog], LABELS)[0].labels
    assert [t for t, _, _ in tags] == [lab for lab, _ in ranked[:2]]
    np.testing.assert_allclose([p for _, p, _ in tags], [p for _, p in ranked[:2]], atol=5e-3)
    sets = store.label_sets()
    assert [s["name"] for s in sets] == ["animals"] and sets[0]["items"] == 9
    assert sum(sets[0]["counts"].values()) == 18
    assert store.status()["label_sets"][0]["name"] == "animals"


def test_min_prob_drops_unlikely_labels(tagged_store):
    store, media = tagged_store
    store.tag(LABELS, name="strict", top=None, min_prob=0.3)
    for p in media.iterdir():
        assert all(prob >= 0.3 for _, prob, _ in _tags(store, p))
    store.tag(LABELS, name="strict", top=None, min_prob=None)
    assert len(_tags(store, media / "car_image.jpg")) == len(LABELS)


def test_tag_filter_keeps_only_items_carrying_every_tag(tagged_store):
    store, media = tagged_store
    store.tag(LABELS, name="animals", top=1, target="image")
    store.tag(["indoors", "outdoors"], name="place", top=1, target="image")
    top1 = {p.name: _tags(store, p) for p in media.iterdir() if p.suffix != ".wav"}
    label = top1["dog_image.jpg"][0][0]
    want = {n for n, t in top1.items() if t[0][0] == label}
    hits = store.search(text="a dog", target="image", k=10, tags=[label])
    assert {Path(h.path).name for h in hits} == want and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    place = [t for t, _, s in _tags(store, media / "dog_image.jpg") if s == "place"][0]
    both = {n for n, t in top1.items() if {label, place} <= {x for x, _, _ in t}}
    assert {Path(h.path).name for h in store.search(text="a dog", k=10, tags=[label, place])} == both
    assert store.search(text="a dog", k=10, tags=["no such label"]) == []
    # Audio was not tagged: nothing there carries the tag.
    assert store.search(text="a dog", target="audio", k=10, tags=[label]) == []


def test_tag_filter_finds_tagged_items_beyond_the_first_candidates(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24)).astype(np.float32)
    with xsearch.open(tmp_path / "s", model=tiny_model, device="cpu") as store:
        store.add_vectors(x, modality="image", paths=[f"v{i}" for i in range(400)])
        store.tag(["dog", "car", "bird", "rain", "sea"], name="l", top=1)
        counts = store.label_sets()[0]["counts"]
        rare = min((lab for lab in counts if counts[lab]), key=lambda lab: counts[lab])
        hits = store.search(vector=x[0], k=400, tags=[rare])
        assert len(hits) == counts[rare]


def test_retagging_keeps_unchanged_items_and_replaces_only_its_own_set(tagged_store):
    store, media = tagged_store
    store.tag(LABELS, name="animals")
    store.tag(["indoors", "outdoors"], name="place")
    before = _tags(store, media / "car_image.jpg")
    assert store.tag(LABELS, name="animals")["tagged"] == 0  # same labels, nothing changed
    assert store.tag(["cat", "truck"], name="animals")["tagged"] == 9  # new labels: the set is replaced
    after = _tags(store, media / "car_image.jpg")
    assert {t for t, _, s in after if s == "animals"} <= {"cat", "truck"}
    assert [x for x in after if x[2] == "place"] == [x for x in before if x[2] == "place"]


def test_tags_follow_their_items_when_files_change_or_go(tagged_store):
    store, media = tagged_store
    store.tag(LABELS, name="animals", top=None)
    changed = media / "gen0.png"
    old = _tags(store, changed)
    write_image(changed, 99, size=(300, 200))
    os.utime(changed, ns=(1, 1))  # a different mtime and size: the indexer sees a change
    store.index([media])  # the index run re-tags changed items from the stored label vectors
    new = _tags(store, changed)
    expect = store.classify([changed], LABELS)[0].labels
    assert [t for t, _, _ in new] == [lab for lab, _ in expect]
    assert new != old
    (media / "car_image.jpg").unlink()
    store.index([media])
    assert store.storage.item_by_path(str(media / "car_image.jpg")) is None
    sets = store.label_sets()[0]
    assert sets["items"] == 8 and sum(sets["counts"].values()) == 8 * len(LABELS)
    write_image(media / "new.png", 5)
    store.index([media])
    assert len(_tags(store, media / "new.png")) == len(LABELS)  # new files are tagged without asking


def test_cli_tag_query_and_status(tagged_store, tmp_path):
    store, media = tagged_store
    where = str(store.path)
    store.close()
    labels = tmp_path / "animals.txt"
    labels.write_text("# what is it\ndog\ncar\n\nbird\n", encoding="utf-8")
    tagged = run_cli("tag", "--labels-file", labels, "--top", "1", "--target", "image", "--store", where, "--json")
    assert tagged.returncode == 0, tagged.stderr
    rep = json.loads(tagged.stdout)
    assert rep["name"] == "animals" and rep["labels"] == ["dog", "car", "bird"] and rep["items"] == 6
    label = max(rep["counts"], key=rep["counts"].get)
    q = run_cli("query", "--text", "a dog", "--tag", label, "--store", where, "--json")
    assert q.returncode == 0, q.stderr
    res = json.loads(q.stdout)
    assert len(res["results"]) == rep["counts"][label] and res["query"]["filters"]["tags"] == [label]
    st = run_cli("status", "--store", where)
    assert "labels animals: 3 labels, 6 items tagged" in st.stdout
    cl = run_cli("classify", media / "dog_image.jpg", "--labels", "dog,car", "--store", where, "--json")
    assert cl.returncode == 0, cl.stderr
    probs = [x["prob"] for x in json.loads(cl.stdout)["results"][0]["labels"]]
    assert abs(sum(probs) - 1) < 1e-6 and probs == sorted(probs, reverse=True)
    bad = run_cli("tag", "--store", where)
    assert bad.returncode == 2 and "--labels" in bad.stderr and "Traceback" not in bad.stderr


def test_a_store_of_the_previous_schema_gets_the_tag_tables_and_its_items_can_be_tagged(tmp_path, tiny_model):
    import sqlalchemy as sa

    from xsearch.storage import migrations

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'xsearch.db'}")
    with engine.begin() as conn:  # a store as schema version 2 left it, without the tag tables
        migrations.migrate(conn, where="test", read_only=False, upto=2)
    engine.dispose()
    with xsearch.open(tmp_path, model=tiny_model, device="cpu") as store:
        store.add_vectors(np.eye(24, dtype=np.float32)[:3], modality="image", paths=["a", "b", "c"])
        assert store.tag(["dog", "car"], name="pets", top=1)["tagged"] == 3
        assert store.label_sets()[0]["items"] == 3
        assert sa.inspect(store.storage.engine).has_table("tagged")


def test_classify_reads_a_text_file_not_its_name(tmp_path, tiny_model):
    note = tmp_path / "note.txt"
    note.write_text("a red sports car\n", encoding="utf-8")
    with xsearch.open(tmp_path / "s", model=tiny_model, device="cpu") as store:
        (result,) = store.classify([note], ["a red sports car", str(note)], templates="{}")
    assert result.modality == "text" and result.labels[0][0] == "a red sports car"
