"""Retrievers over a :class:`xsearch.api.Store` for LangChain (``xsearch[langchain]``) and LlamaIndex
(``xsearch[llamaindex]``): ``xsearch.integrations.langchain`` and ``xsearch.integrations.llamaindex``."""
