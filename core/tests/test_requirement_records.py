"""``get_missing_fields`` reads requirement *records* (``_get_requirement_records``): what the
evaluation reads of each requirement, its own FieldCheck, and a source a model is built of
only when the requirement is missing. The records and the models built of them agree with
the model path; the SQLite provider reads them from its rows, checks every value it reads
and refuses a tampered row (StorageError); the freshness cutoff and the fused conditions
answer exactly what the plain computations answer."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors, requirements
from ccvault.models import (
    Channel,
    CustomerProfile,
    ProfileField,
    ProfileFieldDefinition,
    RequiredLevel,
    ScenarioFieldRequirement,
)
from ccvault.requirements import (
    RequirementRecord,
    compile_condition,
    field_check,
    find_missing_checked,
    find_missing_records,
    records_of,
)
from ccvault.store import ForwardingProfileStore, ProfileStore, StoreRules
from ccvault_inmemory import InMemoryProfileStore
from ccvault_sqlite import SqliteProfileStore, SqliteSettings, codec
from ccvault_sqlite import store as sqlite_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TENANT = uuid4()

# ---------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------


# (a period longer than the calendar, 2**40 s, cannot have a field that old: its case, the
# cutoff not taken, is test_the_cutoff_is_exact_or_not_taken's)
@pytest.mark.parametrize("freshness", [1, 59, 60, 3_600, 2**33 - 1, 2**33])
@pytest.mark.parametrize("offset_us", [-1, 0, 1])
@pytest.mark.parametrize("action", ["block", "warn"])
def test_the_freshness_cutoff_is_the_age_in_seconds(
    freshness: int, offset_us: int, action: str
) -> None:
    # a field exactly ``freshness`` seconds old, one microsecond either side
    collected = NOW - timedelta(seconds=freshness, microseconds=offset_us)
    rules = StoreRules(default_freshness_seconds=freshness, stale_field_action=action)  # type: ignore[arg-type]
    stale = (NOW - collected).total_seconds() > freshness
    assert _missing_one(collected, rules) == (["source"] if stale and action == "block" else [])


def _missing_one(collected: datetime, rules: StoreRules) -> list[Any]:
    """find_missing_records of one hard requirement on field "a", collected then."""
    field = ProfileField(name="a", value="x", collected_at=collected)
    record = RequirementRecord("a", RequiredLevel.HARD, None, (), None, "source")
    return find_missing_records(
        {"a": field},
        {"a": "x"},
        [record],
        tenant_id=TENANT,
        profile_id=None,
        rules=rules,
        required_level=None,
        now=NOW,
    )


def test_a_period_longer_than_the_calendar_never_makes_a_field_stale() -> None:
    rules = StoreRules(default_freshness_seconds=2**40, stale_field_action="block")
    assert _missing_one(datetime(1, 1, 1, tzinfo=UTC), rules) == []


def test_the_cutoff_is_exact_or_not_taken() -> None:
    assert requirements._cutoff(NOW, 60) == NOW - timedelta(seconds=60)
    for freshness in (2**33, 10**12, 1.5, True):
        assert requirements._cutoff(NOW, freshness) is requirements._EXACT  # type: ignore[arg-type]
    early = datetime(1, 1, 1, tzinfo=UTC)
    assert requirements._cutoff(early, 60) is requirements._EXACT


@pytest.mark.parametrize(
    "expression",
    [
        'x == 1 or y != "a"',
        "x < 1 or unknown == 3",
        "unknown == 1 or x == 1",
        "x == 1 and unknown == 1",
        "x is None and y is not None",
        "x == 1 or y == 2 or z == 3",
        "x < 2",
        "x > y and z == 1",  # not every part a name against a constant
    ],
)
def test_fused_conditions_agree_with_the_reference_walk(expression: str) -> None:
    compiled = compile_condition(expression)
    small: list[Any] = [None, True, 0, 1, 2, -1, 3.5, "", "a", [1, 2], {"k": "v"}]
    for x in small:
        for y in small:
            for z in (None, 1, "a"):
                values = {"x": x, "y": y, "z": z}
                try:
                    expected = bool(requirements._evaluate(compiled.tree, values))
                except (requirements._Undefined, TypeError, ValueError, ArithmeticError):
                    expected = False
                assert compiled.holds(values) is expected, values
                assert requirements.condition_holds(expression, values) is expected


def _requirement(name: str, agent: UUID, **values: Any) -> ScenarioFieldRequirement:
    return ScenarioFieldRequirement(
        tenant_id=TENANT, agent_id=agent, scenario_id=uuid4(), field_name=name, **values
    )


def test_records_of_carry_each_requirement_and_its_own_check() -> None:
    first, second = uuid4(), uuid4()
    found = [
        _requirement("a", first, when_condition="x == 1", depends_on_fields=["b"]),
        _requirement("a", second, required_level=RequiredLevel.SOFT),
        _requirement("b", first),
    ]
    checks = {first: {"a": field_check(True, None)}, second: {"b": field_check(False, 9)}}
    records, build = records_of(found, checks)
    assert list(records) == [
        ("a", RequiredLevel.HARD, "x == 1", ["b"], field_check(True, None), found[0]),
        ("a", RequiredLevel.SOFT, None, [], None, found[1]),
        ("b", RequiredLevel.HARD, None, [], None, found[2]),
    ]
    assert build([found[2], found[0]]) == [found[2], found[0]]
    # the model path (find_missing_checked) answers through the records
    fields = {"b": ProfileField(name="b", value="v", collected_at=NOW)}
    missing = find_missing_checked(
        fields,
        {"b": "v"},
        found,
        {},
        tenant_id=TENANT,
        profile_id=None,
        rules=StoreRules(),
        required_level=None,
        now=NOW,
    )
    assert missing == [found[1]]  # found[0]'s condition names x, absent: it does not apply


# ---------------------------------------------------------------------------------------
# which class answers the records hook
# ---------------------------------------------------------------------------------------


# which hook a class ends up with (ProfileStore.__init_subclass__): classes that define
# stub hooks, whose results nothing reads


async def _requirements(self: Any, tenant_id: UUID, scenario_id: UUID, step_id: Any) -> Any:
    return []


async def _definitions(self: Any, tenant_id: UUID, agent_id: UUID, enabled_only: bool) -> Any:
    return []


async def _pairs(self: Any, tenant_id: UUID, scenario_id: UUID, step_id: Any) -> Any:
    return [], {}


async def _records(self: Any, tenant_id: UUID, scenario_id: UUID, step_id: Any) -> Any:
    return [], list


_STUB_HOOKS = {
    "_get_scenario_requirements": _requirements,
    "_get_field_definitions": _definitions,
    "_get_requirements_with_definitions": _pairs,
    "_get_requirement_checks": _pairs,
    "_get_requirement_records": _records,
}


def overriding(name: str, bases: tuple[type, ...], *hooks: str) -> Any:
    """A class ``name`` over ``bases`` defining ``hooks``, each its own function object
    (so identity tells whose hook a class ends up with)."""
    stubs = {
        hook: types.FunctionType(_STUB_HOOKS[hook].__code__, globals(), hook) for hook in hooks
    }
    return type(name, bases, stubs)


def test_an_override_of_a_wider_hook_below_the_records_hook_gets_the_default() -> None:
    default = ProfileStore._get_requirement_records
    assert SqliteProfileStore._get_requirement_records is not default
    sqlite = (SqliteProfileStore,)
    narrowed = overriding("Narrowed", sqlite, "_get_requirement_checks")
    widened = overriding("Widened", sqlite, "_get_requirements_with_definitions")
    own = overriding("Own", (narrowed,), "_get_requirement_records")
    widest = overriding("Widest", sqlite, "_get_scenario_requirements")
    defined = overriding("Defined", sqlite, "_get_field_definitions")

    assert narrowed._get_requirement_records is default
    assert widened._get_requirement_records is default
    # each derived hook above an override it derives from gives way, down the chain
    assert widened._get_requirement_checks is ProfileStore._get_requirement_checks
    for cls in (widest, defined):
        assert (
            cls._get_requirements_with_definitions
            is ProfileStore._get_requirements_with_definitions
        )
        assert cls._get_requirement_checks is ProfileStore._get_requirement_checks
        assert cls._get_requirement_records is default

    # a subclass overriding nothing keeps what its parent has
    plain = overriding("Plain", (widest,))
    assert plain._get_requirement_records is default
    assert SqliteProfileStore._get_requirement_checks is not ProfileStore._get_requirement_checks
    assert "_get_requirement_records" in vars(own) and own._get_requirement_records is not default
    # wrappers: the cache serves the wide hook (default), encryption forwards
    from ccvault.cache import CachedProfileStore
    from ccvault.crypto import EncryptedProfileStore

    assert CachedProfileStore._get_requirement_records is default
    assert (
        EncryptedProfileStore._get_requirement_records
        is ForwardingProfileStore._get_requirement_records
    )


def test_a_base_writing_the_fast_paths_keeps_them_over_primitives_below_it() -> None:
    """A layered provider: a base class writes the one-statement hooks, its subclasses the
    abstract primitives those agree with. Implementing an abstract hook goes around
    nothing: the base's hooks stay."""
    fast = (
        "_get_requirements_with_definitions",
        "_get_requirement_checks",
        "_get_requirement_records",
    )
    sql_base = overriding("SqlBase", (ProfileStore,), *fast)
    dialect = overriding(
        "Dialect", (sql_base,), "_get_scenario_requirements", "_get_field_definitions"
    )
    for hook in fast:
        assert getattr(dialect, hook) is vars(sql_base)[hook], hook


