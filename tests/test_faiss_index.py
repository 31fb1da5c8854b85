"""FAISS indexes behind Storage: exact flat while small, IVF-PQ (re-ranked) once large."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xsearch.storage import IndexPolicy, Storage
from xsearch.storage.faiss_index import plan_ivf

DIM = 64
N_IVF = 60_000
CENTERS = 200


def clustered(n: int, seed: int, *, dim: int = DIM, centers: int = CENTERS) -> np.ndarray:
    """Unit vectors around fixed random centres (cosine ~0.7 to their centre), like real embeddings."""
    c = np.random.default_rng(7).normal(size=(centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centers, n)] + rng.normal(scale=1.0 / math.sqrt(dim), size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(store: Storage, ids: np.ndarray, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Exact top-k over the stored (read back) vectors of `ids`."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = queries @ store.get_vectors(ids).T
    out = []
    for s in scores:
        top = np.argsort(-s, kind="stable")[:k]
        out.append([(int(ids[j]), float(s[j])) for j in top])
    return out


def assert_same(got: list[list[tuple[int, float]]], truth: list[list[tuple[int, float]]]) -> None:
    """Same ids in the same order, scores equal up to float rounding (matmul shapes differ)."""
    assert [[i for i, _ in g] for g in got] == [[i for i, _ in t] for t in truth]
    assert np.allclose([[s for _, s in g] for g in got], [[s for _, s in t] for t in truth], atol=1e-5)


def recall(got: list[list[tuple[int, float]]], truth: list[list[tuple[int, float]]]) -> float:
    return float(np.mean([len({i for i, _ in g} & {i for i, _ in t}) / len(t) for g, t in zip(got, truth)]))


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("ivf")
    policy = IndexPolicy(flat_max=5_000, pq_min_dim=0)  # IVF-PQ at 64-d: the 1024-d path, quicker to test
    store = Storage(directory, policy=policy)
    x = clustered(N_IVF, seed=1)
    ids = []
    for start in range(0, N_IVF, 30_000):  # two batches: flat, then IVF-PQ built from the database
        ids += store.add_vectors(x[start: start + 30_000], modality="image",
                                 paths=[f"/data/{i:06d}.jpg" for i in range(start, min(start + 30_000, N_IVF))])
    store.flush()
    yield store, np.array(ids, dtype=np.int64), directory, policy
    store.close()


def test_plan_ivf_follows_size_and_dimension():
    policy = IndexPolicy()
    nlist, m, factory = plan_ivf(1_000_000, 1024, policy)
    assert nlist == 2048 and m == 128 and factory == "IVF2048,PQ128x8"  # 4*sqrt(N) = 4000, rounded down
    nlist, m, _ = plan_ivf(100_000, 1024, policy)
    assert nlist == 1024 and m == 128
    assert plan_ivf(100_000, 128, policy)[1:] == (16, "IVF1024,PQ16x8")
    for n in (2_000, 60_000, 300_000):
        nlist, m, _ = plan_ivf(n, 96, IndexPolicy(pq_min_dim=0))  # PQ asked for at any dimension
        assert nlist & (nlist - 1) == 0 and n / nlist >= 39  # power of two, enough points per centroid
        assert 2 * math.sqrt(n) < nlist <= 4 * math.sqrt(n) or n / (2 * nlist) < 39
        assert 96 % m == 0


def test_ivfpq_recall_after_rerank(ivf_store):
    store, ids, _, _ = ivf_store
    info = store.index_info()["image"]
    assert info["type"] == "ivfpq" and info["ntotal"] == N_IVF
    assert info["factory"] == f"IVF{info['nlist']},PQ{info['m']}x8"
    # trained when the first batch crossed flat_max; doubling since is short of the 4x retrain point
    assert info["trained_on"] == 30_000 and 1 <= info["nprobe"] <= info["nlist"]
    queries = clustered(200, seed=99)  # unseen queries from the same distribution
    got = store.search("image", queries, 10)
    truth = brute_force(store, ids, queries, 10)
    assert recall(got, truth) >= 0.95
    for g in got:  # exact cosine after re-ranking, best first
        scores = [s for _, s in g]
        assert len(g) == 10 and scores == sorted(scores, reverse=True)
    hit = {i: s for i, s in truth[0]}
    for i, s in got[0]:
        if i in hit:
            assert s == pytest.approx(hit[i], abs=1e-5)


def test_ivfpq_self_query_scores_one(ivf_store):
    store, ids, _, _ = ivf_store
    picked = ids[[0, 1234, 59_999]]
    res = store.search("image", store.get_vectors(picked), 3)
    for item_id, r in zip(picked, res):
        assert r[0][0] == item_id and r[0][1] == pytest.approx(1.0, abs=1e-5)


def test_ivfpq_params_persisted_and_reloaded(ivf_store):
    store, _, directory, policy = ivf_store
    sidecar = json.loads((directory / "index" / "image.json").read_text())
    info = store.index_info()["image"]
    for key in ("factory", "nlist", "m", "nprobe", "trained_on", "ntotal"):
        assert sidecar[key] == info[key]
    assert sidecar["type"] == "ivfpq" and sidecar["db_gen"] == int(store.get_meta("gen:image"))
    queries = clustered(5, seed=5)
    with Storage(directory, read_only=True, policy=policy) as again:
        reloaded = again.index_info()["image"]
        assert reloaded["flushed"] and reloaded["factory"] == info["factory"] and reloaded["nprobe"] == info["nprobe"]
        assert again.search("image", queries, 5) == store.search("image", queries, 5)


def test_ivfpq_ids_restriction_both_paths(ivf_store):
    store, ids, _, policy = ivf_store
    queries = clustered(20, seed=11)
    rng = np.random.default_rng(3)
    few = np.sort(rng.choice(ids, 300, replace=False))  # <= exact_ids_max: exact over those vectors
    assert_same(store.search("image", queries, 10, ids=few), brute_force(store, few, queries, 10))
    many = np.sort(rng.choice(ids, 8_000, replace=False))  # IDSelectorBatch inside IVF, more lists probed
    assert len(many) > policy.exact_ids_max
    got = store.search("image", queries, 10, ids=many)
    allowed = set(many.tolist())
    assert all(len(g) == 10 and {i for i, _ in g} <= allowed for g in got)
    assert recall(got, brute_force(store, many, queries, 10)) >= 0.95


def test_flat_matches_brute_force_and_restricts(tmp_path):
    with Storage(tmp_path) as store:
        x = clustered(3_000, seed=2)
        ids = np.array(store.add_vectors(x, modality="audio", paths=[f"/a/{i}.wav" for i in range(3_000)]))
        info = store.index_info()["audio"]
        assert info["type"] == "flat" and info["factory"] == "IDMap2,Flat" and info["nprobe"] is None
        queries = clustered(30, seed=12)
        got = store.search("audio", queries, 10)
        truth = brute_force(store, ids, queries, 10)
        assert_same(got, truth)
        subset = ids[::7]
        assert_same(store.search("audio", queries, 10, ids=subset), brute_force(store, subset, queries, 10))
        self_hit = store.search("audio", x[:1], 1)[0][0]
        assert self_hit[0] == ids[0] and self_hit[1] == pytest.approx(1.0, abs=1e-5)


def test_switches_type_retrains_on_growth_and_removes(tmp_path):
    policy = IndexPolicy(flat_max=1_000, retrain_growth=2.0, tune_queries=50, pq_min_dim=0)
    with Storage(tmp_path, policy=policy) as store:
        x = clustered(5_000, seed=4, dim=32, centers=20)
        paths = [f"/v/{i}.mp4" for i in range(5_000)]
        ids = store.add_vectors(x[:900], modality="video", paths=paths[:900])
        assert store.index_info()["video"]["type"] == "flat"
        ids += store.add_vectors(x[900:2_000], modality="video", paths=paths[900:2_000])
        info = store.index_info()["video"]
        assert info["type"] == "ivfpq" and info["trained_on"] == 2_000
        ids += store.add_vectors(x[2_000:3_500], modality="video", paths=paths[2_000:3_500])
        assert store.index_info()["video"]["trained_on"] == 2_000  # grew 1.75x: incremental adds
        ids += store.add_vectors(x[3_500:], modality="video", paths=paths[3_500:])
        assert store.index_info()["video"]["trained_on"] == 5_000  # grew past 2x: retrained
        gone = ids[:100]
        store.remove(gone)
        res = store.search("video", x[:100], 5)
        assert not {i for r in res for i, _ in r} & set(gone)
        store.remove(ids[100:4_700])  # shrinks below flat_max/2: back to exact search
        assert store.index_info()["video"] == {**store.index_info()["video"], "type": "flat", "ntotal": 300}
        assert store.check() == []


def gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    """Isotropic unit vectors: no clusters, the hardest case for coarse codes (bring-your-own, tiny models)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_low_dimensional_vectors_get_ivf_flat_exact_scores_and_no_cache(tmp_path):
    policy = IndexPolicy(flat_max=2_000)
    x = gaussian(20_000, 24, seed=1)  # 24-d like the tiny test model: PQ3 codes tuned to recall 0.89
    with Storage(tmp_path, policy=policy) as store:
        ids = np.array(store.add_vectors(x, modality="image", paths=[f"/v/{i}" for i in range(len(x))]))
        info = store.index_info()["image"]
        assert info["type"] == "ivfflat" and info["factory"] == f"IVF{info['nlist']},Flat"
        assert info["m"] is None and info["rerank"] is None and info["rerank_cache_bytes"] is None
        assert info["tuned_recall"] >= 0.97
        queries = gaussian(100, 24, seed=2)
        got = store.search("image", queries, 10)
        truth = brute_force(store, ids, queries, 10)
        assert recall(got, truth) >= 0.95
        for g, t in zip(got, truth):  # the index's own scores are exact cosines
            exact = dict(t)
            assert all(s == pytest.approx(exact[i], abs=1e-5) for i, s in g if i in exact)
        many = np.sort(np.random.default_rng(3).choice(ids, 5_000, replace=False))  # IDSelector inside IVF
        restricted = store.search("image", queries, 10, ids=many)
        assert all(len(r) == 10 and {i for i, _ in r} <= set(many.tolist()) for r in restricted)
        assert store.check() == []  # no "no re-rank cache" problem: IVF-Flat needs none
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["image.faiss", "image.json"]
    sidecar = json.loads((tmp_path / "index" / "image.json").read_text())
    assert sidecar["type"] == "ivfflat" and "cache" not in sidecar
    with Storage(tmp_path, read_only=True, policy=policy) as again:
        assert again.index_info()["image"]["flushed"] and again.search("image", queries, 10) == got
    assert plan_ivf(1_000_000, 1024, IndexPolicy())[2] == "IVF2048,PQ128x8"  # 1024-d keeps IVF-PQ


