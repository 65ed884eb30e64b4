"""Mutation tests of the get_missing_fields suite (``suite_missing``): each deliberately
broken store below overrides ``_get_requirement_records`` alone (as a third-party provider
may) and reads one of a requirement's evaluated columns wrong, and the test proves the
shared suite fails it with the named test, a storage-facing one (so it runs for every class,
``core_rule_tests`` or not). Same pattern as ``test_mutations_edges.py``: one pytest session
in a subprocess over every mutant, each limited to the test that must kill it, plus the
unbroken in-memory store on the same tests (which must pass them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ccvault_contract_tests.scope import CORE_RULE_TESTS

# one mutant session (the module fixture) on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("contract-mutants-missing")

if TYPE_CHECKING:
    from conftest import MutantProject, MutantRun

HEADER = """
import pytest

from ccvault.models import RequiredLevel
from ccvault.requirements import RequirementRecords
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore


class RecordsMutant(InMemoryProfileStore):
    '''The default records, each passed through ``wrong`` (a record's values -> the values
    handed out instead).'''

    async def _get_requirement_records(self, tenant_id, scenario_id, step_id):
        records, build = await super()._get_requirement_records(tenant_id, scenario_id, step_id)
        return RequirementRecords([self.wrong(*record) for record in records], build)
"""

KILLER = "test_records_agree_with_the_checks_hook_for_varied_requirements"

#: name -> (the broken store, the contract test that must fail it)
MUTANTS = {
    # a records hook that hard-codes the level (every requirement judged hard)
    "records_hard_code_the_level": (
        """
        class Mutant(RecordsMutant):
            @staticmethod
            def wrong(name, level, condition, depends_on, check, source):
                return (name, RequiredLevel.HARD, condition, depends_on, check, source)
        """,
        KILLER,
    ),
    # one that drops the condition (every requirement applies)
    "records_drop_the_condition": (
        """
        class Mutant(RecordsMutant):
            @staticmethod
            def wrong(name, level, condition, depends_on, check, source):
                return (name, level, None, depends_on, check, source)
        """,
        KILLER,
    ),
    # one that drops the dependencies (every requirement's dependencies met)
    "records_drop_the_dependencies": (
        """
        class Mutant(RecordsMutant):
            @staticmethod
            def wrong(name, level, condition, depends_on, check, source):
                return (name, level, condition, (), check, source)
        """,
        KILLER,
    ),
}


@pytest.fixture(scope="module")
def mutant_run(
    tmp_path_factory: pytest.TempPathFactory, mutant_project: MutantProject
) -> MutantRun:
    return mutant_project.run(
        tmp_path_factory.mktemp("missing_mutants"),
        HEADER,
        MUTANTS,
        attributes='provider_name = "inmemory"; core_rule_tests = False',
    )


def test_the_killers_are_storage_facing() -> None:
    core_rule = CORE_RULE_TESTS["ccvault_contract_tests.suite_missing"] or frozenset()
    assert not {killer for _, killer in MUTANTS.values()} & core_rule


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_missing_fields_suite_catches_a_broken_records_hook(
    mutant_run: MutantRun, mutant: str
) -> None:
    mutant_run.assert_killed(mutant, MUTANTS[mutant][1])


def test_the_unbroken_reference_store_passes_every_killer(mutant_run: MutantRun) -> None:
    for _, killer in MUTANTS.values():
        mutant_run.assert_reference_passes(killer)
