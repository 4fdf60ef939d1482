"""The one error type of `pfcvr search`."""
from __future__ import annotations


class SearchError(ValueError):
    """Bad input to the search (model folder, gallery, query); the CLI prints it on one line."""
