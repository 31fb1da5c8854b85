"""Storage: the metadata database (source of truth) and the per-modality FAISS indexes derived from it.

The storage layer embeds nothing and decodes no media: the indexer hands it vectors, the query layer
asks it to search.
"""
from xsearch.storage.faiss_index import IndexPolicy
from xsearch.storage.migrations import SCHEMA_VERSION
from xsearch.storage.records import FAILED, OK, Item, ItemRecord, Segment, SegmentRecord
from xsearch.storage.store import Storage

__all__ = ["FAILED", "OK", "SCHEMA_VERSION", "IndexPolicy", "Item", "ItemRecord", "Segment", "SegmentRecord", "Storage"]
