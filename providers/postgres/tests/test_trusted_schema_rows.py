"""Field definitions and scenario requirements are read back without re-validation (the
rows were validated when written; ``get_missing_fields`` reads 50 of each per call, issue
13): every one built from a row must equal the model pydantic validates from the same data,
attribute by attribute and type by type."""

from __future__ import annotations

import uuid
from typing import Any

from ccvault.models import (
    FallbackAction,
    FieldValueType,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SurvivorshipPolicy,
)
from ccvault_postgres import PostgresProfileStore


def same_as_validated(item: Any) -> None:
    again = type(item).model_validate(item.model_dump())
    assert again == item
    assert item.model_dump() == again.model_dump()
    assert item.model_fields_set == again.model_fields_set
    for name, value in again.__dict__.items():
        stored = item.__dict__[name]
        assert kind(stored) is kind(value), name
        if isinstance(value, list):
            assert [kind(x) for x in stored] == [kind(x) for x in value], name


def kind(value: Any) -> type:
    # asyncpg's UUID is a subclass of uuid.UUID; everything else must be of the same type
    return uuid.UUID if isinstance(value, uuid.UUID) else type(value)


async def test_trusted_definitions_and_requirements_equal_validated_models(
    store: PostgresProfileStore,
) -> None:
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rich = ProfileFieldDefinition(
        tenant_id=tenant,
        agent_id=agent,
        name="plan",
        display_name="Plan",
        description="which plan",
        value_type=FieldValueType.JSON,
        allowed_values=[{"plan": "basic"}, [2, 1.5, None], {"x": [True]}],
        required_verification=True,
        verification_methods=["sms", "email"],
        extraction_examples=["I want basic"],
        is_pii=True,
        retention_days=30,
        freshness_seconds=60,
        survivorship=SurvivorshipPolicy.SOURCE_PRIORITY,
        source_priority=[ProfileFieldSource.USER_PROVIDED, ProfileFieldSource.LLM_EXTRACTED],
    )
    plain = ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="email")
    for definition in (rich, plain):
        await store.save_field_definition(definition)
    step = uuid.uuid4()
    requirements = [
        ScenarioFieldRequirement(
            tenant_id=tenant,
            agent_id=agent,
            scenario_id=scenario,
            step_id=step,
            field_name="plan",
            required_level=RequiredLevel.SOFT,
            fallback_action=FallbackAction.SKIP,
            when_condition='email != "x"',
            depends_on_fields=["email"],
            collection_order=3,
        ),
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        ),
    ]
    for requirement in requirements:
        await store.save_scenario_requirement(requirement)
    definitions = await store.get_field_definitions(tenant, agent, enabled_only=False)
    assert {d.name for d in definitions} == {"plan", "email"}
    for definition in definitions:
        same_as_validated(definition)
    found = {d.name: d for d in definitions}
    assert found["plan"].model_dump(exclude={"id", "created_at", "updated_at"}) == rich.model_dump(
        exclude={"id", "created_at", "updated_at"}
    )
    for step_id in (step, None):
        for requirement in await store.get_scenario_requirements(tenant, scenario, step_id=step_id):
            same_as_validated(requirement)
    stored = await store.get_scenario_requirements(tenant, scenario, step_id=step)
    assert [r.model_dump(exclude={"created_at", "updated_at"}) for r in stored] == [
        requirements[0].model_dump(exclude={"created_at", "updated_at"})
    ]


async def test_a_models_fields_set_is_not_shared_with_another_read(
    store: PostgresProfileStore,
) -> None:
    """The fields-set of every model read back is one copy per read: a caller editing one
    model's ``model_fields_set`` changes no model of another read (it was one set for the
    whole process, so a ``model_dump(exclude_unset=True)`` of every later read lost it)."""
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="plan")
    )
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="plan"
        )
    )
    first = await store.get_field_definition(tenant, agent, "plan")
    [listed] = await store.get_field_definitions(tenant, agent)
    [requirement] = await store.get_scenario_requirements(tenant, scenario)
    assert first is not None
    for model in (first, listed, requirement):
        model.model_fields_set.discard("tenant_id")
    again = await store.get_field_definition(tenant, agent, "plan")
    [listed_again] = await store.get_field_definitions(tenant, agent)
    [requirement_again] = await store.get_scenario_requirements(tenant, scenario)
    assert again is not None
    for model in (again, listed_again, requirement_again):
        assert "tenant_id" in model.model_fields_set
        assert "tenant_id" in model.model_dump(exclude_unset=True)
