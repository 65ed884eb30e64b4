"""The plugin's promises: strict-mode support, capabilities read from the provider, known
gaps, the second instance, the verdicts and the exit status they set (the release gate), the
JSON report (also under pytest-xdist), and that the suite actually catches broken stores.

Each test writes a tiny provider test module and runs pytest on it in a subprocess (the way
a third party runs the suite), filtered with ``-k`` to keep it fast. Providers that must be
found through the ``ccvault.providers`` entry point are registered with a ``*.dist-info``
folder next to the module, exactly what ``pip install`` leaves behind.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import LeanPytester, MutantProject


HEADER = """
from collections.abc import AsyncIterator

import asyncio
import pytest

from ccvault.models import ItemStatus
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
"""

#: An in-memory provider whose spec declares NO optional capability (``plain``).
PLAIN_PROVIDER = """
from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault_inmemory import InMemoryProfileStore


class PlainSettings(BaseModel):
    pass


@hookimpl
def ccvault_provider():
    return ProviderSpec(
        name="plain",
        distribution="plain-provider",
        settings_model=PlainSettings,
        create_store=lambda options, rules: InMemoryProfileStore(rules=rules),
        capabilities=frozenset(CAPABILITIES),
    )
"""

#: A provider whose stores keep their data in a shared "server" (a module-level dict per
#: database name, as a database server would) but serialise their writes with a lock of
#: their own: correct within one process, racy between two. Its get_or_create checks, then
#: acts after a round trip, holding only that per-process lock.
LOCKSTEP_PROVIDER = """
import asyncio

from pydantic import BaseModel, ConfigDict

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault_inmemory import InMemoryProfileStore

#: the "database server": the data of each database, shared by every store opened on it
SERVER = {}


class LockstepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database: str = "main"


class LockstepStore(InMemoryProfileStore):
    def __init__(self, database="main", rules=None):
        super().__init__(rules=rules)
        first = SERVER.setdefault(database, self)
        if first is not self:
            # the same data, but NOT the same lock: that one is per process
            self._tenants, self._seq = first._tenants, first._seq
        self._process_lock = asyncio.Lock()

    async def _get_or_create(self, tenant_id, candidate):
        async with self._process_lock:  # one caller at a time - in this process
            identity = candidate.channel_identities[0]
            found = await self._get_by_channel_identity(
                tenant_id, identity.channel, identity.channel_user_id, False
            )
            await asyncio.sleep(0)  # a round trip to the shared server
            if found is not None:
                return found
            await self._save(candidate)
            return candidate


@hookimpl
def ccvault_provider():
    return ProviderSpec(
        name="lockstep",
        distribution="lockstep-provider",
        settings_model=LockstepSettings,
        create_store=lambda options, rules: LockstepStore(options.database, rules),
        capabilities=frozenset({"large_values", "nul_characters", "high_concurrency"}),
    )