def test_an_override_is_read_through_defaults_between() -> None:
    """A provider overriding only a narrow hook (the wider ones its defaults): a subclass
    overriding the widest is read through all the same, the defaults between carrying the
    override up; a base writing only the narrow hook over abstract primitives keeps it."""
    memory = (InMemoryProfileStore,)
    fast_checks = overriding("FastChecks", memory, "_get_requirement_checks")
    fast_records = overriding("FastRecords", memory, "_get_requirement_records")
    no_phone_checks = overriding("NoPhoneChecks", (fast_checks,), "_get_scenario_requirements")
    no_phone_records = overriding("NoPhoneRecords", (fast_records,), "_get_field_definitions")

    assert fast_checks._get_requirement_checks is vars(fast_checks)["_get_requirement_checks"]
    assert no_phone_checks._get_requirement_checks is ProfileStore._get_requirement_checks
    assert fast_records._get_requirement_records is vars(fast_records)["_get_requirement_records"]
    assert no_phone_records._get_requirement_records is ProfileStore._get_requirement_records

    checks_base = overriding("ChecksBase", (ProfileStore,), "_get_requirement_checks")
    checks_dialect = overriding("ChecksDialect", (checks_base,), "_get_scenario_requirements")
    assert checks_dialect._get_requirement_checks is vars(checks_base)["_get_requirement_checks"]


