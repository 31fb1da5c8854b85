"""The LangChain and LlamaIndex retrievers over a Store indexed with the tiny model: real packages, no network.
Their results are the Store's own search results, as Documents and Nodes."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import xsearch
from tests.corpus import write_audio, write_image


@pytest.fixture(scope="module")
def ix(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("retrievers")
    media = root / "media"
    for sub in ("photos", "sounds", "notes"):
        (media / sub).mkdir(parents=True)
    for i in range(3):
        write_image(media / "photos" / f"p{i}.png", seed=i)
        write_audio(media / "sounds" / f"s{i}.wav", 220.0 * (i + 1))
    for i, text in enumerate(["a dog barking at the mailman", "rain on a tin roof"]):
        (media / "notes" / f"n{i}.txt").write_text(text + "\n", encoding="utf-8")
    s = xsearch.open(root / "store", model=tiny_model)
    report = s.index([media])
    assert report.embedded == 8
    yield SimpleNamespace(store=s, media=media)
    s.close()


def _expected(store, **kw):
    return [(h.path, h.modality, pytest.approx(h.score, abs=1e-6)) for h in store.search(**kw)]


def test_langchain_retriever_returns_the_stores_hits_as_documents(ix):
    from langchain_core.documents import Document

    from xsearch.integrations.langchain import XSearchRetriever

    docs = XSearchRetriever(store=ix.store, k=3).invoke("a dog")
    assert [(d.metadata["path"], d.metadata["modality"], d.metadata["score"]) for d in docs] == \
        _expected(ix.store, text="a dog", k=3)
    assert all(isinstance(d, Document) for d in docs)


def test_langchain_text_hits_carry_their_text_and_others_their_path(ix):
    from xsearch.integrations.langchain import XSearchRetriever

    docs = XSearchRetriever(store=ix.store, k=10, target="text,image").invoke("weather")
    for d in docs:
        if d.metadata["modality"] == "text":
            assert d.page_content.strip() in ("a dog barking at the mailman", "rain on a tin roof")
        else:
            assert d.page_content == d.metadata["path"]
    assert {d.metadata["modality"] for d in docs} == {"text", "image"}


def test_langchain_file_query_finds_the_file_itself_first(ix):
    from xsearch.integrations.langchain import XSearchRetriever

    wav = str(ix.media / "sounds" / "s1.wav")
    docs = XSearchRetriever(store=ix.store, query_as="audio", target="audio").invoke(wav)
    assert docs[0].metadata["path"] == wav and docs[0].metadata["score"] == pytest.approx(1.0, abs=1e-4)
    auto = XSearchRetriever(store=ix.store, query_as="auto", target="audio").invoke(wav)
    assert [d.metadata["path"] for d in auto] == [d.metadata["path"] for d in docs]


def test_langchain_per_call_k_target_and_filters(ix):
    from xsearch.integrations.langchain import XSearchRetriever

    r = XSearchRetriever(store=ix.store, k=10, filters={"folder": str(ix.media / "photos")})
    docs = r.invoke("a dog")
    assert len(docs) == 3 and all(d.metadata["path"].startswith(str(ix.media / "photos")) for d in docs)
    one = r.invoke("a dog", k=1, target="audio", folder=str(ix.media / "sounds"))
    assert [d.metadata["modality"] for d in one] == ["audio"]


def test_llamaindex_retriever_returns_the_stores_hits_as_nodes(ix):
    from llama_index.core.schema import ImageNode, NodeWithScore

    from xsearch.integrations.llamaindex import XSearchRetriever

    nodes = XSearchRetriever(ix.store, k=4).retrieve("rain")
    assert all(isinstance(n, NodeWithScore) for n in nodes)
    assert [(n.node.metadata["path"], n.node.metadata["modality"], n.score) for n in nodes] == \
        _expected(ix.store, text="rain", k=4)
    for n in nodes:
        assert isinstance(n.node, ImageNode) == (n.node.metadata["modality"] == "image")
        if n.node.metadata["modality"] == "image":
            assert n.node.image_path == n.node.metadata["path"]


def test_llamaindex_image_query_bundle_and_filters(ix):
    from llama_index.core.schema import QueryBundle

    from xsearch.integrations.llamaindex import XSearchRetriever

    png = str(ix.media / "photos" / "p2.png")
    nodes = XSearchRetriever(ix.store, k=2, target="image").retrieve(QueryBundle(query_str="", image_path=png))
    assert nodes[0].node.metadata["path"] == png
    only_sounds = XSearchRetriever(ix.store, k=10, glob="*.wav").retrieve("a dog")
    assert {n.node.metadata["modality"] for n in only_sounds} == {"audio"} and len(only_sounds) == 3


def test_an_unknown_query_kind_is_refused_in_one_line(ix):
    from xsearch.errors import UsageError
    from xsearch.integrations.llamaindex import XSearchRetriever

    with pytest.raises(UsageError, match="query_as must be one of"):
        XSearchRetriever(ix.store, query_as="smell")


def test_auto_reads_a_text_file_as_its_content_not_its_name(ix):
    from xsearch.integrations.langchain import XSearchRetriever

    note = ix.media / "notes" / "n1.txt"
    docs = XSearchRetriever(store=ix.store, query_as="auto", k=3).invoke(str(note))
    assert [d.metadata["path"] for d in docs] == [h.path for h in ix.store.search(text=note.read_text(), k=3)]
    assert docs[0].metadata["path"] == str(note)


def test_moments_of_one_file_are_distinct_results(tmp_path, tiny_model):
    from xsearch.integrations.langchain import XSearchRetriever
    from xsearch.integrations.llamaindex import XSearchRetriever as NodeRetriever

    media = tmp_path / "media"
    media.mkdir()
    # A B A B, 2 s each: the two A windows are one file's two moments (not adjacent, so never merged).
    import numpy as np
    import soundfile as sf

    sr = 16000
    tone = 0.3 * np.sin(2 * np.pi * 300.0 * np.arange(2 * sr) / sr)
    noise = 0.3 * np.random.default_rng(0).standard_normal(2 * sr)
    sf.write(media / "long.wav", np.concatenate([tone, noise, tone, noise]).astype(np.float32), sr)
    with xsearch.open(tmp_path / "store", model=tiny_model) as s:
        s.index([media], moments=True)
        query = str(media / "long.wav") + "#t=0,2"
        docs = XSearchRetriever(store=s, query_as="audio", k=4, filters={"moments": True}).invoke(query)
        nodes = NodeRetriever(store=s, query_as="audio", k=4, moments=True).retrieve(query)
    assert len(docs) >= 2 and len({d.id for d in docs}) == len(docs)
    assert all("start" in d.metadata for d in docs)
    assert len({n.node.id_ for n in nodes}) == len(nodes) == len(docs)
