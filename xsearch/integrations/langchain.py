"""A LangChain retriever over an xsearch store (``pip install "xsearch[langchain]"``).

    from xsearch.integrations.langchain import XSearchRetriever

    retriever = XSearchRetriever(store=xsearch.open(), k=5, target="image")
    docs = retriever.invoke("a dog on a beach")             # Documents, best first
    retriever.invoke("bark.wav", query_as="audio", k=3)     # a file query; per-call k, target, filters
"""
from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from xsearch.integrations._common import hit_id, hit_metadata, hit_text, search_kwargs


class XSearchRetriever(BaseRetriever):
    """Documents for the items of an :class:`xsearch.api.Store` nearest a query.

    ``query_as``: "text" (default), a modality ("image", "audio", "video", "depth", "thermal", "imu":
    the query is a file of it), "like" (an indexed file's stored vector) or "auto" (an existing file as
    its detected modality, anything else as text). ``filters``: ``Store.search`` keywords such as
    ``folder``, ``glob``, ``min_score``. ``invoke(query, k=..., target=..., query_as=..., folder=...)``
    overrides any of them for one call. Each Document's metadata holds path, modality, score (cosine),
    id and rank, start/end for a moment within a file, and the item's media facts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 4
    target: Any = "all"
    query_as: str = "text"
    filters: dict[str, Any] = Field(default_factory=dict)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        k = kwargs.pop("k", self.k)
        target = kwargs.pop("target", self.target)
        query_as = kwargs.pop("query_as", self.query_as)
        hits = self.store.search(**search_kwargs(query, query_as, k, target, {**self.filters, **kwargs}))
        return [Document(page_content=hit_text(h), metadata=hit_metadata(h), id=hit_id(h)) for h in hits]
