"""Mutation tests of the merge-rule suite (``suite_merge_rules``): each deliberately broken
store below has one of the drifts issue 11 found between providers, and the test proves the
shared suite fails it, with the named test. Same pattern as ``test_plugin.py``: one pytest
session in a subprocess over every mutant, each limited to the test that must kill it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

# one mutant session (the module fixture) on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("contract-mutants-merge")

if TYPE_CHECKING:
    from conftest import MutantProject, MutantRun

HEADER = """
from collections.abc import AsyncIterator

import asyncio
import pytest

from ccvault.rules.merge import merge_winner
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
"""

#: name -> (the broken store, the contract test that must fail it)
MUTANTS = {
    # a merge that moves the source's identities with their flags: two primaries afterwards
    "keeps_two_primaries": (
        """
        class Mutant(InMemoryProfileStore):
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner):
                tenant = self._tenant(tenant_id)
                row = tenant.profiles.get(source_id)
                flags = {} if row is None else {
                    (i.channel, i.channel_user_id): i.primary
                    for i in row.profile.channel_identities
                }
                await super()._merge_profiles(tenant_id, source_id, target_id, choose_winner)
                target = tenant.profiles[target_id].profile
                target.channel_identities = [
                    i.model_copy(update={
                        "primary": flags.get((i.channel, i.channel_user_id), i.primary)
                    })
                    for i in target.channel_identities
                ]
        """,
        "test_merge_of_two_primaries_keeps_only_the_targets",
    ),
    # the in-memory drift: moved identities always demoted, even into a target without one
    "demotes_the_sources_primary": (
        """
        class Mutant(InMemoryProfileStore):
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner):
                tenant = self._tenant(tenant_id)
                row = tenant.profiles.get(source_id)
                moved = set() if row is None else {
                    (i.channel, i.channel_user_id) for i in row.profile.channel_identities
                }
                await super()._merge_profiles(tenant_id, source_id, target_id, choose_winner)
                target = tenant.profiles[target_id].profile
                target.channel_identities = [
                    i.model_copy(update={"primary": False})
                    if (i.channel, i.channel_user_id) in moved else i
                    for i in target.channel_identities
                ]
        """,
        "test_merge_into_a_target_without_primary_keeps_the_sources_primary",
    ),
    # a conflict rule that forgets that an expired version never pushes out a valid one
    "merge_ignores_expiry": (
        """
        class Mutant(InMemoryProfileStore):
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner):
                await super()._merge_profiles(tenant_id, source_id, target_id, merge_winner)
        """,
        "test_merge_decides_every_combination_of_verified_expiry_and_recency",
    ),
    # the old PostgreSQL behaviour: a stored id saved under another agent moves there
    "moves_definition_across_agents": (
        """
        class Mutant(InMemoryProfileStore):
            async def _save_field_definition(self, definition):
                async with self._lock:
                    tenant = self._tenant(definition.tenant_id, create=True)
                    for key, stored in list(tenant.definitions.items()):
                        if stored.id == definition.id:
                            del tenant.definitions[key]
                    tenant.definitions[(definition.agent_id, definition.name)] = (
                        definition.model_copy(deep=True)
                    )
                    return definition.id
        """,
        "test_a_definition_id_saved_under_another_agent_is_a_conflict",
    ),
    # the old in-memory behaviour: the same id stored under two agents
    "duplicates_definition_across_agents": (
        """
        class Mutant(InMemoryProfileStore):
            async def _save_field_definition(self, definition):
                async with self._lock:
                    tenant = self._tenant(definition.tenant_id, create=True)
                    key = (definition.agent_id, definition.name)
                    stored = definition.model_copy(deep=True)
                    existing = tenant.definitions.get(key)
                    if existing is not None:
                        stored.id, stored.created_at = existing.id, existing.created_at
                    tenant.definitions[key] = stored
                    return stored.id
        """,
        "test_a_definition_id_saved_under_another_agent_is_a_conflict",
    ),
    # a requirement of a scenario taken over by another agent through its natural key
    "moves_requirement_across_agents": (
        """
        class Mutant(InMemoryProfileStore):
            async def _save_scenario_requirement(self, requirement):
                async with self._lock:
                    tenant = self._tenant(requirement.tenant_id, create=True)
                    key = (requirement.scenario_id, requirement.step_id,
                           requirement.rule_id, requirement.field_name)
                    stored = requirement.model_copy(deep=True)
                    existing = tenant.requirements.get(key)
                    if existing is not None:
                        stored.id, stored.created_at = existing.id, existing.created_at
                    tenant.requirements[key] = stored
                    return stored.id
        """,
        "test_a_requirement_key_saved_by_another_agent_is_a_conflict",
    ),
    # the old SQLite behaviour: a soft delete forgets which identities the profile held
    "delete_forgets_identities": (
        """
        class Mutant(InMemoryProfileStore):
            async def _delete(self, tenant_id, profile_id):
                deleted = await super()._delete(tenant_id, profile_id)
                if deleted:
                    self._tenant(tenant_id).profiles[profile_id].profile.channel_identities = []
                return deleted
        """,
        "test_export_of_a_deleted_profile_lists_the_identities_it_held",
    ),
}


@pytest.fixture(scope="module")
def mutant_run(
    tmp_path_factory: pytest.TempPathFactory, mutant_project: MutantProject
) -> MutantRun:
    return mutant_project.run(tmp_path_factory.mktemp("merge_mutants"), HEADER, MUTANTS)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_merge_rules_suite_catches_a_drifted_store(mutant_run: MutantRun, mutant: str) -> None:
    mutant_run.assert_killed(mutant, MUTANTS[mutant][1])


def test_the_unbroken_reference_store_passes_every_killer(mutant_run: MutantRun) -> None:
    for _, killer in MUTANTS.values():
        mutant_run.assert_reference_passes(killer)
