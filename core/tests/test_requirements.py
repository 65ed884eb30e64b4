"""Missing-field evaluation, shared by every provider (pure functions, no store)."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    CustomerProfile,
    ProfileField,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
    utcnow,
)
from ccvault.requirements import check_condition, check_requirement, condition_holds, find_missing
from ccvault.store import StoreRules

TENANT, AGENT, SCENARIO = uuid4(), uuid4(), uuid4()
NOW = utcnow()


def _profile(**values: object) -> CustomerProfile:
    return CustomerProfile(
        tenant_id=TENANT,
        fields={name: ProfileField(name=name, value=value) for name, value in values.items()},
    )


def _req(name: str, **kw: object) -> ScenarioFieldRequirement:
    return ScenarioFieldRequirement(
        tenant_id=TENANT, agent_id=AGENT, scenario_id=SCENARIO, field_name=name, **kw
    )


def _missing(
    profile: CustomerProfile, reqs: list[ScenarioFieldRequirement], **kw: object
) -> list[str]:
    definitions = kw.pop("definitions", {})
    rules = kw.pop("rules", StoreRules())
    level = kw.pop("required_level", RequiredLevel.HARD)
    found = find_missing(
        profile,
        reqs,
        definitions,
        rules=rules,
        required_level=level,
        now=NOW,  # type: ignore[arg-type]
    )
    return [r.field_name for r in found]


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        (
            'order_type == "international" and age >= 18',
            {"order_type": "international", "age": 30},
            True,
        ),
        (
            'order_type == "international" and age >= 18',
            {"order_type": "international", "age": 12},
            False,
        ),
        ('order_type == "international"', {}, False),  # missing name: false, not an error
        ("age >= 18", {"age": "old"}, False),  # type error: false
        ('country in ["DE", "FR"]', {"country": "FR"}, True),
        ("not vip", {"vip": False}, True),
        ("", {}, True),
        (None, {}, True),
    ],
)
def test_condition_holds(expression: str | None, values: dict[str, object], expected: bool) -> None:
    assert condition_holds(expression, values) is expected


@pytest.mark.parametrize(
    "expression",
    [
        "age >=",  # does not parse
        "__import__('os').system('true')",  # a call
        "profile.__class__",  # attribute access
        "[x for x in range(10)]",  # comprehension
        "(lambda: 1)()",
    ],
)
def test_unsafe_or_broken_conditions_are_refused(expression: str) -> None:
    with pytest.raises(errors.ValidationError):
        check_condition(expression)
    with pytest.raises(errors.ValidationError):
        check_requirement(_req("email", when_condition=expression))


def test_requirement_cannot_depend_on_itself() -> None:
    with pytest.raises(errors.ValidationError, match="itself"):
        check_requirement(_req("email", depends_on_fields=["email"]))


def test_absent_field_is_missing_and_present_is_not() -> None:
    assert _missing(_profile(email="a@b.c"), [_req("email"), _req("dob")]) == ["dob"]


def test_expired_field_counts_as_missing() -> None:
    profile = _profile()
    profile.fields["email"] = ProfileField(
        name="email", value="a@b.c", expires_at=NOW - timedelta(seconds=1)
    )
    assert _missing(profile, [_req("email")]) == ["email"]


def test_level_filter_and_none_means_all() -> None:
    reqs = [_req("email"), _req("nickname", required_level=RequiredLevel.SOFT)]
    assert _missing(_profile(), reqs) == ["email"]
    assert _missing(_profile(), reqs, required_level=RequiredLevel.SOFT) == ["nickname"]
    assert _missing(_profile(), reqs, required_level=None) == ["email", "nickname"]


def test_when_condition_and_dependencies_gate_a_requirement() -> None:
    reqs = [
        _req("passport", when_condition='order_type == "international"'),
        _req("address", depends_on_fields=["country"]),
    ]
    assert _missing(_profile(order_type="domestic"), reqs) == []
    assert _missing(_profile(order_type="international", country="DE"), reqs) == [
        "passport",
        "address",
    ]


def test_verification_required_by_definition() -> None:
    definition = ProfileFieldDefinition(
        tenant_id=TENANT, agent_id=AGENT, name="email", required_verification=True
    )
    profile = _profile(email="a@b.c")
    assert _missing(profile, [_req("email")], definitions={"email": definition}) == ["email"]
    profile.fields["email"] = ProfileField(name="email", value="a@b.c", verified=True)
    assert _missing(profile, [_req("email")], definitions={"email": definition}) == []


@pytest.mark.parametrize(
    ("action", "expected"), [("block", ["email"]), ("warn", []), ("ignore", [])]
)
def test_stale_field_action(action: str, expected: list[str]) -> None:
    profile = _profile()
    profile.fields["email"] = ProfileField(
        name="email", value="a@b.c", collected_at=NOW - timedelta(hours=2)
    )
    rules = StoreRules(default_freshness_seconds=3600, stale_field_action=action)  # type: ignore[arg-type]
    assert _missing(profile, [_req("email")], rules=rules) == expected


def test_definition_freshness_overrides_default() -> None:
    profile = _profile()
    profile.fields["email"] = ProfileField(
        name="email", value="a@b.c", collected_at=NOW - timedelta(minutes=10)
    )
    definition = ProfileFieldDefinition(
        tenant_id=TENANT, agent_id=AGENT, name="email", freshness_seconds=60
    )
    rules = StoreRules(default_freshness_seconds=0, stale_field_action="block")
    assert _missing(profile, [_req("email")], rules=rules, definitions={"email": definition}) == [
        "email"
    ]
    never_stale = definition.model_copy(update={"freshness_seconds": 0})
    assert _missing(profile, [_req("email")], rules=rules, definitions={"email": never_stale}) == []