"""

LOCKSTEP_KILLER = "test_20_concurrent_get_or_create_yield_one_profile"


def register_provider(root: Path, name: str, source: str) -> None:
    """Install provider ``name`` into ``root`` as pip would: a module plus a dist-info folder
    whose ``entry_points.txt`` registers it in the ``ccvault.providers`` group."""
    module = f"{name}_provider"
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-provider\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ccvault.providers]\n{name} = {module}\n")


def _module(
    body: str = "",
    *,
    store_class: str = "InMemoryProfileStore",
    extra: str = "",
    provider: str = "inmemory",
    other_store: bool = True,
) -> str:
    """A provider test module: one contract class over ``store_class``; ``body`` is more of
    the class (indented for it here); ``other_store`` adds a second instance over the same
    data (``share_state_with``)."""
    lines = [
        HEADER,
        textwrap.dedent(extra),
        "",
        "class TestProviderContract(ProfileStoreContract):",
        f"    provider_name = {provider!r}",
        textwrap.indent(textwrap.dedent(body), "    "),
        "    @pytest.fixture",
        "    async def store(self) -> AsyncIterator[InMemoryProfileStore]:",
        f"        async with {store_class}() as store:",
        "            yield store",
        "",
    ]
    if other_store:
        lines += [
            "    @pytest.fixture",
            "    async def other_store(self, store):",
            f"        async with {store_class}() as other:",
            "            other.share_state_with(store)",
            "            yield other",
            "",
        ]
    return "\n".join(lines)


def _plain(pytester: pytest.Pytester, capabilities: str = "()") -> None:
    register_provider(pytester.path, "plain", f"CAPABILITIES = {capabilities}\n{PLAIN_PROVIDER}")


# ------------------------------------------------------------------------------------------
# asyncio, capabilities, known gaps
# ------------------------------------------------------------------------------------------


def test_suite_runs_in_strict_asyncio_mode(lean: LeanPytester) -> None:
    result = lean.run_module(
        _module(),
        "-k",
        "get_or_create or 50_concurrent or isolation and get_by_id",
        "-W",
        "error::pytest.PytestDeprecationWarning",
        "--ccvault-allow-incomplete",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 5 and set(outcomes) <= {"passed", "deselected"}, outcomes
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*TestProviderContract: INCOMPLETE*"])


def test_capabilities_come_from_the_provider_spec(
    lean: LeanPytester, pytester: pytest.Pytester
) -> None:
    _plain(pytester)  # a provider that declares none
    result = lean.run_module(
        _module(provider="plain"),
        "-k",
        "mebibyte or nul_",
        "--ccvault-allow-incomplete",
    )
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: INCOMPLETE*",
            "*provider plain (plain-provider 0.1); capabilities: none*",
            "*skipped 1 optional:*large_values*",
            "*skipped 1 optional:*nul_characters*",
        ]
    )


def test_declared_capabilities_run_their_tests(
    lean: LeanPytester, pytester: pytest.Pytester
) -> None:
    _plain(pytester, '{"large_values", "nul_characters"}')
    result = lean.run_module(
        _module(provider="plain"),
        "-k",
        "mebibyte or nul_",
        "--ccvault-allow-incomplete",
    )
    result.assert_outcomes(passed=3)


def test_capabilities_on_the_test_class_are_an_error(lean: LeanPytester) -> None:
    result = lean.run_module(_module('capabilities = frozenset({"large_values"})'))
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*capabilities are declared once, on the provider*"])


def test_an_unknown_capability_in_the_spec_fails_every_test(
    lean: LeanPytester, pytester: pytest.Pytester
) -> None:
    _plain(pytester, '{"time_travel"}')
    result = lean.run_module(_module(provider="plain"), "-k", "test_delete_unknown_is_false")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*declares unknown capabilities*time_travel*", "*TestProviderContract: NOT CONFORMANT*"]
    )


def test_an_uninstalled_provider_fails_every_test(lean: LeanPytester) -> None:
    result = lean.run_module(_module(provider="nosuchdb"), "-k", "test_delete_unknown_is_false")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*provider 'nosuchdb' cannot be loaded*"])


def test_known_gap_naming_no_test_is_an_error(lean: LeanPytester) -> None:
    result = lean.run_module(_module('known_gaps = {"test_does_not_exist": "typo"}'))
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*known_gaps names no test*test_does_not_exist*"])


def test_a_known_gap_can_name_one_parametrized_case(lean: LeanPytester) -> None:
    result = lean.run_module(
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
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_known_gap_that_passes_fails_the_run(lean: LeanPytester) -> None:
    result = lean.run_module(
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


def test_a_required_known_gap_is_xfail_but_not_conformant_and_fails_the_run(
    lean: LeanPytester,
) -> None:
    result = lean.run_module(
        _module(
            'known_gaps = {"test_delete_is_true_once_then_false": "soft delete not built yet"}',
            store_class="BrokenDeleteStore",
            extra=BROKEN_DELETE,
        ),
        "-k",
        "test_delete_is_true_once_then_false",
    )
    result.assert_outcomes(xfailed=1)
    # every test "passed" (an expected failure), yet the gate fails the run
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: NOT CONFORMANT*",
            "*REQUIRED BEHAVIOUR DECLARED AS KNOWN GAP*test_delete_is_true_once_then_false*",
            "*contract gate: 1 of 1 classes not CONFORMANT; the run fails*",
        ]
    )


def test_allow_nonconformant_reports_without_gating(lean: LeanPytester) -> None:
    result = lean.run_module(
        _module(
            'known_gaps = {"test_delete_is_true_once_then_false": "soft delete not built yet"}',
            store_class="BrokenDeleteStore",
            extra=BROKEN_DELETE,
        ),
        "-k",
        "test_delete_is_true_once_then_false",
        "--ccvault-allow-nonconformant",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*TestProviderContract: NOT CONFORMANT*"])


def test_required_tests_skipped_by_the_fixture_are_incomplete(lean: LeanPytester) -> None:
    source = HEADER + textwrap.dedent(
        """
        class TestNoServer(ProfileStoreContract):
            provider_name = "inmemory"

            @pytest.fixture
            async def store(self):
                pytest.skip("database server not reachable")
                yield None
        """
    )
    result = lean.run_module(source)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # all skipped, none passed: not a pass
    result.stdout.fnmatch_lines(
        [
            "*TestNoServer: INCOMPLETE*",
            "*0 of * required ran*",
            "*skipped * REQUIRED: database server not reachable*",
        ]
    )
    result.stdout.no_fnmatch_line("*TestNoServer: CONFORMANT*")


def test_forgetting_the_store_fixture_fails_clearly(lean: LeanPytester) -> None:
    source = HEADER + textwrap.dedent(
        """
        class TestNoStore(ProfileStoreContract):
            provider_name = "inmemory"
        """
    )
    result = lean.run_module(source, "-k", "test_delete_unknown_is_false")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*must override the `store` fixture*"])


# ------------------------------------------------------------------------------------------
# the second instance
# ------------------------------------------------------------------------------------------


def test_forgetting_other_store_fails_the_cross_instance_tests(lean: LeanPytester) -> None:
    result = lean.run_module(_module(other_store=False), "-k", "concurrent_get_or_create")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) >= 1 and "passed" not in outcomes, outcomes
    result.stdout.fnmatch_lines(
        ["*must override the `other_store` fixture*", "*TestProviderContract: NOT CONFORMANT*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_other_store_may_not_be_the_store_itself(lean: LeanPytester) -> None:
    body = """
    @pytest.fixture
    async def other_store(self, store):
        yield store
    """
    result = lean.run_module(_module(body, other_store=False), "-k", LOCKSTEP_KILLER)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*other_store returned the `store` object itself*"])


def test_single_instance_is_declared_and_reported(lean: LeanPytester) -> None:
    body = 'single_instance = "data lives in this process only"'
    result = lean.run_module(
        _module(body, other_store=False), "-k", "concurrent_get_or_create or isolation"
    )
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: INCOMPLETE*",
            "*single instance (data lives in this process only): * cross-instance tests ran*",
        ]
    )


def test_a_per_process_lock_is_not_conformant_in_class_mode(
    lean: LeanPytester, pytester: pytest.Pytester
) -> None:
    """The per-process lock passes the race with one instance, and fails it with two."""
    register_provider(pytester.path, "lockstep", LOCKSTEP_PROVIDER)
    source = HEADER + textwrap.dedent(
        """
        from lockstep_provider import LockstepStore


        class TestLockstepOneInstance(ProfileStoreContract):
            provider_name = "lockstep"
            single_instance = "the control: one instance serialises the race away"

            @pytest.fixture
            async def store(self):
                async with LockstepStore("one") as store:
                    yield store


        class TestLockstepContract(ProfileStoreContract):
            provider_name = "lockstep"

            @pytest.fixture
            async def store(self):
                async with LockstepStore("two") as store:
                    yield store

            @pytest.fixture
            async def other_store(self, store):
                async with LockstepStore("two") as other:
                    yield other
        """
    )
    result = lean.run_module(source, "-rfp", "-k", LOCKSTEP_KILLER)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [f"PASSED test_provider.py::TestLockstepOneInstance::{LOCKSTEP_KILLER}"]
    )
    result.stdout.fnmatch_lines(
        [f"FAILED test_provider.py::TestLockstepContract::{LOCKSTEP_KILLER}*"]
    )
    result.stdout.fnmatch_lines(["*TestLockstepContract: NOT CONFORMANT*"])


EXAMPLE_TESTS = Path(__file__).resolve().parents[2] / "examples" / "thirdparty_provider" / "tests"

#: Turns the ACME example's store into one with a per-process lock over shared data, before
#: the example's own (unchanged) test module imports it.
PER_PROCESS_ACME = """
import asyncio