def test_a_narrow_hook_nearer_than_the_override_is_kept_through_mixins() -> None:
    """Records written by a mixin listed before a filtering one: the records stand nearer
    than the override, as they would through single inheritance."""
    fast_records = overriding("FastRecords", (), "_get_requirement_records")
    no_phone = overriding("NoPhone", (), "_get_scenario_requirements")
    mixed = overriding("Mixed", (fast_records, no_phone, SqliteProfileStore))
    filtered = overriding("Filtered", (no_phone, SqliteProfileStore))
    single = overriding("Single", (fast_records, filtered))

    for cls in (mixed, single):
        assert cls._get_requirement_records is vars(fast_records)["_get_requirement_records"]
        # the wider hooks between gave way to their defaults, derived from the filter
        assert cls._get_requirement_checks is ProfileStore._get_requirement_checks
        assert (
            cls._get_requirements_with_definitions
            is ProfileStore._get_requirements_with_definitions
        )


async def email_and_phone_scenario(store: ProfileStore) -> tuple[UUID, CustomerProfile]:
    """A scenario requiring email and phone (an agent's definition of email), and a profile
    holding an unverified email: (the scenario's id, the profile as read back)."""
    agent, scenario = uuid4(), uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=TENANT, agent_id=agent, name="email")
    )
    for name in ("email", "phone"):
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=TENANT, agent_id=agent, scenario_id=scenario, field_name=name
            )
        )
    person = await store.get_or_create(TENANT, Channel.WEB, f"scenario-{uuid4().hex[:8]}")
    await store.update_field(
        TENANT, person.id, ProfileField(name="email", value="a@example.com", verified=False)
    )
    profile = await store.get_by_id(TENANT, person.id)
    assert profile is not None
    return scenario, profile


