"""The `pfcvr` console command (declared in pyproject.toml as ``pfcvr = "pfcvr.cli:main"``).

    pfcvr search --model models/full/seed0/best --gallery data/prepared/images "white SUV ..."

The only module of the package that parses command-line arguments: each command is a set of
options plus a handler that calls one library function and prints its result.

Bad input (missing or incomplete model folder, empty query, gallery without images, ...) ends
with one line ``pfcvr <command>: error: <what is wrong>`` on stderr and exit code 2; set
``PFCVR_DEBUG=1`` (or pass ``--debug``) to see the traceback of an unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from pfcvr.paths import SEARCH_CACHE

EXIT_BAD_INPUT = 2
SEARCH_HELP = "rank gallery images against a witness description"


# ----------------------------------------------------------------------------------------------
# `pfcvr search`
# ----------------------------------------------------------------------------------------------

def add_search_arguments(ap: argparse.ArgumentParser) -> None:
    """The `search` options (also what `python -m pfcvr.search` takes)."""
    ap.add_argument("query", nargs="+", help="the witness description (quote it, or give words)")
    ap.add_argument("--model", required=True,
                    help="a trained model folder, e.g. models/full/seed0/best")
    ap.add_argument("--gallery", required=True,
                    help="a folder of images (recursive) or a manifest .json")
    ap.add_argument("--split", choices=("train", "val", "test"), default=None,
                    help="with a manifest gallery: only this split's images")
    ap.add_argument("--top-k", type=int, default=5, help="how many images to list (default 5)")
    ap.add_argument("--grid", default=None, help="write a PNG of the query and its top-k images")
    ap.add_argument("--cache-dir", default=str(SEARCH_CACHE),
                    help=f"gallery embedding cache folder (default {SEARCH_CACHE})")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ap.add_argument("--batch-size", type=int, default=64, help="images encoded at once")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    ap.add_argument("--progress", action="store_true", help="progress bar while encoding")
    ap.add_argument("--json", action="store_true",
                    help="print the result as one JSON object (hits, token counts, warnings)")


def format_search_result(result, gallery: str) -> str:
    """The text `pfcvr search` prints for a :class:`pfcvr.search.SearchResult`."""
    idx = result.index
    lines = [f"query:   \"{result.query}\"", f"model:   {result.model}",
             f"gallery: {gallery} ({len(idx.paths)} images"
             + (f", {len(idx.skipped)} unreadable skipped" if idx.skipped else "")
             + ("; embeddings from cache" if idx.cache_hit else
                f"; {idx.encoded} images encoded" + (", cached" if idx.cache_file else "")) + ")",
             f"{'rank':>4}  {'score':>7}  image"]
    tok = result.tokens
    if tok is not None and tok.truncated:   # also a warning on stderr; here beside the result
        lines.insert(1, f"tokens:  {tok.used} of {tok.tokens} used (the model's context length "
                        f"is {tok.context_length}; the rest of the query was cut)")
    for h in result.hits:
        note = f"  (id {h.id})" if h.id is not None and h.id >= 0 else ""
        lines.append(f"{h.rank:>4}  {h.score:7.4f}  {h.path}{note}")
    if result.grid:
        lines.append(f"grid:    {result.grid}")
    return "\n".join(lines)


def search_result_json(result, gallery: str, warnings_text: list[str]) -> dict:
    """The object `pfcvr search --json` prints for a :class:`pfcvr.search.SearchResult`."""
    idx = result.index
    return {"query": result.query, "model": str(result.model), "gallery": gallery,
            "tokens": result.tokens.as_dict() if result.tokens is not None else None,
            "images": len(idx.paths), "unreadable_skipped": len(idx.skipped),
            "cache_hit": idx.cache_hit, "encoded": idx.encoded,
            "hits": [{"rank": h.rank, "score": round(h.score, 6), "path": str(h.path),
                      "id": h.id if h.id is not None and h.id >= 0 else None}
                     for h in result.hits],
            "grid": str(result.grid) if result.grid else None, "warnings": warnings_text}


def run_search_command(args: argparse.Namespace) -> int:
    """Execute parsed `search` arguments; prints the result; returns the exit code."""
    from pfcvr.search import run_search     # torch and the model: only once a command runs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(args.model, args.gallery, " ".join(args.query), top_k=args.top_k,
                            grid=args.grid, cache_dir=None if args.no_cache else args.cache_dir,
                            split=args.split, batch_size=args.batch_size, device=args.device,
                            progress=args.progress)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for text in said:  # library warnings (cut query, skipped images, rebuilt cache), one line each
        print(f"warning: {text}", file=sys.stderr)
    if args.json:
        print(json.dumps(search_result_json(result, args.gallery, said), indent=2))
    else:
        print(format_search_result(result, args.gallery))
    return 0


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pfcvr", description="PFCVR text-to-image vehicle retrieval")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    sp = sub.add_parser("search", help=SEARCH_HELP,
                        description=f"`pfcvr search`: {SEARCH_HELP} (a gallery folder or manifest).")
    add_search_arguments(sp)
    sp.set_defaults(handler=run_search_command)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and, as a script, exits with) the exit code."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    debug = args.debug or os.environ.get("PFCVR_DEBUG") == "1"
    prog = f"pfcvr {args.command}"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line instead of a stack trace
        if debug:
            raise
        # bad input (SearchError is a ValueError) reads as a plain message; anything else
        # names its type so that a bug does not pass for a user mistake
        kind = "" if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: "
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {kind}{message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
