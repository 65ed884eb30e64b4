"""``get_missing_fields`` on SQLite (issue 13): one statement on the read connection reads
the requirements and their agents' enabled definitions, and requirement rows in the vault's
own form (an empty ``depends_on_fields`` included) are built without re-validation."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ccvault import errors
from ccvault.models import Channel, ProfileFieldDefinition, ScenarioFieldRequirement
from ccvault.requirements import FieldCheck, checks_of
from ccvault_sqlite import SqliteProfileStore, codec


async def scenario_of_two_agents(
    store: SqliteProfileStore,
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """Returns (tenant, first agent, second agent, scenario): one requirement per agent
    (without dependencies), one enabled and one disabled definition per agent."""
    tenant, first, second, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for agent, name in ((first, "email"), (second, "phone")):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name=name)
        )
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="off", enabled=False)
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name=name
            )
        )
    return tenant, first, second, scenario


async def test_get_missing_fields_runs_one_statement(db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        tenant, first, second, scenario = await scenario_of_two_agents(store)
        profile = await store.get_or_create(tenant, Channel.WEB, "one-statement")
        statements: list[str] = []
        for connection in {id(c): c for c in (store.connection, store.read_connection)}.values():
            await connection.set_trace_callback(statements.append)
        missing = await store.get_missing_fields(tenant, profile, scenario)
        assert [(r.agent_id, r.field_name) for r in missing] == [
            (first, "email"),
            (second, "phone"),
        ]
        # one statement (the separate hooks run one for the requirements and one per agent)
        assert len(statements) == 1


async def test_combined_read_returns_what_the_separate_hooks_return(db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        tenant, first, second, scenario = await scenario_of_two_agents(store)
        requirements, definitions = await store._get_requirements_with_definitions(
            tenant, scenario, None
        )
        expected = await store._get_scenario_requirements(tenant, scenario, None)
        assert sorted(requirements, key=lambda r: r.id) == sorted(expected, key=lambda r: r.id)
        assert set(definitions) == {first, second}
        for agent in (first, second):
            assert definitions[agent] == await store._get_field_definitions(tenant, agent, True)


async def test_requirements_without_dependencies_are_built_from_trusted_rows(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteProfileStore(path=db) as store:
        tenant, _, _, scenario = await scenario_of_two_agents(store)

        def validated(row: object) -> ScenarioFieldRequirement:
            raise AssertionError("a requirement row in the vault's own form was re-validated")

        # an empty depends_on_fields is in the vault's own form: no per-row validation
        monkeypatch.setattr(codec, "_requirement_validated", validated)
        found = await store.get_scenario_requirements(tenant, scenario)
        assert [r.depends_on_fields for r in found] == [[], []]
        requirements, _ = await store._get_requirements_with_definitions(tenant, scenario, None)
        assert len(requirements) == 2


async def test_requirement_checks_agree_with_the_wide_read(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow hook (requirements + the two check columns of each one's own field's
    enabled definition, one statement, no definition model) answers what core derives from
    the wide one: flags and freshness, a disabled definition and a missing one, a step."""
    async with SqliteProfileStore(path=db) as store:
        tenant, first, second, scenario = await scenario_of_two_agents(store)
        step = uuid.uuid4()
        for agent, name, verification, freshness, enabled in (
            (first, "city", True, 60, True),
            (first, "zip", False, None, False),  # disabled: as if none
            (second, "city", False, 0, True),
        ):
            await store.save_field_definition(
                ProfileFieldDefinition(
                    tenant_id=tenant,
                    agent_id=agent,
                    name=name,
                    required_verification=verification,
                    freshness_seconds=freshness,
                    enabled=enabled,
                )
            )
        # one rule per agent: a requirement's key (step, rule, name) is the scenario's
        for agent, rule in ((first, uuid.uuid4()), (second, uuid.uuid4())):
            for name in ("city", "zip", "nowhere"):  # "nowhere": no definition at all
                for step_id in (None, step):
                    await store.save_scenario_requirement(
                        ScenarioFieldRequirement(
                            tenant_id=tenant,
                            agent_id=agent,
                            scenario_id=scenario,
                            step_id=step_id,
                            rule_id=rule,
                            field_name=name,
                            depends_on_fields=["email"],
                        )
                    )

        def validated(row: object) -> ScenarioFieldRequirement:
            raise AssertionError("a requirement row in the vault's own form was re-validated")

        for step_id in (None, step):
            wide, definitions = await store._get_requirements_with_definitions(
                tenant, scenario, step_id
            )
            with monkeypatch.context() as patch:
                patch.setattr(codec, "_requirement_validated", validated)
                narrow, checks = await store._get_requirement_checks(tenant, scenario, step_id)
            assert sorted(narrow, key=lambda r: r.id) == sorted(wide, key=lambda r: r.id)
            expected = checks_of(definitions)
            # entries for names no requirement names may differ (ignored by core)
            named = {(r.agent_id, r.field_name) for r in narrow}
            assert {
                (agent, name): check
                for agent, own in checks.items()
                for name, check in own.items()
                if (agent, name) in named
            } == {
                (agent, name): check
                for agent, own in expected.items()
                for name, check in own.items()
                if (agent, name) in named
            }
            assert checks[first]["city"] == FieldCheck(True, 60)
            assert "zip" not in checks[first] and "nowhere" not in checks[first]
            assert checks[second]["city"] == FieldCheck(False, 0)


@pytest.mark.parametrize(
    "tampering",
    ["required_verification = 2", "freshness_seconds = -1", "freshness_seconds = 'soon'"],
)
async def test_tampered_check_columns_are_refused(db: Path, tampering: str) -> None:
    async with SqliteProfileStore(path=db) as store:
        tenant, _, _, scenario = await scenario_of_two_agents(store)
        await store.connection.execute(
            f"UPDATE field_definitions SET {tampering} WHERE tenant_id = ? AND name = 'email'",
            (str(tenant),),
        )
        profile = await store.get_or_create(tenant, Channel.WEB, "tampered")
        for read in (
            lambda: store._get_requirement_checks(tenant, scenario, None),
            lambda: store.get_missing_fields(tenant, profile, scenario),
        ):
            with pytest.raises(errors.StorageError, match="field definition row is corrupt"):
                await read()