@pytest.mark.parametrize("hook", ["_get_scenario_requirements", "_get_field_definitions"])
async def test_a_forwarding_instance_given_its_own_wide_hook_is_read_through(hook: str) -> None:
    inner = InMemoryProfileStore()
    wrapper = ForwardingProfileStore(inner)
    scenario, found = await email_and_phone_scenario(wrapper)
    missing = await wrapper.get_missing_fields(TENANT, found, scenario)
    assert [r.field_name for r in missing] == ["phone"]

    async def no_requirements(*args: Any) -> Any:
        return []

    async def strict_definitions(tenant_id: UUID, agent_id: UUID, enabled_only: bool) -> Any:
        found = await inner._get_field_definitions(tenant_id, agent_id, enabled_only)
        return [d.model_copy(update={"required_verification": True}) for d in found]

    if hook == "_get_scenario_requirements":
        wrapper._get_scenario_requirements = no_requirements  # type: ignore[method-assign]
        assert await wrapper.get_missing_fields(TENANT, found, scenario) == []
    else:
        wrapper._get_field_definitions = strict_definitions  # type: ignore[method-assign]
        missing = await wrapper.get_missing_fields(TENANT, found, scenario)
        assert sorted(r.field_name for r in missing) == ["email", "phone"]


async def test_a_forwarding_instance_given_its_own_checks_is_served_from_them() -> None:
    inner = InMemoryProfileStore()
    wrapper = ForwardingProfileStore(inner)
    agent, scenario = uuid4(), uuid4()
    await wrapper.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=TENANT, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    profile = await wrapper.get_or_create(TENANT, Channel.WEB, "records")
    await wrapper.update_field(
        TENANT, profile.id, ProfileField(name="email", value="a@example.com", verified=False)
    )
    found = await wrapper.get_by_id(TENANT, profile.id)
    assert found is not None
    assert await wrapper.get_missing_fields(TENANT, found, scenario) == []

    async def forced(tenant_id: UUID, scenario_id: UUID, step_id: UUID | None) -> Any:
        reqs = await inner._get_scenario_requirements(tenant_id, scenario_id, step_id)
        return reqs, {agent: {"email": field_check(True, None)}}

    wrapper._get_requirement_checks = forced  # type: ignore[method-assign]
    missing = await wrapper.get_missing_fields(TENANT, found, scenario)
    assert [r.field_name for r in missing] == ["email"]


async def test_a_provider_subclass_filtering_requirements_is_read_through(
    tmp_path: Path,
) -> None:
    """A provider's subclass overriding only the widest hook (requirements of a kind left
    out): get_missing_fields reads through it, not around it through the provider's own
    one-statement hooks."""

    class NoPhone(SqliteProfileStore):
        async def _get_scenario_requirements(
            self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
        ) -> list[ScenarioFieldRequirement]:
            found = await super()._get_scenario_requirements(tenant_id, scenario_id, step_id)
            return [r for r in found if r.field_name != "phone"]

    class StrictEmail(SqliteProfileStore):
        async def _get_field_definitions(
            self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
        ) -> list[ProfileFieldDefinition]:
            found = await super()._get_field_definitions(tenant_id, agent_id, enabled_only)
            return [d.model_copy(update={"required_verification": True}) for d in found]

    path = str(tmp_path / "s.db")
    async with SqliteProfileStore(SqliteSettings(path=path, migrate_on_start=True)) as store:
        scenario, profile = await email_and_phone_scenario(store)
        missing = await store.get_missing_fields(TENANT, profile, scenario)
        assert [r.field_name for r in missing] == ["phone"]
    async with NoPhone(SqliteSettings(path=path)) as no_phone:
        assert await no_phone.get_missing_fields(TENANT, profile, scenario) == []
    async with StrictEmail(SqliteSettings(path=path)) as strict:
        missing = await strict.get_missing_fields(TENANT, profile, scenario)
        assert [r.field_name for r in missing] == ["email", "phone"]


# ---------------------------------------------------------------------------------------
# SQLite: records from rows, models built for the sources asked
# ---------------------------------------------------------------------------------------


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteProfileStore]:
    store = SqliteProfileStore(SqliteSettings(path=str(tmp_path / "r.db"), migrate_on_start=True))
    async with store:
        yield store


