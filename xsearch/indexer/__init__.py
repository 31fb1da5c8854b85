"""Walking a corpus, deciding modalities, change detection and the decode -> embed -> write pipeline."""
from xsearch.indexer.detect import detect_modality
from xsearch.indexer.pipeline import Indexer, IndexReport

__all__ = ["Indexer", "IndexReport", "detect_modality"]
