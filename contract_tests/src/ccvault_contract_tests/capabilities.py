"""Optional capabilities: behaviour a provider may or may not offer.

Everything in DESIGN.md §4 is REQUIRED and cannot be opted out of. A few behaviours go beyond
what every storage engine can do; tests of those carry ``@requires(NAME)`` and run only for a
provider that declares ``NAME`` in its ``capabilities`` (the test class attribute, or in
zero-code mode the provider's ``ProviderSpec.capabilities``). Undeclared: the test is skipped
and the conformance summary says so.

Like SQLAlchemy's ``requirements.py``: tests state what they need, providers state what they
support.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import pytest

__all__ = [
    "HIGH_CONCURRENCY",
    "LARGE_VALUES",
    "MARKER",
    "NUL_CHARACTERS",
    "OPTIONAL_CAPABILITIES",
    "required_capabilities",
    "requires",
]

LARGE_VALUES: Final = "large_values"
NUL_CHARACTERS: Final = "nul_characters"
HIGH_CONCURRENCY: Final = "high_concurrency"

#: Every optional capability, with what declaring it promises.
OPTIONAL_CAPABILITIES: Final[dict[str, str]] = {
    LARGE_VALUES: "a field value of 1 MiB (string or 10,000-item list) round-trips losslessly",
    NUL_CHARACTERS: (
        "strings holding U+0000 round-trip losslessly (without it such a write must be "
        "refused with ValidationError, which a required test checks)"
    ),
    HIGH_CONCURRENCY: (
        "200 concurrent writers over 10 profiles keep one ACTIVE version per name and "
        "unbroken supersede chains (the required tests use 50 writers)"
    ),
}

#: The pytest marker name carried by capability-gated tests.
MARKER: Final = "ccvault_requires"

_F = TypeVar("_F", bound=Callable[..., Any])


def requires(*names: str) -> Callable[[_F], _F]:
    """Mark a suite test as needing optional capabilities ``names``."""
    unknown = sorted(set(names) - set(OPTIONAL_CAPABILITIES))
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; known: {sorted(OPTIONAL_CAPABILITIES)}")

    def mark(func: _F) -> _F:
        marked: _F = getattr(pytest.mark, MARKER)(*names)(func)
        return marked

    return mark


def required_capabilities(item: pytest.Item) -> frozenset[str]:
    """The capabilities a collected test needs (empty: required behaviour)."""
    needed: set[str] = set()
    for marker in item.iter_markers(MARKER):
        needed.update(marker.args)
    return frozenset(needed)