async def _scenario(store: SqliteProfileStore) -> tuple[UUID, UUID, UUID]:
    """Six requirements of two agents (conditions, dependencies, levels, a rule), with
    definitions for some. Returns (agent, other agent, scenario)."""
    agent, other, scenario = uuid4(), uuid4(), uuid4()
    for owner, name, verification, freshness in (
        (agent, "email", True, None),
        (agent, "phone", False, 60),
        (other, "email", False, 0),
    ):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=TENANT,
                agent_id=owner,
                name=name,
                required_verification=verification,
                freshness_seconds=freshness,
            )
        )
    shapes: list[tuple[UUID, str, dict[str, Any]]] = [
        (agent, "email", {"when_condition": 'plan != "free"'}),
        (agent, "phone", {"depends_on_fields": ["email", "plan"]}),
        (agent, "city", {"required_level": RequiredLevel.SOFT}),
        (other, "email", {"rule_id": uuid4()}),
        (other, "phone", {"when_condition": "   ", "rule_id": uuid4()}),
        (agent, "zip", {"collection_order": -5}),
    ]
    for order, (owner, name, extra) in enumerate(shapes):
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=TENANT,
                agent_id=owner,
                scenario_id=scenario,
                field_name=name,
                collection_order=extra.pop("collection_order", order),
                **extra,
            )
        )
    return agent, other, scenario


async def test_sqlite_records_agree_with_the_model_path(sqlite: SqliteProfileStore) -> None:
    agent, other, scenario = await _scenario(sqlite)
    found, checks = await sqlite._get_requirement_checks(TENANT, scenario, None)
    answer, build = await sqlite._get_requirement_records(TENANT, scenario, None)
    records = list(answer)
    expected = list(records_of(found, checks).records)
    by_id = {r.id: r for r in found}
    built = build([record[5] for record in records])
    assert len(built) == len(found) == 6
    for record, model in zip(records, built, strict=True):
        assert model == by_id[model.id]
        # the model as the codec builds it: the same attributes in the same order
        (reference,) = codec.requirements_from_rows([record[5]])
        assert list(model.__dict__.items()) == list(reference.__dict__.items())
        assert model.model_fields_set == reference.model_fields_set
        assert model.__pydantic_extra__ is None and model.__pydantic_private__ is None
        (same,) = [r for r in expected if r[5].id == model.id]
        assert tuple(record[:5]) == (same[0], same[1], same[2], tuple(same[3]), same[4])
    # get_missing_fields over them: as the model path orders and judges them
    profile = await sqlite.get_or_create(TENANT, Channel.WEB, "sqlite-records")
    await sqlite.update_field(TENANT, profile.id, ProfileField(name="email", value="a@x.org"))
    read = await sqlite.get_by_id(TENANT, profile.id)
    assert read is not None
    missing = await sqlite.get_missing_fields(TENANT, read, scenario, required_level=None)
    # email's condition names plan (absent: it does not apply), phone of agent depends on
    # plan; other's email is held (its definition asks no verification); the rest are absent
    assert [(r.agent_id, r.field_name) for r in missing] == [
        (agent, "zip"),
        (agent, "city"),
        (other, "phone"),
    ]
    assert [r.field_name for r in await sqlite.get_missing_fields(TENANT, read, scenario)] == [
        "zip",
        "phone",
    ]


@pytest.mark.parametrize(
    ("tampering", "missing"),
    [
        ("field_name = 'SECRET Bad Name'", False),
        ("field_name = 7", False),
        ("required_level = 'maybe'", False),
        ("when_condition = printf('%.2001c', 'x')", False),
        ("depends_on_fields = '[\"Bad Name\"]'", False),
        ("depends_on_fields = '{\"a\": 1}'", False),
        ("depends_on_fields = 'not json'", False),
        # the agent picks the requirement's check: refused even where the field is held
        ("agent_id = 'SECRET-nowhere'", False),
        ("agent_id = 7", False),
        ("agent_id = created_at", False),
        ("id = 'SECRET-nowhere'", True),
        ("fallback_action = 'SECRET-shrug'", True),
        ("created_at = 'SECRET-yesterday'", True),
        ("collection_order = 'first'", True),
        ("rule_id = 'SECRET-nowhere'", True),
        # texts of our form, in the wrong column (a time's text as an id, an id's as a time)
        ("rule_id = updated_at", True),
        ("created_at = id", True),
    ],
)
async def test_a_tampered_requirement_row_is_refused_by_get_missing_fields(
    sqlite: SqliteProfileStore, tampering: str, missing: bool
) -> None:
    # a column the evaluation reads is refused whether or not the requirement is missing;
    # one only its model holds, when it is (its model is built)
    agent, scenario = uuid4(), uuid4()
    for name in ("email", "phone"):
        await sqlite.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=TENANT, agent_id=agent, scenario_id=scenario, field_name=name
            )
        )
    profile = await sqlite.get_or_create(TENANT, Channel.WEB, f"tampered-{uuid4()}")
    if not missing:  # the tampered requirement's field is held: it is not missing
        await sqlite.update_field(TENANT, profile.id, ProfileField(name="email", value="a@x"))
    read = await sqlite.get_by_id(TENANT, profile.id)
    assert read is not None
    await sqlite.connection.execute(
        f"UPDATE scenario_requirements SET {tampering} "
        "WHERE tenant_id = ? AND scenario_id = ? AND field_name = 'email'",
        (str(TENANT), str(scenario)),
    )
    with pytest.raises(errors.StorageError, match="scenario requirement row is corrupt") as caught:
        await sqlite.get_missing_fields(TENANT, read, scenario)
    assert "SECRET" not in str(caught.value)  # the tampered text is never echoed


