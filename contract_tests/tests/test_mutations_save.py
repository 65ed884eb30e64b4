"""Mutation tests of the save, all-or-nothing and timestamp suites (``suite_atomicity``,
``suite_timestamps``): each deliberately broken store below has one of the bugs issue 11
found in a provider, and the test proves the shared suite fails it, with the named test.
Same pattern as ``test_plugin.py``: one pytest session in a subprocess over every mutant,
each limited to the test that must kill it, plus the unbroken reference store on the same
tests (which must pass them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

# one mutant session (the module fixture) on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("contract-mutants-save")

if TYPE_CHECKING:
    from conftest import MutantProject, MutantRun

HEADER = """
import pytest

from ccvault import errors
from ccvault.models import ItemStatus
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
"""

#: the old SQLite/PostgreSQL/MongoDB save: the caller's copy of a stored item overwrites it,
#: status and supersede links included, so a stale copy revives what was closed meanwhile
_REVIVES = """
class Mutant(InMemoryProfileStore):
    async def _save(self, profile):
        saved = await super()._save(profile)
        tenant = self._tenant(profile.tenant_id)
        for item in profile.fields.values():
            if item.id in tenant.fields:
                tenant.fields[item.id].item = item.model_copy(deep=True)
        for asset in profile.assets:
            if asset.id in tenant.assets:
                tenant.assets[asset.id].item = asset.model_copy(deep=True)
        return saved
"""

#: the old MongoDB-standalone save: profile attributes, consents and identities written
#: first, then the item checks refuse the save and nothing undoes the first writes
_HALF_APPLIES = """
class Mutant(InMemoryProfileStore):
    async def _save(self, profile):
        tenant = self._tenant(profile.tenant_id, create=True)
        row = tenant.profiles.get(profile.id)
        if row is not None and not row.deleted:
            row.profile.verification_level = profile.verification_level
            row.profile.consents = [c.model_copy(deep=True) for c in profile.consents]
            row.profile.last_interaction_at = profile.last_interaction_at
        return await super()._save(profile)
"""

#: the old PostgreSQL/MongoDB outcome of a stale copy whose field got a newer version:
#: a conflict (after retrying), although nobody raced
_REFUSES_STALE = """
class Mutant(InMemoryProfileStore):
    async def _save(self, profile):
        tenant = self._tenant(profile.tenant_id)
        for item in profile.fields.values():
            row = tenant.fields.get(item.id)
            if row is not None and row.item.status is not ItemStatus.ACTIVE:
                raise errors.ConflictError("the write lost 50 races in a row")
        return await super()._save(profile)
"""

#: a BSON-date-like storage: collected_at kept to the millisecond only
_MILLISECONDS = """
class Mutant(InMemoryProfileStore):
    async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
        at = field.collected_at
        field = field.model_copy(
            update={"collected_at": at.replace(microsecond=at.microsecond // 1000 * 1000)}
        )
        return await super()._update_field(tenant_id, profile_id, field, supersede_existing)
"""

#: asyncpg's mapping of the far end of the range: it comes back naive
_NAIVE_MAX = """
class Mutant(InMemoryProfileStore):
    async def _get_asset(self, tenant_id, profile_id, asset_id):
        found = await super()._get_asset(tenant_id, profile_id, asset_id)
        if found is not None and found.expires_at is not None and found.expires_at.year == 9999:
            found = found.model_copy(update={"expires_at": found.expires_at.replace(tzinfo=None)})
        return found
"""

#: the old core/provider split of update_field(supersede_existing=False): the profile's
#: overdue versions swept in one step, the conflict found in the next (already swept)
_SWEEPS_FIRST = """
class Mutant(InMemoryProfileStore):
    async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
        if not supersede_existing:
            await self._expire_stale_fields(tenant_id, profile_id, field.updated_at)
        return await super()._update_field(tenant_id, profile_id, field, supersede_existing)
"""

_REFUSED = "test_a_refused_write_leaves_the_tenant_exactly_as_before"
_ROUND_TRIP = "test_every_timestamp_round_trips_exactly_and_aware"

#: name -> (the broken store, the contract test that must fail it, its parameter or None)
MUTANTS: dict[str, tuple[str, str, str | None]] = {
    "revives_a_superseded_asset": (
        _REVIVES,
        "test_stale_save_keeps_an_asset_superseded_meanwhile",
        None,
    ),
    "revives_an_orphaned_field": (
        _REVIVES,
        "test_stale_save_keeps_a_field_orphaned_meanwhile",
        None,
    ),
    "revives_an_expired_field": (
        _REVIVES,
        "test_stale_save_keeps_a_field_expired_by_a_sweep",
        None,
    ),
    "takes_the_callers_status": (
        _REVIVES,
        "test_save_ignores_the_callers_copy_of_a_stored_status",
        None,
    ),
    "refuses_a_stale_copy": (
        _REFUSES_STALE,
        "test_stale_save_of_a_field_with_a_newer_version_applies_the_rest",
        None,
    ),
    "half_applies_an_item_conflict": (
        _HALF_APPLIES,
        _REFUSED,
        "save_asset_id_of_another_profile",
    ),
    "half_applies_a_rename": (_HALF_APPLIES, _REFUSED, "save_renamed_field"),
    "half_applies_an_identity_conflict": (
        _HALF_APPLIES,
        _REFUSED,
        "save_identity_of_another_profile",
    ),
    "half_applies_a_stale_refused_save": (
        _HALF_APPLIES,
        "test_a_refused_save_after_a_concurrent_supersede_writes_nothing",
        None,
    ),
    "sweeps_before_a_refused_update": (
        _SWEEPS_FIRST,
        _REFUSED,
        "update_field_with_an_active_version",
    ),
    "keeps_milliseconds_only": (_MILLISECONDS, _ROUND_TRIP, "microseconds"),
    "reads_the_latest_moment_back_naive": (_NAIVE_MAX, _ROUND_TRIP, "max"),
}


def _node(test: str, param: str | None) -> str:
    return test if param is None else f"{test}[{param}]"


# each mutant: (its code, the test that must kill it)
KILLERS = {mutant: (code, test) for mutant, (code, test, _) in MUTANTS.items()}


@pytest.fixture(scope="module")
def mutant_run(
    tmp_path_factory: pytest.TempPathFactory, mutant_project: MutantProject
) -> MutantRun:
    return mutant_project.run(
        tmp_path_factory.mktemp("save_mutants"),
        HEADER,
        KILLERS,
    )


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_suite_catches_a_broken_save_or_timestamp(mutant_run: MutantRun, mutant: str) -> None:
    _, test, param = MUTANTS[mutant]
    mutant_run.assert_killed(mutant, _node(test, param))


def test_the_unbroken_reference_store_passes_every_killer(mutant_run: MutantRun) -> None:
    for _, test, param in MUTANTS.values():
        mutant_run.assert_reference_passes(_node(test, param))