def test_the_tuner_warns_and_records_a_recall_short_of_its_target(tmp_path, caplog):
    policy = IndexPolicy(flat_max=1_000, tune_queries=50, pq_min_dim=0, pq_bytes=1)  # 1-byte codes: hopeless
    with Storage(tmp_path, policy=policy) as store, caplog.at_level("WARNING", logger="xsearch.storage"):
        store.add_vectors(gaussian(4_000, 32, seed=4), modality="image", paths=[f"/v/{i}" for i in range(4_000)])
        info = store.index_info()["image"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "short of the 0.97 target" in warning and f"{info['tuned_recall']:.3f}" in warning
    assert info["tuned_recall"] < 0.97
    sidecar = json.loads((tmp_path / "index" / "image.json").read_text())
    assert (sidecar["tuned_recall"], sidecar["nprobe"], sidecar["rerank"]) == (
        info["tuned_recall"], info["nprobe"], info["rerank"])


def test_an_ivf_pq_index_of_low_dimensional_vectors_becomes_ivf_flat(tmp_path):
    x = gaussian(3_000, 24, seed=5)
    with Storage(tmp_path, policy=IndexPolicy(flat_max=1_000, tune_queries=50, pq_min_dim=0)) as old:
        old.add_vectors(x, modality="image", paths=[f"/v/{i}" for i in range(len(x))])  # as saved before
        assert old.index_info()["image"]["type"] == "ivfpq"
    policy = IndexPolicy(flat_max=1_000, tune_queries=50)
    with Storage(tmp_path, read_only=True, policy=policy) as s:
        assert any("built as IVF" in p and "PQ3x8" in p and "IVF-Flat" in p and "doctor --repair" in p
                   for p in s.check())
    with Storage(tmp_path, policy=policy) as s:  # a writer rebuilds it on first use and saves it
        assert s.index_info()["image"]["type"] == "ivfflat"
    with Storage(tmp_path, read_only=True, policy=policy) as s:
        assert s.check() == [] and s.index_info()["image"]["flushed"]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["image.faiss", "image.json"]
