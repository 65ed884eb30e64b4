"""Mutation tests of the edge-value suite (``suite_edges``): each deliberately broken store
below has one of the bugs issue 11 found (in a provider, or in core's public layer, which is
patched back to its old behaviour for that one class), and the test proves the shared suite
fails it with the named test. Same pattern as ``test_mutations_merge.py``: one pytest
session in a subprocess over every mutant, each limited to the test that must kill it, plus
the unbroken in-memory store on the same tests (which must pass them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

# one mutant session (the module fixture) on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("contract-mutants-edges")

if TYPE_CHECKING:
    from conftest import MutantProject, MutantRun

HEADER = """
from datetime import datetime

import pytest

import ccvault.arguments
import ccvault.store
from ccvault.models import ItemStatus
from ccvault.requirements import find_missing
from ccvault.store import ProfileStore, present_field, present_profile
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
"""

#: name -> (the broken store: a class ``Mutant`` whose optional ``patch(monkeypatch)``
#: breaks core for the duration of one test, and the contract test that must fail it)
MUTANTS = {
    # PostgreSQL before the range check: datetime.max stored as infinity, read back naive
    "year_9999_read_back_naive": (
        """
        class Mutant(InMemoryProfileStore):
            async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
                if field.expires_at is not None and field.expires_at.year >= 9999:
                    field = field.model_copy(update={"expires_at": datetime.max})
                return await super()._update_field(
                    tenant_id, profile_id, field, supersede_existing
                )
        """,
        "test_timestamps_at_the_edges_of_the_range_round_trip_exactly",
    ),
    # a definitions read that forgets the agent: another agent's rule judges the requirement
    "definitions_of_every_agent": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_field_definitions(self, tenant_id, agent_id, enabled_only):
                tenant = self._tenant(tenant_id)
                return [
                    d.model_copy(deep=True)
                    for d in tenant.definitions.values()
                    if d.enabled or not enabled_only
                ]
        """,
        "test_a_requirement_without_a_definition_of_its_agent_ignores_other_agents",
    ),
    # an EXPIRED lookup that returns the oldest expired version instead of the newest
    "oldest_expired_version": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_field(self, tenant_id, profile_id, field_name, status):
                if status is not ItemStatus.EXPIRED:
                    return await super()._get_field(tenant_id, profile_id, field_name, status)
                history = await self._get_field_history(tenant_id, profile_id, field_name)
                expired = [v for v in history if v.status is ItemStatus.EXPIRED]
                return expired[-1] if expired else None
        """,
        "test_expired_lookup_returns_the_newest_of_several_swept_versions",
    ),
    # core before issue 11: lone surrogates pass the argument checks
    "core_lets_surrogates_through": (
        """
        class Mutant(InMemoryProfileStore):
            @staticmethod
            def patch(monkeypatch):
                def old_model(cls, value, what):
                    return cls.model_validate(value.model_dump(warnings=False))

                monkeypatch.setattr(ccvault.store, "_model", old_model)
        """,
        "test_lone_surrogates_in_fields_are_refused_before_anything_is_written",
    ),
    # core before issue 11: any aware timestamp accepted, datetime.max included
    "core_accepts_any_timestamp": (
        """
        class Mutant(InMemoryProfileStore):
            @staticmethod
            def patch(monkeypatch):
                monkeypatch.setattr(ccvault.arguments, "check_timestamp", lambda v, w: v)
        """,
        "test_naive_or_out_of_range_timestamps_are_refused",
    ),
    # core before issue 11: an unswept overdue ACTIVE version always wins an EXPIRED lookup
    "core_prefers_the_unswept_version": (
        """
        class Mutant(InMemoryProfileStore):
            @staticmethod
            def patch(monkeypatch):
                async def old_get_field(
                    self, tenant_id, profile_id, field_name, *, status=ItemStatus.ACTIVE
                ):
                    now = self.now()
                    if status is ItemStatus.EXPIRED:
                        active = await self._get_field(
                            tenant_id, profile_id, field_name, ItemStatus.ACTIVE
                        )
                        if active is not None and active.is_expired(now):
                            return present_field(active, now)
                    found = await self._get_field(tenant_id, profile_id, field_name, status)
                    if found is None:
                        return None
                    found = present_field(found, now)
                    if status is not None and found.status is not status:
                        return None
                    return found

                monkeypatch.setattr(ProfileStore, "get_field", old_get_field)
        """,
        "test_expired_lookup_returns_a_swept_version_collected_after_an_unswept_one",
    ),
    # core before issue 11: whichever agent's definition loads first judges every requirement
    "core_first_agents_definition_wins": (
        """
        class Mutant(InMemoryProfileStore):
            @staticmethod
            def patch(monkeypatch):
                async def old_missing(
                    self, tenant_id, profile, scenario_id, *, step_id=None,
                    required_level="hard",
                ):
                    level = ccvault.arguments.check_required_level(required_level)
                    found = await self._get_scenario_requirements(
                        tenant_id, scenario_id, step_id
                    )
                    requirements = sorted(
                        found, key=lambda req: (req.collection_order, req.field_name)
                    )
                    definitions = {}
                    for agent_id in dict.fromkeys(req.agent_id for req in requirements):
                        for d in await self._get_field_definitions(tenant_id, agent_id, True):
                            definitions.setdefault(d.name, d)
                    now = self.now()
                    return find_missing(
                        present_profile(profile, now), requirements, definitions,
                        rules=self.rules, required_level=level, now=now,
                    )

                monkeypatch.setattr(ProfileStore, "get_missing_fields", old_missing)
        """,
        "test_missing_fields_judges_each_requirement_by_its_own_agents_definition",
    ),
}


# the test class of each store ({cls}, {store_class}: MutantProject.run)
CONTRACT_CLASS = """
class {cls}(ProfileStoreContract):
    provider_name = "inmemory"
    single_instance = "an in-process mutant"

    @pytest.fixture
    async def store(self, monkeypatch):
        patch = getattr({store_class}, "patch", None)
        if patch is not None:
            patch(monkeypatch)
        async with {store_class}() as store:
            yield store
"""


@pytest.fixture(scope="module")
def mutant_run(
    tmp_path_factory: pytest.TempPathFactory, mutant_project: MutantProject
) -> MutantRun:
    return mutant_project.run(
        tmp_path_factory.mktemp("edge_mutants"), HEADER, MUTANTS, CONTRACT_CLASS
    )


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_edge_suite_catches_a_broken_store(mutant_run: MutantRun, mutant: str) -> None:
    mutant_run.assert_killed(mutant, MUTANTS[mutant][1])


def test_the_unbroken_reference_store_passes_every_killer(mutant_run: MutantRun) -> None:
    for _, killer in MUTANTS.values():
        mutant_run.assert_reference_passes(killer)
