"""``when_condition``: refused at save when it does not parse or uses what a condition may
not; false (never an exception) when a field is missing or a value does not fit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors, load_settings, open_store
from ccvault.models import Channel, ProfileField, ScenarioFieldRequirement
from ccvault.requirements import check_condition, condition_holds
from ccvault.store import ProfileStore


@pytest.fixture
async def store() -> AsyncIterator[ProfileStore]:
    settings = load_settings(store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False)
    async with open_store(settings) as opened:
        yield opened


@pytest.mark.parametrize(
    "expression",
    [
        "[t for t in tags]",
        "{t for t in tags}",
        "{t: 1 for t in tags}",
        "any(t for t in tags)",
        "a @ b",
        "tags[0] == 1",
        "age >= 18 and",
        "x := 1",
    ],
)
def test_refused_expressions(expression: str) -> None:
    with pytest.raises(errors.ValidationError):
        check_condition(expression)


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        (
            'order_type == "international" and age >= 18',
            {"order_type": "international", "age": 18},
            True,
        ),
        ('order_type == "international" and age >= 18', {"order_type": "international"}, False),
        ("age >= 18", {}, False),
        ("age >= 18", {"age": None}, False),
        ("age * 2 > 10", {"age": "six"}, False),
        ("not missing_field", {}, False),
        ('"gold" in tiers', {"tiers": ["gold", "silver"]}, True),
        ("tags[0] == 1", {"tags": []}, False),  # refused at save; false if ever stored
        ("x ** 100000000 > 1", {"x": 10}, False),  # too large for simpleeval: false
    ],
)
def test_evaluation_is_false_rather_than_an_error(
    expression: str, values: dict[str, Any], expected: bool
) -> None:
    assert condition_holds(expression, values) is expected


async def test_condition_refused_at_save_and_applied_at_read(store: ProfileStore) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()

    def requirement(name: str, condition: str) -> ScenarioFieldRequirement:
        return ScenarioFieldRequirement(
            tenant_id=tenant,
            agent_id=agent,
            scenario_id=scenario,
            field_name=name,
            when_condition=condition,
        )

    with pytest.raises(errors.ValidationError):
        await store.save_scenario_requirement(requirement("passport", "country =="))
    assert await store.get_scenario_requirements(tenant, scenario) == []
    await store.save_scenario_requirement(
        requirement("passport", 'order_type == "international" and age >= 18')
    )
    profile = await store.get_or_create(tenant, Channel.WEB, "visitor-1")

    async def missing() -> list[str]:
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        found = await store.get_missing_fields(tenant, current, scenario)
        return [r.field_name for r in found]

    assert await missing() == []  # order_type and age unknown: the condition is false
    await store.update_field(
        tenant, profile.id, ProfileField(name="order_type", value="international")
    )
    assert await missing() == []
    await store.update_field(tenant, profile.id, ProfileField(name="age", value=30))
    assert await missing() == ["passport"]
