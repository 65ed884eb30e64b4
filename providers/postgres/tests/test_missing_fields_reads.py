"""``get_missing_fields`` reads what it needs in one go (issue 13): the requirements and the
enabled definitions of their agents come from one statement on one pooled connection, and
are the same models the two separate hooks return."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    FallbackAction,
    FieldValueType,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SurvivorshipPolicy,
)
from ccvault_postgres import PostgresProfileStore


async def two_agents(
    store: PostgresProfileStore,
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """A scenario-wide requirement and a step's one per agent, each agent with a rich
    enabled definition, a disabled one, and one agent of the tenant with no requirement.
    Returns (tenant, first agent, second agent, scenario, step)."""
    tenant, first, second, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    scenario, step = uuid.uuid4(), uuid.uuid4()
    for agent in (first, second, idle):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant,
                agent_id=agent,
                name="plan",
                display_name="Plan",
                value_type=FieldValueType.JSON,
                allowed_values=[{"tier": "gold"}, ["basic", 3]],
                required_verification=agent == first,
                verification_methods=["otp", "email_link"],
                extraction_examples=["I am on gold"],
                is_pii=True,
                retention_days=30,
                freshness_seconds=3_600,
                survivorship=SurvivorshipPolicy.SOURCE_PRIORITY,
                source_priority=[ProfileFieldSource.TOOL_RESULT, ProfileFieldSource.USER_PROVIDED],
            )
        )
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="email", enabled=False)
        )
    for agent, name in ((first, "plan"), (second, "email")):
        for step_id in (None, step):
            await store.save_scenario_requirement(
                ScenarioFieldRequirement(
                    tenant_id=tenant,
                    agent_id=agent,
                    scenario_id=scenario,
                    step_id=step_id,
                    field_name=name,
                    required_level=RequiredLevel.HARD,
                    fallback_action=FallbackAction.BLOCK,
                    depends_on_fields=[] if name == "plan" else ["plan"],
                    when_condition='plan != "none"' if agent == second else None,
                )
            )
    return tenant, first, second, scenario, step


def count_acquisitions(store: PostgresProfileStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list counting every connection taken from the store's pool from now on."""
    pool = store._pool
    assert pool is not None
    acquire: Callable[..., Awaitable[Any]] = pool.acquire
    taken = [0]

    async def counting(*args: Any, **kwargs: Any) -> Any:
        taken[0] += 1
        return await acquire(*args, **kwargs)

    monkeypatch.setattr(pool, "acquire", counting)
    return taken


