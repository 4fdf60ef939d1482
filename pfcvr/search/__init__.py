"""`pfcvr search`: rank a gallery of vehicle images against a witness description.

    pfcvr search --model models/full/seed0/best --gallery data/prepared/images "white SUV ..."
    python -m pfcvr.search --model ... --gallery data/prepared/manifest.json --split test "..."

The gallery is a folder (searched recursively for images) or a manifest JSON (the project's
canonical ``data/prepared/manifest.json`` format; image paths relative to the images root of the
``meta.json`` beside it; an image listed twice is ranked once). Gallery embeddings are cached in
``<cache-dir>/gallery-<key>.pt``; the key covers every input of the embeddings (model, gallery
files, encoding code, library versions, device type: :func:`pfcvr.search.index.cache_key`), so a
second query against an unchanged gallery only encodes the text. Images that cannot be read are
skipped and counted (a warning names the first ones). A query longer than the model's context
length is cut; a warning says how many tokens were used.

Modules, one job each: ``models`` (check, load, fingerprint a model folder), ``gallery`` (find the
candidate images), ``index`` (encode and cache them), ``query`` (check and rank a query, the whole
run). The command line lives in :mod:`pfcvr.cli`, which alone parses arguments.
"""
from __future__ import annotations

from pfcvr.search.errors import SearchError
from pfcvr.search.gallery import IMAGE_SUFFIXES, Gallery, gallery_fingerprint, load_gallery
from pfcvr.search.index import CACHE_VERSION, GalleryIndex, cache_key, index_gallery
from pfcvr.search.models import (check_model_folder, load_checked_model, load_search_model,
                                 model_fingerprint)
from pfcvr.search.query import (Hit, QueryTokens, SearchResult, check_query, query_tokens, rank,
                               run_search, search, write_grid)

__all__ = ["CACHE_VERSION", "IMAGE_SUFFIXES", "Gallery", "GalleryIndex", "Hit", "QueryTokens",
           "SearchError", "SearchResult", "cache_key", "check_model_folder", "check_query",
           "gallery_fingerprint", "index_gallery", "load_checked_model", "load_gallery",
           "load_search_model", "model_fingerprint", "query_tokens", "rank", "run_search",
           "search", "write_grid"]