import acme_vault_store


class PerProcessLockAcme(acme_vault_store.AcmeProfileStore):
    def __init__(self, **options):
        super().__init__(**options)
        self._process_lock = asyncio.Lock()

    def share_state_with(self, other):
        # the same data, NOT the same locks: those stay per process
        self._tenants, self._seq = other._tenants, other._seq

    async def _get_or_create(self, tenant_id, candidate):
        async with self._process_lock:  # one caller at a time - in this process
            identity = candidate.channel_identities[0]
            found = await self._get_by_channel_identity(
                tenant_id, identity.channel, identity.channel_user_id, False
            )
            await asyncio.sleep(0)  # a round trip to the shared server
            if found is not None:
                return found
            await self._save(candidate)
            return candidate


acme_vault_store.AcmeProfileStore = PerProcessLockAcme
"""


def test_a_per_process_lock_is_not_conformant_in_the_examples_own_test(
    lean: LeanPytester,
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(PER_PROCESS_ACME)
    pytester.makepyfile(test_contract=(EXAMPLE_TESTS / "test_contract.py").read_text())
    result = lean.run("-k", LOCKSTEP_KILLER)
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*TestAcmeContract: NOT CONFORMANT*"])


# ------------------------------------------------------------------------------------------
# verdicts: INCOMPLETE, the gate, the JSON report, xdist
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "narrowing",
    [
        ("-k", "test_delete_unknown_is_false"),
        ("--deselect", "test_provider.py::TestProviderContract::test_delete_unknown_is_false"),
        ("test_provider.py::TestProviderContract::test_delete_unknown_is_false",),
    ],
    ids=["keyword", "deselect", "node-id"],
)
def test_a_narrowed_run_is_incomplete_and_fails_the_gate(
    lean: LeanPytester, pytester: pytest.Pytester, narrowing: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_provider=_module())
    args = narrowing
    if narrowing[0] == "--deselect":
        # everything but one test: still not the whole suite
        args = (*args, "-k", "test_delete")
    result = lean.run(*args)
    assert "failed" not in result.parseoutcomes()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*TestProviderContract: INCOMPLETE*",
            "* of * required ran*",
            "*required tests did not run*",
            "*contract gate: 1 of 1 classes not CONFORMANT; the run fails "
            "(--ccvault-allow-incomplete for a deliberately partial run)*",
        ]
    )
    result.stdout.no_fnmatch_line("*TestProviderContract: CONFORMANT*")


def test_allow_incomplete_keeps_a_narrowed_run_green(lean: LeanPytester) -> None:
    result = lean.run_module(_module(), "-k", "test_delete", "--ccvault-allow-incomplete")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*TestProviderContract: INCOMPLETE*"])


def _report(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    assert document["format"] == "ccvault-contract-report/1"
    assert document["contract_version"] == "0.2"
    for entry in document["classes"]:
        counts = entry["counts"]
        assert counts["ran"] <= counts["expected"]
        assert len(entry["tests"]) >= counts["ran"]
        for test in entry["tests"]:
            assert set(test) >= {"id", "name", "required", "outcome", "reason", "duration"}
            assert test["outcome"] in {"passed", "failed", "error", "skipped", "xfailed"}
    return document


def test_the_json_report_is_written(lean: LeanPytester, pytester: pytest.Pytester) -> None:
    """Narrowed (the full CONFORMANT report is checked by the zero-code full run)."""
    _plain(pytester, '{"large_values"}')
    report = pytester.path / "out" / "conformance.json"
    result = lean.run_module(
        _module(provider="plain"),
        "-k",
        "get_or_create or mebibyte or nul_",
        "--ccvault-report",
        str(report),
        "--ccvault-allow-incomplete",
    )
    result.stdout.fnmatch_lines(["*TestProviderContract: INCOMPLETE", "*conformance report*"])
    assert result.ret == pytest.ExitCode.OK
    document = _report(report)
    assert document["conformant"] is False and document["exit_status"] == 0
    (entry,) = document["classes"]
    assert entry["class"] == "test_provider.TestProviderContract"
    assert entry["provider"] == "plain" and entry["distribution"] == "plain-provider"
    assert entry["provider_version"] == "0.1" and entry["capabilities"] == ["large_values"]
    assert entry["verdict"] == "INCOMPLETE" and entry["single_instance"] is None
    counts = entry["counts"]
    assert 5 <= counts["ran"] == counts["passed"] < counts["expected"]
    assert counts["expected"] > 300 and counts["failed"] == 0
    assert counts["skipped_undeclared_capability"] >= 1
    assert counts["cross_instance_ran"] >= 2
    outcomes = {test["outcome"] for test in entry["tests"]}
    assert outcomes == {"passed", "skipped"}
    assert len({test["id"] for test in entry["tests"]}) == len(entry["tests"])
    skipped = [t for t in entry["tests"] if t["outcome"] == "skipped"]
    assert all("lacks optional capability" in t["reason"] for t in skipped)


def test_verdicts_and_report_under_xdist(lean: LeanPytester, pytester: pytest.Pytester) -> None:
    """The workers collect and run; the controller's verdict and report cover the whole run."""
    pytester.makepyfile(
        test_provider=_module(
            'known_gaps = {"test_delete_is_true_once_then_false": "not built yet"}',
            store_class="BrokenDeleteStore",
            extra=BROKEN_DELETE,
        )
    )
    serial = pytester.path / "serial.json"
    parallel = pytester.path / "parallel.json"
    first = lean.run("-k", "test_delete or get_or_create", "--ccvault-report", serial)
    second = lean.run(
        "-n",
        "2",
        "-k",
        "test_delete or get_or_create",
        "--ccvault-report",
        parallel,
    )
    for result in (first, second):
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*TestProviderContract: NOT CONFORMANT*"])
    one, two = _report(serial)["classes"], _report(parallel)["classes"]
    assert [c["counts"] for c in one] == [c["counts"] for c in two]
    assert [c["verdict"] for c in two] == ["NOT_CONFORMANT"]
    assert sorted((t["id"], t["outcome"]) for t in one[0]["tests"]) == sorted(
        (t["id"], t["outcome"]) for t in two[0]["tests"]
    )


