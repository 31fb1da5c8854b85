"""Query specs, composition of weighted inputs, search with exact re-ranking, filters, results."""
from xsearch.query.search import Hit, compose, run_query, search_vector
from xsearch.query.spec import QueryInput, QuerySpec, as_inputs, parse_targets, parse_weighted

__all__ = ["Hit", "QueryInput", "QuerySpec", "as_inputs", "compose", "parse_targets", "parse_weighted", "run_query", "search_vector"]