async def test_a_tampered_definition_check_is_refused(sqlite: SqliteProfileStore) -> None:
    _agent, _other, scenario = await _scenario(sqlite)
    await sqlite.connection.execute(
        "UPDATE field_definitions SET freshness_seconds = -1 WHERE tenant_id = ? AND name = ?",
        (str(TENANT), "phone"),
    )
    with pytest.raises(errors.StorageError, match="field definition row is corrupt"):
        await sqlite._get_requirement_records(TENANT, scenario, None)


async def test_a_foreign_but_valid_row_is_built_through_validation(
    sqlite: SqliteProfileStore,
) -> None:
    agent, scenario = uuid4(), uuid4()
    await sqlite.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=TENANT, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    # another writer's forms: an upper-case id, a time with another offset
    await sqlite.connection.execute(
        "UPDATE scenario_requirements SET id = upper(id), "
        "created_at = '2026-01-15T11:30:00.123456+02:00' WHERE tenant_id = ?",
        (str(TENANT),),
    )
    profile = await sqlite.get_or_create(TENANT, Channel.WEB, "foreign")
    (requirement,) = await sqlite.get_missing_fields(TENANT, profile, scenario)
    (expected,) = await sqlite.get_scenario_requirements(TENANT, scenario)
    assert requirement == expected
    assert requirement.created_at == datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC)


def test_the_row_builder_keeps_only_its_own_forms() -> None:
    # ids and times found in our form are kept (bounded); anything else is not ours
    text = str(uuid4())
    assert sqlite_store._our_uuid(text) == UUID(text)
    assert sqlite_store._our_uuid(text) is sqlite_store._our_uuid(text)
    for odd in (text.upper(), text[:-1], "x" * 36, None, 36):
        with pytest.raises(sqlite_store._NotOurRecord):
            sqlite_store._our_uuid(odd)
    moment = codec.ts(NOW)
    assert sqlite_store._our_time(moment) == NOW
    for odd in ("2026-06-01T12:00:00.000000+02:00", "2026-06-01T12:00:00+00:00", moment[:-1]):
        with pytest.raises(sqlite_store._NotOurRecord):
            sqlite_store._our_time(odd)
    assert all(type(v) is UUID for v in codec._UUID_MEMO.entries.values())
    assert all(type(v) is datetime for v in codec._TIMESTAMP_MEMO.entries.values())


@pytest.mark.parametrize(
    "tampering",
    [
        "required_level = 'maybe'",
        "depends_on_fields = 'not json'",
        "field_name = '9' || field_name",
    ],
)
async def test_a_column_tampered_in_every_row_is_refused(
    sqlite: SqliteProfileStore, tampering: str
) -> None:
    # every row alike: the one-value shortcuts (a level looked up once, no dependencies)
    # check that value too
    _agent, _other, scenario = await _scenario(sqlite)
    await sqlite.connection.execute(
        f"UPDATE scenario_requirements SET {tampering} WHERE tenant_id = ?", (str(TENANT),)
    )
    with pytest.raises(errors.StorageError, match="scenario requirement row is corrupt"):
        await sqlite._get_requirement_records(TENANT, scenario, None)
