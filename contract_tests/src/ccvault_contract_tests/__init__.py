"""The shared ccvault contract suite: every storage provider and wrapper must pass it.

Use it from a provider's tests::

    from ccvault_contract_tests import ProfileStoreContract

    class TestMyStoreContract(ProfileStoreContract):
        @pytest.fixture
        async def store(self):
            async with MyStore() as s:
                yield s

or without code: ``pytest --pyargs ccvault_contract_tests --ccvault-config FILE.toml``.
See the README for capabilities, known gaps and ``CONTRACT_VERSION``.
"""

from ccvault_contract_tests.capabilities import OPTIONAL_CAPABILITIES, requires
from ccvault_contract_tests.contract import ProfileStoreContract
from ccvault_contract_tests.helpers import assert_not_quoted
from ccvault_contract_tests.version import CONTRACT_VERSION

__all__ = [
    "CONTRACT_VERSION",
    "OPTIONAL_CAPABILITIES",
    "ProfileStoreContract",
    "assert_not_quoted",
    "requires",
]