def test_suite_test_ids_are_deterministic(lean: LeanPytester, pytester: pytest.Pytester) -> None:
    """pytest-xdist requires every worker to collect the same ids in the same order."""
    pytester.makepyfile(test_provider=_module())
    runs = [lean.run("--collect-only", "-q") for _ in range(2)]
    ids = [[line for line in run.outlines if "::" in line] for run in runs]
    assert len(ids[0]) > 300 and ids[0] == ids[1]
    assert runs[0].ret == pytest.ExitCode.OK  # collecting is not a verdict


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
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner, *rest):
                tenant = self._tenant(tenant_id)
                for row in tenant.fields.values():
                    if row.profile_id == target_id:
                        row.profile_id = source_id   # moved before checking the source
                self._live(tenant, source_id)
                await super()._merge_profiles(tenant_id, source_id, target_id, choose_winner, *rest)
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
            async def _merge_profiles(self, tenant_id, source_id, target_id, choose_winner, *rest):
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
#: also run single-instance, where its killer must pass: only the second instance exposes it.
SHARED_DATA_MUTANTS = frozenset({"instance_local_lock", "merge_moves_a_snapshot"})


@pytest.fixture(scope="module")
def mutant_run(tmp_path_factory: pytest.TempPathFactory, mutant_project: MutantProject) -> str:
    """One pytest session over every mutant, each limited to the test that must kill it."""
    parts = [HEADER]
    selections = []
    for mutant, (code, killer) in sorted(MUTANTS.items()):
        cls = mutant_project.class_name(mutant)
        body = textwrap.dedent(code).replace("class Mutant(", f"class {cls}Store(")
        parts.append(body)
        parts.append(
            textwrap.dedent(
                f"""
                class {cls}(ProfileStoreContract):
                    provider_name = "inmemory"
                    single_instance = "the control run: one instance"

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
                        single_instance = None

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
    return mutant_project.pytest(tmp_path_factory.mktemp("mutants"), parts, selections)


@pytest.mark.xdist_group("contract-mutants")  # one mutant session, on one worker
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_suite_catches_a_broken_store(
    mutant_run: str, mutant: str, mutant_project: MutantProject
) -> None:
    _, killer = MUTANTS[mutant]
    cls = mutant_project.class_name(mutant)
    if mutant in SHARED_DATA_MUTANTS:
        # one instance serialises the race away; the second instance over the data exposes it
        assert f"PASSED test_mutants.py::{cls}::{killer}" in mutant_run, mutant_run[-5000:]
        cls += "SharedData"
    assert f"FAILED test_mutants.py::{cls}::{killer}" in mutant_run, mutant_run[-5000:]
    assert f"test_mutants.{cls}: NOT CONFORMANT" in mutant_run, mutant_run[-5000:]
