"""The plugin's promises: strict-mode support, capabilities, known gaps, the conformance
summary, and that the suite actually catches broken stores.

Each test writes a tiny provider test module and runs pytest on it in a subprocess (the
way a third party runs the suite), filtered with ``-k`` to keep it fast.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

STRICT_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

HEADER = """
from collections.abc import AsyncIterator

import asyncio
import pytest

from ccvault.models import ItemStatus
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
"""


def _module(body: str, *, store_class: str = "InMemoryProfileStore", extra: str = "") -> str:
    return (
        HEADER
        + textwrap.dedent(extra)
        + textwrap.dedent(
            f"""

            class TestProviderContract(ProfileStoreContract):
            {textwrap.indent(textwrap.dedent(body), "    ")}

                @pytest.fixture
                async def store(self) -> AsyncIterator[InMemoryProfileStore]:
                    async with {store_class}() as store:
                        yield store
            """
        )
    )


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_provider=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_suite_runs_in_strict_asyncio_mode(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        _module("capabilities = frozenset()"),
        "-k",
        "get_or_create or 50_concurrent or isolation and get_by_id",
        "-W",
        "error::pytest.PytestDeprecationWarning",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 5 and set(outcomes) <= {"passed", "deselected"}, outcomes
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*TestProviderContract: CONFORMANT*"])


def test_undeclared_capabilities_skip_their_tests_and_are_reported(
    pytester: pytest.Pytester,
) -> None:
    result = _run(pytester, _module("capabilities = frozenset()"), "-k", "mebibyte or nul_")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: CONFORMANT*",
            "*skipped 1 optional:*large_values*",
            "*skipped 1 optional:*nul_characters*",
        ]
    )


def test_declared_capabilities_run_their_tests(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        _module('capabilities = frozenset({"large_values", "nul_characters"})'),
        "-k",
        "mebibyte or nul_",
    )
    result.assert_outcomes(passed=3)


def test_unknown_capability_is_an_error(pytester: pytest.Pytester) -> None:
    result = _run(pytester, _module('capabilities = frozenset({"time_travel"})'))
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown capabilities*time_travel*"])


def test_known_gap_naming_no_test_is_an_error(pytester: pytest.Pytester) -> None:
    result = _run(pytester, _module('known_gaps = {"test_does_not_exist": "typo"}'))
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*known_gaps names no test*test_does_not_exist*"])


def test_a_known_gap_can_name_one_parametrized_case(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        _module(
            'known_gaps = {"test_json_values_round_trip[float]": "floats come back as text"}',
            store_class="FloatsAsTextStore",
            extra="""
            class FloatsAsTextStore(InMemoryProfileStore):
                async def _get_field(self, tenant_id, profile_id, field_name, status):
                    found = await super()._get_field(tenant_id, profile_id, field_name, status)
                    if found is not None and found.value == 3.25:
                        found.value = str(found.value)
                    return found
            """,
        ),
        "-k",
        "test_json_values_round_trip",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("xfailed") == 1 and "failed" not in outcomes, outcomes
    result.stdout.fnmatch_lines(["*NOT CONFORMANT*"])


def test_a_known_gap_that_passes_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        _module('known_gaps = {"test_delete_unknown_is_false": "we thought it was broken"}'),
        "-k",
        "test_delete_unknown_is_false",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NOT CONFORMANT*", "*known gaps that now pass*"])


BROKEN_DELETE = """
class BrokenDeleteStore(InMemoryProfileStore):
    async def _delete(self, tenant_id, profile_id):
        return False  # never deletes anything
