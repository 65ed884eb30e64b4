"""``ProfileStoreContract``: every contract mixin in one base class for providers."""

from __future__ import annotations

from typing import Any

from ccvault_contract_tests.capabilities import OPTIONAL_CAPABILITIES
from ccvault_contract_tests.suite_assets import AssetsContract
from ccvault_contract_tests.suite_bad_input import BadInputContract
from ccvault_contract_tests.suite_channels import ChannelsContract
from ccvault_contract_tests.suite_concurrency import ConcurrencyContract
from ccvault_contract_tests.suite_edges import EdgesContract
from ccvault_contract_tests.suite_expiry import ExpiryContract
from ccvault_contract_tests.suite_fields import FieldsContract
from ccvault_contract_tests.suite_integrity import IntegrityContract
from ccvault_contract_tests.suite_isolation import IsolationContract
from ccvault_contract_tests.suite_lifecycle import LifecycleContract
from ccvault_contract_tests.suite_lineage import LineageContract
from ccvault_contract_tests.suite_merge_rules import MergeRulesContract
from ccvault_contract_tests.suite_missing import MissingFieldsContract
from ccvault_contract_tests.suite_model import ModelBasedContract
from ccvault_contract_tests.suite_operations import OperationsContract
from ccvault_contract_tests.suite_profiles import ProfilesContract
from ccvault_contract_tests.suite_schema import SchemaContract

__all__ = ["ProfileStoreContract"]


class ProfileStoreContract(
    ProfilesContract,
    FieldsContract,
    ExpiryContract,
    AssetsContract,
    LineageContract,
    ChannelsContract,
    SchemaContract,
    MissingFieldsContract,
    LifecycleContract,
    OperationsContract,
    IntegrityContract,
    IsolationContract,
    BadInputContract,
    ConcurrencyContract,
    ModelBasedContract,
    EdgesContract,
    MergeRulesContract,
):
    """The shared contract of DESIGN.md §4. Subclass it in a ``test_*.py`` module::

        class TestMyStoreContract(ProfileStoreContract):
            capabilities = frozenset()      # optional capabilities (capabilities.py)
            known_gaps = {}                 # {"test_name": "reason"}: strict xfail

            @pytest.fixture
            async def store(self):
                async with MyStore(...) as s:
                    yield s

            @pytest.fixture                 # optional; default: `store` itself
            async def other_store(self, store):
                async with MyStore(...) as s:   # a second instance over the SAME data
                    yield s

    ``other_store`` is a second store instance over the same backing data as ``store``
    (another connection pool on the same DSN and schema, another handle on the same file,
    another cache client on the same Redis key prefix). The concurrency tests split their
    racing calls between the two, so races between processes are exercised and not only
    those one instance's internal locks serialise. Override it wherever a second process
    could open the data; the default (``store`` itself) suits in-process-only stores.

    Subclass definitions are checked at import: an unknown capability or a known gap that
    names no test of the suite is an error (a typo would otherwise silently do nothing).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.capabilities) - set(OPTIONAL_CAPABILITIES))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.capabilities names unknown capabilities {unknown}; "
                f"known: {sorted(OPTIONAL_CAPABILITIES)}"
            )
        tests = {name for name in dir(cls) if name.startswith("test_")}
        # a gap names a test ("test_x": every parameter) or one case ("test_x[param]")
        strangers = sorted(gap for gap in cls.known_gaps if gap.split("[", 1)[0] not in tests)
        if strangers:
            raise TypeError(
                f"{cls.__name__}.known_gaps names no test of the contract suite: {strangers}"
            )
