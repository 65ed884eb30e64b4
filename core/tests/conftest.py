"""Fixtures shared by core's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel

from ccvault import registry
from ccvault.hookspecs import ProviderSpec
from ccvault.store import ForwardingProfileStore, ProfileStore, StoreRules
from ccvault_inmemory import InMemoryProfileStore


class _SharedStore(ForwardingProfileStore):
    """A store over the shared database that neither sets it up nor closes it: the database
    outlives each command, as a server's data outlives each process."""

    async def aclose(self) -> None:
        return None

    async def setup(self) -> None:
        return None


class _NoOptions(BaseModel):
    pass


class SharedProvider:
    """A provider whose stores all share one in-memory database (``db``), so that successive
    CLI commands, each opening its own store as separate processes would, see each other's
    data."""

    def __init__(self, name: str, db: InMemoryProfileStore) -> None:
        self.name = name
        self.db = db

    def spec(self) -> ProviderSpec:
        return ProviderSpec(
            name=self.name,
            distribution="ccvault-tests",
            settings_model=_NoOptions,
            create_store=self._create,
        )

    def _create(self, options: BaseModel, rules: StoreRules) -> ProfileStore:
        return _SharedStore(self.db)


@pytest.fixture
def shared_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., SharedProvider]:
    """``shared_provider(name, db=None)`` registers a :class:`SharedProvider` under ``name``
    for this test (``[profile] store_provider = name`` selects it) and returns it."""

    def register(name: str, db: InMemoryProfileStore | None = None) -> SharedProvider:
        provider = SharedProvider(name, db if db is not None else InMemoryProfileStore())
        monkeypatch.setitem(registry._loaded, name, provider.spec())
        return provider

    return register