"""


def test_a_required_known_gap_is_xfail_but_reported_not_conformant(
    pytester: pytest.Pytester,
) -> None:
    result = _run(
        pytester,
        _module(
            'known_gaps = {"test_delete_is_true_once_then_false": "soft delete not built yet"}',
            store_class="BrokenDeleteStore",
            extra=BROKEN_DELETE,
        ),
        "-k",
        "test_delete_is_true_once_then_false",
    )
    result.assert_outcomes(xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: NOT CONFORMANT*",
            "*REQUIRED BEHAVIOUR DECLARED AS KNOWN GAP*test_delete_is_true_once_then_false*",
        ]
    )


def test_required_tests_skipped_by_the_fixture_are_not_verified(
    pytester: pytest.Pytester,
) -> None:
    source = HEADER + textwrap.dedent(
        """
        class TestNoServer(ProfileStoreContract):
            @pytest.fixture
            async def store(self):
                pytest.skip("database server not reachable")
                yield None
        """
    )
    result = _run(pytester, source, "-k", "test_delete_unknown_is_false")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*TestNoServer: NOT VERIFIED*",
            "*skipped 1 REQUIRED: database server not reachable*",
        ]
    )


def test_forgetting_the_store_fixture_fails_clearly(pytester: pytest.Pytester) -> None:
    source = HEADER + textwrap.dedent(
        """
        class TestNoStore(ProfileStoreContract):
            pass
        """
    )
    result = _run(pytester, source, "-k", "test_delete_unknown_is_false")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*must override the `store` fixture*"])


# ------------------------------------------------------------------------------------------
# mutants: deliberately broken stores the suite must reject
# ------------------------------------------------------------------------------------------

MUTANTS = {
    "no_supersede": (
        """
        from ccvault_inmemory.store import _Field

        class Mutant(InMemoryProfileStore):
            async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
                async with self._lock:
                    tenant = self._tenant(tenant_id)
                    self._live(tenant, profile_id)
                    tenant.fields[field.id] = _Field(profile_id, next(self._seq), field)
                    return field.id
        """,
        "test_update_field_supersedes_the_active_version",
    ),
    "racy_supersede": (
        """
        from ccvault_inmemory.store import _Field

        class Mutant(InMemoryProfileStore):
            async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
                previous = await self._get_field(tenant_id, profile_id, field.name,
                                                 ItemStatus.ACTIVE)
                await asyncio.sleep(0)  # check-then-act: another writer slips in here
                async with self._lock:
                    tenant = self._tenant(tenant_id)
                    self._live(tenant, profile_id)
                    if previous is not None:
                        row = tenant.fields[previous.id]
                        row.item = row.item.model_copy(update={
                            "status": ItemStatus.SUPERSEDED,
                            "superseded_by_id": field.id,
                            "superseded_at": field.updated_at,
                        })
                    tenant.fields[field.id] = _Field(profile_id, next(self._seq), field)
                    return field.id
        """,
        "test_50_concurrent_updates_of_one_name_keep_one_active_and_an_unbroken_chain",
    ),
    "racy_get_or_create": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_or_create(self, tenant_id, candidate):
                identity = candidate.channel_identities[0]
                found = await self._get_by_channel_identity(
                    tenant_id, identity.channel, identity.channel_user_id, False
                )
                await asyncio.sleep(0)  # check-then-act: another caller slips in here
                if found is not None:
                    return found
                await self._save(candidate)
                return candidate
        """,
        "test_20_concurrent_get_or_create_yield_one_profile",
    ),
    "leaky_tenant": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_by_id(self, tenant_id, profile_id, include_history):
                for tid in list(self._tenants):
                    found = await super()._get_by_id(tid, profile_id, include_history)
                    if found is not None:
                        return found
                return None
        """,
        "test_get_by_id_of_another_tenant_is_none",
    ),
    "oldest_first_history": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_field_history(self, tenant_id, profile_id, field_name):
                return list(reversed(await super()._get_field_history(
                    tenant_id, profile_id, field_name)))
        """,
        "test_field_history_is_newest_collected_first",
    ),
    "half_applied_merge": (
        """
        from ccvault import errors

        class Mutant(InMemoryProfileStore):
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner):
                tenant = self._tenant(tenant_id)
                for row in tenant.fields.values():
                    if row.profile_id == target_id:
                        row.profile_id = source_id   # moved before checking the source
                self._live(tenant, source_id)
                await super()._merge_profiles(tenant_id, source_id, target_id, choose_winner)
        """,
        "test_merge_with_an_unknown_source_is_not_found",
    ),
    "purge_keeps_items": (
        """
        class Mutant(InMemoryProfileStore):
            async def _purge_profile(self, tenant_id, profile_id):
                tenant = self._tenant(tenant_id)
                row = tenant.profiles.get(profile_id)
                if row is None:
                    return False
                row.deleted = True   # a soft delete pretending to be a purge
                for key, owner in list(tenant.identities.items()):
                    if owner == profile_id:
                        del tenant.identities[key]
                return True
        """,
        "test_purge_leaves_no_item_history_or_lineage",
    ),
    "newest_write_wins_any_status": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_field(self, tenant_id, profile_id, field_name, status):
                if status is not None:
                    return await super()._get_field(tenant_id, profile_id, field_name, status)
                history = await super()._get_field_history(tenant_id, profile_id, field_name)
                # ignores collected_at: the last write wins
                return max(history, key=lambda v: v.updated_at, default=None)
        """,
        "test_random_operation_sequences_match_a_reference_model",
    ),
    "loops_on_cycles": (
        """
        class Mutant(InMemoryProfileStore):
            async def _get_derivation_chain(self, tenant_id, item_id, item_type, max_depth):
                chain = []
                next_id, next_type = item_id, item_type
                while next_id is not None and len(chain) < max_depth:
                    node = await self._get_lineage_node(tenant_id, next_id, next_type)
                    if node is None:
                        break
                    chain.append(node)
                    next_id = node.source_item_id
                chain.reverse()
                return chain
        """,
        "test_chain_never_loops_on_a_cycle",
    ),
    "instance_local_lock": (
        """
        from ccvault_inmemory.store import _Field

        class Mutant(InMemoryProfileStore):
            # correct within one instance (its lock serialises every write), broken across
            # two instances over the same data: a process-local lock guarding shared state
            async def _update_field(self, tenant_id, profile_id, field, supersede_existing):
                async with self._lock:
                    tenant = self._tenant(tenant_id)
                    self._live(tenant, profile_id)
                    previous = self._active_field(tenant, profile_id, field.name)
                    await asyncio.sleep(0)  # a round trip to the shared backend
                    if previous is not None:
                        previous.item = previous.item.model_copy(update={
                            "status": ItemStatus.SUPERSEDED,
                            "superseded_by_id": field.id,
                            "superseded_at": field.updated_at,
                        })
                    tenant.fields[field.id] = _Field(profile_id, next(self._seq), field)
                    return field.id
        """,
        "test_50_concurrent_updates_of_one_name_keep_one_active_and_an_unbroken_chain",
    ),
    "merge_moves_a_snapshot": (
        """
        class Mutant(InMemoryProfileStore):
            # moves the source's fields as listed before a round trip: correct within one
            # instance, but a write through another instance in between stays behind
            # (no conflicting names in the killer, so conflicts are not handled here)
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner):
                async with self._lock:
                    tenant = self._tenant(tenant_id)
                    source = self._live(tenant, source_id)
                    target = self._live(tenant, target_id)
                    listed = [row for row in tenant.fields.values() if row.profile_id == source_id]
                    await asyncio.sleep(0)  # a round trip to the shared backend
                    for row in listed:
                        row.profile_id = target_id
                    for identity in source.profile.channel_identities:
                        moved = identity.model_copy(update={"primary": False})
                        target.profile.channel_identities.append(moved)
                        tenant.identities[(identity.channel, identity.channel_user_id)] = target_id
                    source.profile.channel_identities = []
                    source.deleted = True
                    tenant.customers.pop(source.profile.customer_id, None)
        """,
        "test_merge_racing_updates_of_the_source_loses_no_field",
    ),
}

#: Mutants whose test class also gets ``other_store``: a second instance of the mutant
#: sharing the first one's data but not its lock (two processes over one database). Each is
#: also run without it, where its killer must pass: only the second instance exposes it.
SHARED_DATA_MUTANTS = frozenset({"instance_local_lock", "merge_moves_a_snapshot"})


def _mutant_class_name(mutant: str) -> str:
    return "Test" + "".join(part.title() for part in mutant.split("_"))


@pytest.fixture(scope="module")
def mutant_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One pytest session over every mutant, each limited to the test that must kill it."""
    root = tmp_path_factory.mktemp("mutants")
    (root / "pytest.ini").write_text(STRICT_INI)
    parts = [HEADER]
    selections = []
    for mutant, (code, killer) in sorted(MUTANTS.items()):
        cls = _mutant_class_name(mutant)
        body = textwrap.dedent(code).replace("class Mutant(", f"class {cls}Store(")
        parts.append(body)
        parts.append(
            textwrap.dedent(
                f"""
                class {cls}(ProfileStoreContract):
                    @pytest.fixture
                    async def store(self):
                        async with {cls}Store() as store:
                            yield store
                """
            )
        )
        selections.append(f"({cls} and {killer})")
        if mutant in SHARED_DATA_MUTANTS:
            parts.append(
                textwrap.dedent(
                    f"""
                    class {cls}SharedData({cls}):
                        @pytest.fixture
                        async def other_store(self, store):
                            async with {cls}Store() as other:
                                # the same data, its own lock
                                other._tenants, other._seq = store._tenants, store._seq
                                yield other
                    """
                )
            )
            selections.append(f"({cls}SharedData and {killer})")
    (root / "test_mutants.py").write_text("\n".join(parts))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rfp",
            "-k",
            " or ".join(selections),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_suite_catches_a_broken_store(mutant_run: str, mutant: str) -> None:
    _, killer = MUTANTS[mutant]
    cls = _mutant_class_name(mutant)
    if mutant in SHARED_DATA_MUTANTS:
        # one instance serialises the race away; the second instance over the data exposes it
        assert f"PASSED test_mutants.py::{cls}::{killer}" in mutant_run, mutant_run[-5000:]
        cls += "SharedData"
    assert f"FAILED test_mutants.py::{cls}::{killer}" in mutant_run, mutant_run[-5000:]
