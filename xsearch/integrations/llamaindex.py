"""A LlamaIndex retriever over an xsearch store (``pip install "xsearch[llamaindex]"``).

    from xsearch.integrations.llamaindex import XSearchRetriever

    retriever = XSearchRetriever(xsearch.open(), k=5, target="image")
    nodes = retriever.retrieve("a dog on a beach")          # NodeWithScore, best first
    XSearchRetriever(store, query_as="audio").retrieve("bark.wav")
"""
from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from xsearch.integrations._common import QUERY_KINDS, hit_id, hit_metadata, hit_text, search_kwargs
from xsearch.errors import UsageError


class XSearchRetriever(BaseRetriever):
    """Nodes for the items of an :class:`xsearch.api.Store` nearest a query.

    ``query_as`` and ``filters`` (``folder``, ``glob``, ``min_score``, ...) as in the LangChain retriever
    (:mod:`xsearch.integrations.langchain`). A ``QueryBundle`` with an ``image_path`` is an image query.
    Image hits come back as ``ImageNode`` (``image_path`` set), others as ``TextNode``; each node's
    metadata holds path, modality, score (cosine), id and rank, start/end for a moment, and media facts.
    """

    def __init__(self, store: Any, k: int = 4, target: Any = "all", query_as: str = "text", **filters: Any) -> None:
        if query_as not in QUERY_KINDS:
            raise UsageError(f"query_as must be one of {', '.join(QUERY_KINDS)}, not {query_as!r}")
        super().__init__()
        self.store, self.k, self.target, self.query_as, self.filters = store, k, target, query_as, filters

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if query_bundle.image_path:
            args = search_kwargs(query_bundle.image_path, "image", self.k, self.target, self.filters)
        else:
            args = search_kwargs(query_bundle.query_str, self.query_as, self.k, self.target, self.filters)
        out = []
        for h in self.store.search(**args):
            meta = hit_metadata(h)
            if h.modality == "image":
                node = ImageNode(id_=f"xsearch:{hit_id(h)}", text=hit_text(h), image_path=h.path, metadata=meta)
            else:
                node = TextNode(id_=f"xsearch:{hit_id(h)}", text=hit_text(h), metadata=meta)
            out.append(NodeWithScore(node=node, score=float(h.score)))
        return out
