"""The root of every contract mixin: the fixtures a provider overrides or inherits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from ccvault.store import ProfileStore

__all__ = ["ContractBase", "check_contract_class"]


class ContractBase:
    """Fixtures and class attributes shared by the contract mixins.

    A provider's test class names its provider (:attr:`provider_name`, the entry-point
    name: the suite reads the optional capabilities from that provider's
    ``ProviderSpec.capabilities``), overrides :meth:`store` (an async fixture yielding a
    fresh, set-up store and closing it afterwards) and :meth:`other_store` (a second,
    independent store instance over the SAME backing data as ``store``), and may set
    :attr:`known_gaps`.

    The concurrency tests split their racing calls between ``store`` and ``other_store``,
    so races between two processes over one database are exercised, not only those one
    instance's internal locks serialise. There is no default: a class without
    ``other_store`` fails those tests with a message saying so. A store whose data can only
    ever live in one process (SQLite ``:memory:``) says so with :attr:`single_instance`;
    its verdict is then ``CONFORMANT (single instance)``, never plain ``CONFORMANT``.

    Every test works in tenants it creates with fresh random ids, so a store that already
    holds other tenants' data (a persistent database, a shared server) runs the suite
    correctly; only "empty" in the sense "no data of these tenants" is relied upon.
    """

    #: The provider under test: its entry-point name in the ``ccvault.providers`` group
    #: (``"postgres"``, ``"acme"``). Its ``ProviderSpec.capabilities`` decide which optional
    #: tests run; a wrapper stack names the provider at its bottom. ``None``: no optional
    #: capability (the summary says so).
    provider_name: ClassVar[str | None] = None
    #: ``{"test_name": "reason"}``: known gaps, run as strict xfail (see README).
    known_gaps: ClassVar[Mapping[str, str]] = {}
    #: Why this store cannot have a second instance over the same data (``None``: it can,
    #: and ``other_store`` must provide one). When set, ``other_store`` is ``store`` itself
    #: and the verdict is at best ``CONFORMANT (single instance)``.
    single_instance: ClassVar[str | None] = None
    #: ``False`` leaves out the core-rule tests (argument checks and requirement evaluation
    #: that no provider hook takes part in; see ``ccvault_contract_tests.scope``). For a
    #: repository with many classes over one core: run them in at least one of them.
    core_rule_tests: ClassVar[bool] = True

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
        """Override me: a second, independent store instance over the same data as ``store``.

        Contract of an override: an async fixture that depends on ``store`` (so the backing
        data exists and is migrated first), yields ANOTHER set-up instance that reads and
        writes the SAME data — another connection pool on the same DSN and schema, another
        handle on the same file, another cache client on the same Redis key prefix over the
        same database — and closes it afterwards. A write through either instance must be
        visible through the other.
        """
        if self.single_instance is not None:
            return store
        pytest.fail(
            f"{type(self).__name__} must override the `other_store` fixture: the "
            "cross-instance tests need a second, independent store instance over the SAME "
            "data as `store` (another pool on the same database, another handle on the same "
            "file), or the class must declare `single_instance = 'why'` for a store whose "
            "data cannot be opened twice",
            pytrace=False,
        )

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


def check_contract_class(cls: type[ContractBase]) -> None:
    """Checks of a provider's contract class at import: typos fail loudly, never silently.

    * capabilities are declared once, on the provider's ``ProviderSpec``, not on the class;
    * a known gap must name a test of the suite (``"test_x"`` or one case ``"test_x[id]"``);
    * ``single_instance`` is a non-empty reason.
    """
    if "capabilities" in vars(cls):
        raise TypeError(
            f"{cls.__name__}.capabilities: capabilities are declared once, on the provider "
            "(ProviderSpec(capabilities=...) returned by its ccvault_provider hook); set "
            f"{cls.__name__}.provider_name to the provider's entry-point name instead"
        )
    if cls.provider_name is not None and not (
        isinstance(cls.provider_name, str) and cls.provider_name.strip()
    ):
        raise TypeError(f"{cls.__name__}.provider_name must be a provider's entry-point name")
    if cls.single_instance is not None and not (
        isinstance(cls.single_instance, str) and cls.single_instance.strip()
    ):
        raise TypeError(f"{cls.__name__}.single_instance must be a reason (a non-empty string)")
    tests = {name for name in dir(cls) if name.startswith("test_")}
    strangers = sorted(gap for gap in cls.known_gaps if gap.split("[", 1)[0] not in tests)
    if strangers:
        raise TypeError(
            f"{cls.__name__}.known_gaps names no test of the contract suite: {strangers}"
        )
