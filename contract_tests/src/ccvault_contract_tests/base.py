"""The root of every contract mixin: the fixtures a provider overrides or inherits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from ccvault.store import ProfileStore

__all__ = ["ContractBase"]


class ContractBase:
    """Fixtures and class attributes shared by the contract mixins.

    A provider's test class overrides :meth:`store` (an async fixture yielding a fresh,
    set-up store and closing it afterwards) and may set :attr:`capabilities` and
    :attr:`known_gaps`.

    Where a second process could open the same data (a database, a file, a shared cache),
    it should also override :meth:`other_store`: a second, independent store instance over
    the SAME backing data as ``store`` (its own connection pool / file handle / cache
    client on the same Redis key prefix). The concurrency tests split their racing calls
    between the two, so cross-instance races are exercised, not only those that one
    instance's internal locks serialise. By default ``other_store`` is ``store`` itself.

    Every test works in tenants it creates with fresh random ids, so a store that already
    holds other tenants' data (a persistent database, a shared server) runs the suite
    correctly; only "empty" in the sense "no data of these tenants" is relied upon.
    """

    #: Optional capabilities the provider declares (names from ``capabilities.py``).
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: ``{"test_name": "reason"}``: known gaps, run as strict xfail (see README).
    known_gaps: ClassVar[Mapping[str, str]] = {}

    pytestmark: ClassVar[list[Any]] = [pytest.mark.asyncio]

    @pytest.fixture
    def store(self) -> ProfileStore:
        """Override me: yield a fresh, set-up store and close it afterwards."""
        pytest.fail(
            f"{type(self).__name__} must override the `store` fixture: an async fixture that "
            "yields a fresh, set-up ProfileStore and closes it afterwards",
            pytrace=False,
        )

    @pytest.fixture
    def other_store(self, store: ProfileStore) -> ProfileStore:
        """Override me where possible: a second store instance over the same data as ``store``.

        Contract of an override: an async fixture that depends on ``store`` (so the backing
        data exists and is migrated first), yields another set-up instance that reads and
        writes the SAME data — another connection pool on the same DSN and schema, another
        handle on the same file, another cache client on the same Redis key prefix over the
        same database — and closes it afterwards. A write through either instance must be
        visible through the other. Default: ``store`` itself (an in-process-only store).
        """
        return store

    @pytest.fixture
    def tenant(self) -> UUID:
        """A tenant id no other test uses."""
        return uuid4()

    @pytest.fixture
    def other_tenant(self) -> UUID:
        """A second tenant id no other test uses."""
        return uuid4()

    @pytest.fixture
    def agent(self) -> UUID:
        return uuid4()

    @pytest.fixture
    def scenario(self) -> UUID:
        return uuid4()