async def test_get_missing_fields_takes_one_connection_and_one_statement(
    make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: PostgresProfileStore = await make_store(min_pool_size=1, max_pool_size=1)
    tenant, first, second, scenario, step = await two_agents(store)
    created = await store.get_or_create(tenant, Channel.WEB, "one-connection")
    await store.update_field(tenant, created.id, ProfileField(name="plan", value={"t": "gold"}))
    profile = await store.get_by_id(tenant, created.id)
    assert profile is not None
    # once first: preparing the statement (and asyncpg's one-time introspection of the row
    # types) happens once per connection, not per call
    await store.get_missing_fields(tenant, profile, scenario)
    statements: list[str] = []
    async with store.connection() as conn:  # the pool's only connection
        conn.add_query_logger(lambda record: statements.append(record.query))
    taken = count_acquisitions(store, monkeypatch)
    for step_id in (None, step):
        missing = await store.get_missing_fields(tenant, profile, scenario, step_id=step_id)
        # first agent: plan needs verification; second agent: email is not set
        assert [(r.agent_id, r.field_name, r.step_id) for r in missing] == [
            (second, "email", step_id),
            (first, "plan", step_id),
        ]
    # two calls, two connections and two statements (the separate hooks would take one
    # connection and run one statement for the requirements and one per agent)
    assert taken[0] == 2
    assert len(statements) == 2


async def test_combined_read_returns_what_the_separate_hooks_return(
    store: PostgresProfileStore,
) -> None:
    tenant, first, second, scenario, step = await two_agents(store)
    for step_id in (None, step):
        requirements, definitions = await store._get_requirements_with_definitions(
            tenant, scenario, step_id
        )
        expected = await store._get_scenario_requirements(tenant, scenario, step_id)
        assert sorted(requirements, key=lambda r: r.id) == sorted(expected, key=lambda r: r.id)
        assert {r.step_id for r in requirements} == {step_id}
        # exactly the requirements' agents, enabled definitions only
        assert set(definitions) == {first, second}
        for agent in (first, second):
            alone = await store._get_field_definitions(tenant, agent, True)
            assert [d.name for d in definitions[agent]] == ["plan"]
            assert definitions[agent] == alone
            for item in [*definitions[agent], *requirements]:
                # trusted rows equal what pydantic validates from the same data
                again = type(item).model_validate(item.model_dump())
                assert again == item
                assert item.model_dump() == again.model_dump()
                for name, value in again.__dict__.items():
                    stored = item.__dict__[name]
                    assert isinstance(stored, type(value)) or isinstance(value, type(stored)), name


async def test_combined_read_of_an_unknown_scenario_is_empty(
    store: PostgresProfileStore,
) -> None:
    tenant, _, _, _, _ = await two_agents(store)
    assert await store._get_requirements_with_definitions(tenant, uuid.uuid4(), None) == ([], {})
    # another tenant sees nothing of this one
    assert await store._get_requirements_with_definitions(uuid.uuid4(), uuid.uuid4(), None) == (
        [],
        {},
    )


class _OwnUUID(uuid.UUID):
    """A caller's UUID subclass: the models hold plain UUIDs all the same."""


async def test_combined_read_fills_the_fixed_columns_from_its_parameters(
    store: PostgresProfileStore,
) -> None:
    # the statement does not read tenant_id, scenario_id and step_id (its WHERE fixes them):
    # the models have them, in the model's field order, as plain UUIDs
    tenant, first, second, scenario, step = await two_agents(store)
    for step_id in (None, step):
        requirements, definitions = await store._get_requirements_with_definitions(
            _OwnUUID(int=tenant.int),
            _OwnUUID(int=scenario.int),
            None if step_id is None else _OwnUUID(int=step_id.int),
        )
        assert len(requirements) == 2
        items: list[Any] = [*requirements, *definitions[first], *definitions[second]]
        for item in items:
            assert list(item.__dict__) == list(type(item).model_fields)
            assert item.tenant_id == tenant and type(item.tenant_id) is uuid.UUID
        for requirement in requirements:
            assert requirement.scenario_id == scenario
            assert type(requirement.scenario_id) is uuid.UUID
            assert requirement.step_id == step_id
            assert step_id is None or type(requirement.step_id) is uuid.UUID


def test_row_builder_refuses_keys_it_cannot_fill() -> None:
    from ccvault_postgres import store as module

    with pytest.raises(ValueError, match="one column or one fixed value"):
        module._row_builder(("a", "b"), ("a",), 1, (), {})
    with pytest.raises(ValueError, match="one column or one fixed value"):
        module._row_builder(("a",), ("a",), 1, ("a",), {})
    with pytest.raises(ValueError, match="identifier"):
        module._row_builder(("a b",), ("a b",), 1, (), {})
    build = module._row_builder(("a", "b", "c"), ("c", "a"), 2, ("b",), {"c": "[{0}]"})
    assert build((None, None, 3, 1), "fixed") == {"a": 1, "b": "fixed", "c": [3]}
    assert list(build((None, None, 3, 1), "fixed")) == ["a", "b", "c"]


async def test_combined_read_returns_each_definition_once(store: PostgresProfileStore) -> None:
    # the statement pairs each requirement with its field's definition: a definition named
    # by two requirements (two rules), or by none, still comes back exactly once
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for name in ("plan", "email", "phone"):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name=name)
        )
    for rule_id in (None, uuid.uuid4(), uuid.uuid4()):
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant,
                agent_id=agent,
                scenario_id=scenario,
                rule_id=rule_id,
                field_name="plan",
            )
        )
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="nickname"
        )
    )
    requirements, definitions = await store._get_requirements_with_definitions(
        tenant, scenario, None
    )
    assert sorted(r.field_name for r in requirements) == ["nickname", "plan", "plan", "plan"]
    assert len({r.id for r in requirements}) == 4
    assert sorted(d.name for d in definitions[agent]) == ["email", "phone", "plan"]
    alone = await store._get_field_definitions(tenant, agent, True)
    assert sorted(definitions[agent], key=lambda d: d.name) == sorted(alone, key=lambda d: d.name)


async def test_narrow_read_agrees_with_the_combined_read(store: PostgresProfileStore) -> None:
    # _get_requirement_checks: the same requirement models (fixed columns from its plain-UUID
    # parameters), and the two check values of each requirement's own enabled definition
    from ccvault.requirements import FieldCheck

    tenant, first, _, scenario, step = await two_agents(store)
    for step_id in (None, step):
        requirements, checks = await store._get_requirement_checks(
            _OwnUUID(int=tenant.int),
            _OwnUUID(int=scenario.int),
            None if step_id is None else _OwnUUID(int=step_id.int),
        )
        wide, _ = await store._get_requirements_with_definitions(tenant, scenario, step_id)
        assert sorted(requirements, key=lambda r: r.id) == sorted(wide, key=lambda r: r.id)
        for requirement in requirements:
            assert list(requirement.__dict__) == list(type(requirement).model_fields)
            for name in ("tenant_id", "scenario_id"):
                assert type(requirement.__dict__[name]) is uuid.UUID
            again = ScenarioFieldRequirement.model_validate(requirement.model_dump())
            assert again == requirement
        # first agent: "plan" needs verification; second: its "email" definition is disabled
        # (its enabled "plan" is named by no requirement: not needed, not returned)
        assert checks == {first: {"plan": FieldCheck(True, 3_600)}}
        assert type(checks[first]["plan"]) is FieldCheck


