"""The `pfcvr` console command (declared in pyproject.toml as ``pfcvr = "pfcvr.cli:main"``).

    pfcvr search --model models/full/seed0/best --gallery data/prepared/images "white SUV ..."

Bad input (missing or incomplete model folder, empty query, gallery without images, ...) ends
with one line ``pfcvr <command>: error: <what is wrong>`` on stderr and exit code 2; set
``PFCVR_DEBUG=1`` (or pass ``--debug``) to see the traceback of an unexpected failure.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from pfcvr import search

    ap = argparse.ArgumentParser(prog="pfcvr", description="PFCVR text-to-image vehicle retrieval")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    sp = sub.add_parser("search", help="rank gallery images against a witness description",
                        description=search.__doc__.split("\n\n")[0])
    search.add_arguments(sp)
    sp.set_defaults(handler=search.run_cli)
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
        from pfcvr.search import SearchError

        kind = "" if isinstance(err, (SearchError, ValueError, OSError)) else \
            f"{type(err).__name__}: "
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {kind}{message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
