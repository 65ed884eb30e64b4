"""The ``ccvault`` console script (and ``python -m ccvault``): the command line of
:mod:`ccvault.cli`, or, without the ``cli`` extra, one line saying how to install it."""

from __future__ import annotations

import sys

from ccvault import errors

__all__ = ["main"]

#: ``ccvault.cli.EXIT_CONFIGURATION``, which cannot be imported without the extra.
EXIT_CONFIGURATION = 6


def main() -> None:
    """Run the ``ccvault`` command; exit 6 with one line on stderr when click or rich is
    missing."""
    try:
        from ccvault.cli import main as cli_main
    except errors.MissingExtraError as exc:
        print(f"ccvault: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    cli_main()
