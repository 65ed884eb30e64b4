"""``get_missing_fields`` and ``find_missing_fields`` take shortcuts on their hot path (issue
13): attributes read once into locals, the unexpired fields and their values gathered in one
pass, a condition's ``name <op> constant`` compiled to one closure, the profile's fields
checked by subscripts in the common case. Whatever the requirements, definitions, fields and
rules, they answer exactly what the plain reference evaluation below (the evaluation as
first written) answers, in the same order, and refuse exactly what the full check refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccvault import errors
from ccvault.arguments import _check_read_field, check_read_fields
from ccvault.models import (
    CustomerProfile,
    ItemStatus,
    ProfileField,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
)
from ccvault.requirements import (
    condition_holds,
    field_check,
    find_missing_checked,
    find_missing_fields,
)
from ccvault.store import StoreRules
from ccvault_inmemory import InMemoryProfileStore

TENANT, SCENARIO = uuid4(), uuid4()
AGENTS = (uuid4(), uuid4())
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NAMES = ("a", "b", "c", "d")
CONDITIONS = (
    None,
    "",
    "   ",
    "a == 1",
    'b != "x"',
    "a > 0 and c",
    "a >= 1 or b == 'y'",
    "unknown == 1",
    "c is None",
    "d in [1, 2]",
    "a < b",
    "a ** 2 > 1",  # stored before the rules refused it: never holds
)


def _reference(
    fields: dict[str, ProfileField],
    requirements: list[ScenarioFieldRequirement],
    definitions: dict[str, ProfileFieldDefinition],
    rules: StoreRules,
    required_level: RequiredLevel | None,
    now: datetime,
) -> list[ScenarioFieldRequirement]:
    """The evaluation as first written (stale warnings aside: they change no answer)."""
    values = {name: item.value for name, item in fields.items()}
    missing = []
    for requirement in requirements:
        if required_level is not None and requirement.required_level is not required_level:
            continue
        if not condition_holds(requirement.when_condition, values):
            continue
        if any(name not in fields for name in requirement.depends_on_fields):
            continue
        field = fields.get(requirement.field_name)
        if field is None or field.is_expired(now):
            missing.append(requirement)
            continue
        definition = definitions.get(requirement.field_name)
        if definition is not None and definition.required_verification and not field.verified:
            missing.append(requirement)
            continue
        if rules.stale_field_action == "ignore":
            continue
        freshness = rules.default_freshness_seconds
        if definition is not None and definition.freshness_seconds is not None:
            freshness = definition.freshness_seconds
        stale = freshness and (now - field.collected_at).total_seconds() > freshness
        if stale and rules.stale_field_action == "block":
            missing.append(requirement)
    return missing


SECONDS = st.sampled_from([-(10**6), -3_600, -61, -60, -59, -1, 0, 1, 3_600])
VALUES = st.sampled_from([None, 0, 1, 2, -1, "x", "y", True, False, [1], 1.5])


@st.composite
def profile_fields(draw: st.DrawFn) -> dict[str, ProfileField]:
    fields = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        expires = draw(st.none() | SECONDS)
        fields[name] = ProfileField(
            name=name,
            value=draw(VALUES),
            verified=draw(st.booleans()),
            collected_at=NOW + timedelta(seconds=draw(SECONDS)),
            expires_at=None if expires is None else NOW + timedelta(seconds=expires),
        )
    return fields


@st.composite
def requirement_sets(draw: st.DrawFn) -> list[ScenarioFieldRequirement]:
    return [
        ScenarioFieldRequirement.model_construct(  # stored conditions need not parse
            id=uuid4(),
            tenant_id=TENANT,
            agent_id=draw(st.sampled_from(AGENTS)),
            scenario_id=SCENARIO,
            field_name=draw(st.sampled_from(NAMES)),
            required_level=draw(st.sampled_from(list(RequiredLevel))),
            when_condition=draw(st.sampled_from(CONDITIONS)),
            depends_on_fields=draw(st.lists(st.sampled_from(NAMES), max_size=2)),
            collection_order=draw(st.integers(0, 3)),
        )
        for _ in range(draw(st.integers(0, 12)))
    ]


@st.composite
def definition_sets(draw: st.DrawFn) -> dict[UUID, list[ProfileFieldDefinition]]:
    return {
        agent: [
            ProfileFieldDefinition(
                tenant_id=TENANT,
                agent_id=agent,
                name=name,
                required_verification=draw(st.booleans()),
                freshness_seconds=draw(st.sampled_from([None, 0, 60, 10**6])),
                enabled=draw(st.booleans()),
            )
            for name in draw(st.lists(st.sampled_from(NAMES), unique=True))
        ]
        for agent in AGENTS
    }


RULES = st.builds(
    StoreRules,
    default_freshness_seconds=st.sampled_from([0, 60, 10**6]),
    stale_field_action=st.sampled_from(["warn", "block", "ignore"]),
)
LEVELS = st.sampled_from([None, *RequiredLevel])


@settings(max_examples=300, deadline=None)
@given(profile_fields(), requirement_sets(), definition_sets(), RULES, LEVELS)
def test_find_missing_fields_agrees_with_the_reference(
    fields: dict[str, ProfileField],
    requirements: list[ScenarioFieldRequirement],
    definitions: dict[UUID, list[ProfileFieldDefinition]],
    rules: StoreRules,
    level: RequiredLevel | None,
) -> None:
    by_name = {d.name: d for d in definitions[AGENTS[0]]}
    expected = _reference(fields, requirements, by_name, rules, level, NOW)
    context: dict[str, Any] = {
        "tenant_id": TENANT,
        "profile_id": None,
        "rules": rules,
        "required_level": level,
        "now": NOW,
    }
    found = find_missing_fields(fields, requirements, by_name, **context)
    assert [id(r) for r in found] == [id(r) for r in expected]
    # what get_missing_fields calls: the values gathered and the definitions reduced to
    # their checks by the caller
    values = {name: item.value for name, item in fields.items()}
    checks = {
        name: field_check(d.required_verification, d.freshness_seconds)
        for name, d in by_name.items()
    }
    again = find_missing_checked(fields, values, requirements, checks, **context)
    assert [id(r) for r in again] == [id(r) for r in expected]


class _Served(InMemoryProfileStore):
    """Serves the given requirements and definitions at a fixed moment."""

    def __init__(self, rules: StoreRules, served: Any) -> None:
        super().__init__(rules=rules)
        self.served = served

    def now(self) -> datetime:
        return NOW

    async def _get_requirements_with_definitions(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> Any:
        return self.served


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile_fields(), requirement_sets(), definition_sets(), RULES, LEVELS)
def test_get_missing_fields_agrees_with_the_reference(
    fields: dict[str, ProfileField],
    requirements: list[ScenarioFieldRequirement],
    definitions: dict[UUID, list[ProfileFieldDefinition]],
    rules: StoreRules,
    level: RequiredLevel | None,
) -> None:
    profile = CustomerProfile(tenant_id=TENANT, fields=fields)
    store = _Served(rules, (list(requirements), definitions))
    found = asyncio.run(
        store.get_missing_fields(
            TENANT, profile, SCENARIO, required_level=None if level is None else level.value
        )
    )
    # the reference: in collection order, each requirement judged by its own agent's
    # enabled definitions, over the unexpired fields
    live = {name: item for name, item in fields.items() if not item.is_expired(NOW)}
    ordered = sorted(requirements, key=lambda r: (r.collection_order, r.field_name))
    expected = [
        req
        for req in ordered
        if _reference(
            live,
            [req],
            {d.name: d for d in definitions[req.agent_id] if d.enabled},
            rules,
            level,
            NOW,
        )
    ]
    assert [id(r) for r in found] == [id(r) for r in expected]


# ---------------------------------------------------------------------------------------
# check_read_fields: the common case by subscripts, everything else the full check
# ---------------------------------------------------------------------------------------

_ODD = object()
ATTRIBUTE_VALUES: dict[str, list[Any]] = {
    "name": ["email", "phone", None, 3],
    "status": [ItemStatus.ACTIVE, ItemStatus.SUPERSEDED, "active", None],
    "verified": [True, False, 1, None],
    "collected_at": [
        NOW,
        NOW.astimezone(timezone(timedelta(hours=2))),
        NOW.replace(tzinfo=None),
        "2026-01-01",
        None,
    ],
    "expires_at": [None, NOW, NOW.astimezone(timezone(timedelta(hours=-5))), 12],
    "value": ["text", 1, 2.5, None, True, {"k": [1, "x"]}, float("nan"), _ODD, 2**80],
}


def _full_check(key: str, item: Any) -> str | None:
    """What the full check of one version says: None (it passes) or its message."""
    try:
        _check_read_field(key, item, "profile")
    except errors.ValidationError as exc:
        return str(exc)
    return None


_DELETED = object()  # the attribute left out (model_construct, or an edit of __dict__)


def test_read_fields_fast_path_agrees_with_the_full_check() -> None:
    # every change of one or two attributes of a valid version, each to every listed value
    # or left out: refused with the full check's message, or passed as it is
    changes = [
        (name, value) for name, values in ATTRIBUTE_VALUES.items() for value in [*values, _DELETED]
    ]
    cases = [[change] for change in changes] + [
        [first, second]
        for i, first in enumerate(changes)
        for second in changes[i + 1 :]
        if first[0] != second[0]
    ]
    refused = 0
    for case in cases:
        item = ProfileField(name="email", value="a@example.com", collected_at=NOW)
        for name, value in case:
            if value is _DELETED:
                del item.__dict__[name]
            else:
                item.__dict__[name] = value
        profile = CustomerProfile.model_construct(tenant_id=TENANT, fields={"email": item})
        expected = _full_check("email", item)
        try:
            snapshot = check_read_fields(profile)
        except errors.ValidationError as exc:
            assert str(exc) == expected, case
            refused += 1
        else:
            assert expected is None, case
            assert snapshot == {"email": item} and snapshot["email"] is item
    assert 0 < refused < len(cases)


def test_read_fields_takes_a_subclass_through_the_full_check() -> None:
    class Special(ProfileField):
        pass

    item = Special(name="email", value="a@example.com", collected_at=NOW)
    profile = CustomerProfile.model_construct(tenant_id=TENANT, fields={"email": item})
    assert check_read_fields(profile) == {"email": item}
    item.__dict__["verified"] = "no"
    with pytest.raises(errors.ValidationError, match="wrong type"):
        check_read_fields(profile)


# ---------------------------------------------------------------------------------------
# FieldCheck: what get_missing_fields reads of a definition
# ---------------------------------------------------------------------------------------


def test_field_checks_are_shared_and_only_of_enabled_definitions() -> None:
    from ccvault.requirements import FieldCheck, checks_of

    assert field_check(True, None) is field_check(True, None) == FieldCheck(True, None)
    assert field_check(False, 60) is field_check(False, 60) == FieldCheck(False, 60)
    assert field_check(True, 60) == (True, 60) != field_check(False, 60)
    assert type(field_check(1, 0).required_verification) is bool  # type: ignore[arg-type]
    on = ProfileFieldDefinition(
        tenant_id=TENANT, agent_id=AGENTS[0], name="a", required_verification=True
    )
    off = ProfileFieldDefinition(tenant_id=TENANT, agent_id=AGENTS[0], name="b", enabled=False)
    idle = ProfileFieldDefinition(
        tenant_id=TENANT, agent_id=AGENTS[1], name="a", enabled=False, freshness_seconds=5
    )
    assert checks_of({AGENTS[0]: [on, off], AGENTS[1]: [idle]}) == {
        AGENTS[0]: {"a": FieldCheck(True, None)}
    }
