"""The shared contract suite against this provider: the release gate.

``pytest tests`` exits non-zero until every contract class is CONFORMANT. The summary at the
end says how many required tests pass ("N of M required ran") and, while hooks still raise
NotImplementedError, which ones the failing tests hit first. Add
``--ccvault-report conformance.json`` for the machine-readable report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault_contract_tests import ProfileStoreContract
from ccvault_myprovider import MyProfileStore
from ccvault_myprovider.settings import MySettings


def _settings() -> MySettings:
    # one fresh database (schema, key prefix, file...) per test is simplest; the suite only
    # ever reads the tenants it creates, so a shared one works too
    return MySettings()


class TestMyProviderContract(ProfileStoreContract):
    provider_name = "myprovider"  # capabilities come from its ProviderSpec, nowhere else
    known_gaps: dict[str, str] = {}  # {"test_name": "reason"}: keeps CI green, not CONFORMANT

    @pytest.fixture
    def settings(self) -> MySettings:
        return _settings()

    @pytest.fixture
    async def store(self, settings: MySettings) -> AsyncIterator[MyProfileStore]:
        async with MyProfileStore(settings) as store:
            yield store

    @pytest.fixture
    async def other_store(
        self, store: MyProfileStore, settings: MySettings
    ) -> AsyncIterator[MyProfileStore]:
        """A SECOND instance over the same data as ``store``: what a second process opens."""
        async with MyProfileStore(settings) as other:
            yield other
