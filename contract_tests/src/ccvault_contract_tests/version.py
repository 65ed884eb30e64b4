"""The contract's version, tied to the core it describes.

``CONTRACT_VERSION`` is the ``major.minor`` of the ``ccvault`` release whose store contract
(DESIGN.md §4, ``ccvault.store``) this suite checks. A provider that passes suite
``CONTRACT_VERSION`` X conforms to every ccvault X.*; the suite's own distribution carries the
same major.minor and pins ``ccvault`` to it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

__all__ = ["CONTRACT_VERSION", "core_version"]

CONTRACT_VERSION: Final = "0.2"


def core_version() -> str:
    """The installed ``ccvault`` version."""
    try:
        return version("ccvault")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
