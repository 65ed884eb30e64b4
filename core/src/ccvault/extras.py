"""The optional parts of ccvault and the extras that install them.

The base distribution holds what the library core needs (models, settings, the store, the
provider registry); every other part is an extra of its own, so a library-only deployment
installs only what it uses::

    pip install ccvault                      # the library core
    pip install 'ccvault[cache,crypto]'      # + the Redis cache and encryption at rest
    pip install 'ccvault[all]'               # everything

A module of an optional part imports its third-party libraries inside
:func:`requires_extra`; used without them it raises
:class:`~ccvault.errors.MissingExtraError`, whose one-line message names the
``pip install 'ccvault[EXTRA]'`` that fixes it. :mod:`ccvault.metrics` is the exception: the
store records metrics on every operation, so without ``prometheus-client`` every metric is a
no-op (only serving them needs the extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from ccvault import errors

__all__ = ["EXTRAS", "requires_extra"]

#: Each extra of the ``ccvault`` distribution and the top-level modules it provides (the
#: packaging test checks this table against the wheel's metadata).
EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "cache": ("redis",),
    "cli": ("click", "rich"),
    "client": ("httpx",),
    "crypto": ("cryptography",),
    "extraction": ("dateutil", "rapidfuzz", "httpx", "phonenumbers", "email_validator"),
    "metrics": ("prometheus_client",),
    "otel": ("opentelemetry",),
    "server": ("fastapi", "uvicorn", "mcp", "prometheus_client", "httpx"),
    "testing": ("httpx",),
    "validation": ("re2", "phonenumbers", "email_validator"),
}


@contextlib.contextmanager
def requires_extra(extra: str, feature: str) -> Iterator[None]:
    """Run the imports of ``feature`` (a few words naming what needs them); when one of the
    ``extra``'s modules is missing, raise :class:`~ccvault.errors.MissingExtraError` instead.

    Any other missing module (a bug, not a missing extra) propagates unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS[extra]:
            raise
        raise errors.MissingExtraError(extra, feature) from exc
