"""``ProfileStoreContract``: every contract mixin in one base class for providers."""

from __future__ import annotations

from typing import Any

from ccvault_contract_tests.base import check_contract_class
from ccvault_contract_tests.suite_assets import AssetsContract
from ccvault_contract_tests.suite_atomicity import AtomicityContract
from ccvault_contract_tests.suite_bad_input import BadInputContract
from ccvault_contract_tests.suite_bulk import BulkJobsContract
from ccvault_contract_tests.suite_channels import ChannelsContract
from ccvault_contract_tests.suite_concurrency import ConcurrencyContract
from ccvault_contract_tests.suite_edges import EdgesContract
from ccvault_contract_tests.suite_erasure import ErasureContract
from ccvault_contract_tests.suite_expiry import ExpiryContract
from ccvault_contract_tests.suite_fields import FieldsContract
from ccvault_contract_tests.suite_identity_limits import IdentityLimitsContract
from ccvault_contract_tests.suite_integrity import IntegrityContract
from ccvault_contract_tests.suite_isolation import IsolationContract
from ccvault_contract_tests.suite_lifecycle import LifecycleContract
from ccvault_contract_tests.suite_lineage import LineageContract
from ccvault_contract_tests.suite_merge_rules import MergeRulesContract
from ccvault_contract_tests.suite_missing import MissingFieldsContract
from ccvault_contract_tests.suite_model import ModelBasedContract
from ccvault_contract_tests.suite_operations import OperationsContract
from ccvault_contract_tests.suite_profiles import ProfilesContract
from ccvault_contract_tests.suite_provenance import ProvenanceContract
from ccvault_contract_tests.suite_schema import SchemaContract
from ccvault_contract_tests.suite_timestamps import TimestampsContract
from ccvault_contract_tests.suite_unmerge import UnmergeContract

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
    AtomicityContract,
    TimestampsContract,
    MergeRulesContract,
    EdgesContract,
    UnmergeContract,
    ProvenanceContract,
    IdentityLimitsContract,
    ErasureContract,
    BulkJobsContract,
):
    """The shared contract of DESIGN.md §4. Subclass it in a ``test_*.py`` module::

        class TestMyStoreContract(ProfileStoreContract):
            provider_name = "mystore"       # entry-point name: capabilities come from its spec
            known_gaps = {}                 # {"test_name": "reason"}: strict xfail

            @pytest.fixture
            async def store(self):
                async with MyStore(...) as s:
                    yield s

            @pytest.fixture                 # required: no default
            async def other_store(self, store):
                async with MyStore(...) as s:   # a second instance over the SAME data
                    yield s

    ``other_store`` is a second store instance over the same backing data as ``store``
    (another connection pool on the same DSN and schema, another handle on the same file,
    another cache client on the same Redis key prefix). The concurrency tests split their
    racing calls between the two, so races between processes are exercised and not only
    those one instance's internal locks serialise. A store whose data cannot be opened twice
    declares ``single_instance = "why"`` instead (see ``ContractBase``).

    Subclass definitions are checked at import (``base.check_contract_class``): capabilities
    on the class or a known gap that names no test of the suite is an error.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_contract_class(cls)
