"""Conditions run as closures compiled once from the checked tree (``requirements._compile``);
they must agree with the reference tree walk (``requirements._evaluate``) on every input,
the hardened limits included. And ``get_missing_fields`` reads only a profile's ACTIVE
fields: a profile handed in with history, or one whose fields are not what the models
allow, is judged (or refused) without copying the rest."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors, requirements
from ccvault.arguments import check_read_fields, check_read_profile
from ccvault.models import Channel, CustomerProfile, ProfileField, ScenarioFieldRequirement
from ccvault.requirements import compile_condition
from ccvault_contract_tests.helpers import make_field, ts
from ccvault_inmemory import InMemoryProfileStore

EXPRESSIONS = [
    "x == y",
    # two names against constants, ordered: the fused two-part path, which raises inside
    "x < 2 and y >= 1",
    'x > "a" and y <= 3',
    "x != y and y != z",
    "x or y or z",
    "x and y and z",
    "not x",
    "not not y",
    "x < y",
    "1 < x < 100",
    "x <= y <= z",
    "x > y",
    "x >= 1",
    "x + y == z",
    "x - y > 0",
    "x * y > 1",
    "x * x * x * x * x * x * x > 1",
    "x / y > 1",
    "x // y > 1",
    "x % y == 0",
    "-x < 0",
    "+x > 0",
    "x in y",
    "x not in y",
    "x in [1, 2, 'a']",
    "x in (1, 2)",
    "x in {1, 2}",
    "{x, y} == {1, 2}",
    "x + y in z",
    "x is None",
    "x is not None",
    "x is True",
    "(x if y else z) == 1",
    "x if y else z",
    '"a" + x == y',
    "[x, y] == z",
    "(x, y) == (1, 2)",
    "x + [1] == y",
    "(x, 1) + (y,) == z",
    "x == 1 or y == 2 and z == 3",
    "unknown == 1",
    "x or unknown",
    "x and unknown",
    "x == 2**3",  # refused at compile time (no powers): compile_condition raises
    # a name against a constant: compiled to one closure (_name_against_constant)
    'x == "a"',
    'x != "a"',
    "x < 2",
    "x <= 3.5",
    "x > 0",
    "x != None",
    "x == True",
    "x is False",
    "unknown != 1",
    "1 == x",
    'x != "a" and y != "b"',
]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    3.5,
    2**4000,
    1e308,
    float("nan"),
    "",
    "a",
    "ab",
    "x" * 9_000,
    [1, 2],
    ["x"] * 9_000,
    (1, 2),
    {"k": "v"},
    [None, 1, "a"],
]


def _reference(tree: Any, values: dict[str, Any]) -> bool:
    try:
        return bool(requirements._evaluate(tree, values))
    except (
        requirements._Undefined,
        TypeError,
        ValueError,
        ArithmeticError,
        RecursionError,
    ):
        return False


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_compiled_conditions_agree_with_the_reference_walk(expression: str) -> None:
    try:
        compiled = compile_condition(expression)
    except errors.ValidationError:
        return  # refused conditions never run
    small = [None, True, 0, 1, 2, -1, 3.5, "", "a", "ab", [1, 2], (1, 2), {"k": "v"}]
    for x, y, z in itertools.product(small, repeat=3):
        values = {"x": x, "y": y, "z": z}
        assert compiled.holds(values) is _reference(compiled.tree, values), values
    for x, y in itertools.product(VALUES, repeat=2):
        for z in (None, 1, "a", [x, y], (x, 1, y)):
            values = {"x": x, "y": y, "z": z}
            assert compiled.holds(values) is _reference(compiled.tree, values)
    assert compiled.holds({}) is _reference(compiled.tree, {})


@pytest.mark.parametrize(
    ("expression", "fast"),
    [
        ("x == 1", True),
        ('x != "a"', True),
        ("x is None", True),
        ("x in [1]", False),
        ("1 == x", False),
        ("x == y", False),
        ("0 < x < 2", False),
    ],
)
def test_a_name_against_a_constant_runs_as_one_closure(expression: str, fast: bool) -> None:
    run = compile_condition(expression)._run  # type: ignore[attr-defined]
    assert (run.__name__ == "name_against_constant") is fast


def test_each_condition_is_compiled_once() -> None:
    text = f"x == {uuid4().int % 1000}"
    first = compile_condition(text)
    assert compile_condition(text) is first
    info = compile_condition.cache_info()
    assert info.maxsize is not None and info.maxsize <= 4096  # bounded


# ---------------------------------------------------------------------------------------
# what get_missing_fields reads of the profile handed in
# ---------------------------------------------------------------------------------------


def test_read_profile_checks_type_and_tenant_only() -> None:
    with pytest.raises(errors.ValidationError):
        check_read_profile({"tenant_id": uuid4()})
    with pytest.raises(errors.ValidationError):
        check_read_profile(CustomerProfile.model_construct(tenant_id="t"))
    profile = CustomerProfile(tenant_id=uuid4())
    assert check_read_profile(profile) is profile  # not copied


@pytest.mark.parametrize(
    "broken",
    [
        {"fields": {"email": "not a field"}},
        {"fields": {"email": ProfileField(name="phone", value="1")}},
        {"fields": ["not", "a", "mapping"]},
    ],
)
def test_read_fields_refuse_what_models_would_not_hold(broken: dict[str, Any]) -> None:
    profile = CustomerProfile.model_construct(tenant_id=uuid4(), **broken)
    with pytest.raises(errors.ValidationError):
        check_read_fields(profile)


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("status", "active"),
        ("verified", "yes"),
        ("collected_at", "yesterday"),
        ("collected_at", ts().replace(tzinfo=None)),
        ("expires_at", 12),
        ("value", object()),
        ("value", {"k": float("inf")}),
    ],
)
def test_read_fields_refuse_a_field_of_the_wrong_types(attribute: str, value: Any) -> None:
    item = make_field("email", "a@example.com")
    item.__dict__[attribute] = value
    profile = CustomerProfile(tenant_id=uuid4())
    profile.__dict__["fields"] = {"email": item}
    with pytest.raises(errors.ValidationError) as raised:
        check_read_fields(profile)
    assert "a@example.com" not in str(raised.value)


async def test_history_is_not_read_and_expired_fields_are_missing() -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    async with InMemoryProfileStore() as store:
        person = await store.get_or_create(tenant, Channel.WEB, "gmf-history")
        await store.update_field(tenant, person.id, make_field("email", "a@example.com"))
        await store.update_field(
            tenant,
            person.id,
            make_field("phone", "+1555", expires_at=ts(3600), collected_at=ts(-10)),
        )
        for order, name in enumerate(["email", "phone", "passport"]):
            await store.save_scenario_requirement(
                ScenarioFieldRequirement(
                    tenant_id=tenant,
                    agent_id=agent,
                    scenario_id=scenario,
                    field_name=name,
                    collection_order=order,
                    when_condition='email != "nobody"' if name == "passport" else None,
                )
            )
        full = await store.get_by_id(tenant, person.id, include_history=True)
        assert full is not None and full.field_history
        # history holding what no model allows is never looked at
        full.__dict__["field_history"] = {"email": ["not a version"]}
        missing = await store.get_missing_fields(tenant, full, scenario)
        assert [r.field_name for r in missing] == ["passport"]
        # an ACTIVE field past its expires_at counts as missing (read as EXPIRED)
        later = store.now() + timedelta(hours=2)
        store.now = lambda: later  # type: ignore[method-assign]
        missing = await store.get_missing_fields(tenant, full, scenario)
        assert [r.field_name for r in missing] == ["phone", "passport"]
        # another tenant's profile: nothing applies
        assert await store.get_missing_fields(uuid4(), full, scenario) == []
        with pytest.raises(errors.ValidationError):
            await store.get_missing_fields(tenant, {"fields": {}}, scenario)  # type: ignore[arg-type]