async def test_get_missing_fields_builds_no_definition_model(
    store: PostgresProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccvault_postgres import store as module

    tenant, first, _, scenario, _ = await two_agents(store)
    profile = await store.get_or_create(tenant, Channel.WEB, "no-definition-models")

    def refused(*args: Any) -> Any:
        raise AssertionError("a definition model was built")

    monkeypatch.setattr(module, "_DEFINITION_ROW", refused)
    monkeypatch.setattr(module, "_definitions_of", refused)
    missing = await store.get_missing_fields(tenant, profile, scenario)
    # an empty profile: the first agent's plan is missing; the second agent's email depends
    # on plan (and its condition names it), so it does not apply
    assert [(r.agent_id, r.field_name) for r in missing] == [(first, "plan")]


async def test_get_missing_fields_builds_models_of_the_missing_requirements_only(
    store: PostgresProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records hook judges every requirement from its row; a requirement model is built
    for the missing ones only, equal to what the requirements read returns."""
    from ccvault_postgres import store as module

    tenant, first, _, scenario, _ = await two_agents(store)
    profile = await store.get_or_create(tenant, Channel.WEB, "missing-only")
    built: list[int] = []
    build = module._requirements_of_rows

    def counting(fixed: Any, rows: list[Any]) -> Any:
        built.append(len(rows))
        return build(fixed, rows)

    monkeypatch.setattr(module, "_requirements_of_rows", counting)
    missing = await store.get_missing_fields(tenant, profile, scenario)
    assert [(r.agent_id, r.field_name) for r in missing] == [(first, "plan")]
    assert built == [1]  # of the scenario's two requirements
    stored = await store.get_scenario_requirements(tenant, scenario)
    assert missing == [r for r in stored if r.agent_id == first]
    # every requirement met: nothing built at all
    await store.update_field(
        tenant, profile.id, ProfileField(name="plan", value="gold", verified=True)
    )
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@b.example"))
    met = await store.get_by_id(tenant, profile.id)
    assert met is not None
    assert await store.get_missing_fields(tenant, met, scenario) == []
    assert built == [1]


@pytest.mark.parametrize("column", ["required_level", "fallback_action"])
async def test_a_requirement_row_written_outside_the_vault_is_refused(
    store: PostgresProfileStore, column: str
) -> None:
    """A level or fallback no member has (an UPDATE outside the vault: the column is text)
    is refused with StorageError naming the column, never its value."""
    tenant, _, _, scenario, _ = await two_agents(store)
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-requirement")
    async with store.connection() as conn:
        await conn.execute(
            f"UPDATE scenario_field_requirements SET {column} = 'secret-ish' "
            "WHERE tenant_id = $1 AND field_name = 'plan'",
            tenant,
        )
    with pytest.raises(errors.StorageError, match=column) as caught:
        await store.get_missing_fields(tenant, profile, scenario)
    assert "secret-ish" not in str(caught.value)


async def test_records_agree_with_the_checks_hook_for_varied_requirements(
    store: PostgresProfileStore,
) -> None:
    """The records hook reads level, condition, depends-on and check from its own columns:
    for requirements of both levels, with and without a condition and dependencies, of two
    agents, each record is what core derives from the checks hook, and its build is the
    requirement model."""
    from ccvault.requirements import records_of

    tenant, first, second, scenario, step = await two_agents(store)
    for level, name in ((RequiredLevel.SOFT, "nickname"), (RequiredLevel.HARD, "age")):
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant,
                agent_id=second,
                scenario_id=scenario,
                field_name=name,
                required_level=level,
                depends_on_fields=["plan", "email"],
                when_condition=f'{name} != "x"',
            )
        )
    for step_id in (None, step):
        records, build = await store._get_requirement_records(tenant, scenario, step_id)
        ours = list(records)
        requirements, checks = await store._get_requirement_checks(tenant, scenario, step_id)
        expected, _ = records_of(requirements, checks)

        def key(record: Any) -> tuple[Any, ...]:
            return (record[0], record[1], record[2], tuple(record[3]), record[4])

        assert sorted(map(key, ours), key=repr) == sorted(map(key, expected), key=repr)
        assert {r[1] for r in ours} >= ({RequiredLevel.HARD} if step_id else set(RequiredLevel))
        assert all(r[1].__class__ is RequiredLevel for r in ours)
        built = build([r[5] for r in ours])
        by_key = {(r.agent_id, r.field_name): r for r in requirements}
        assert built == [by_key[(m.agent_id, m.field_name)] for m in built]
        assert [m.field_name for m in built] == [r[0] for r in ours]
    assert first != second
