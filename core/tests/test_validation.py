"""SchemaValidationService and the pure checks: every type, every error, the switches, the
definitions cache, the metric."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors, load_settings, metrics, open_store
from ccvault.models import (
    Channel,
    FieldValueType,
    ProfileField,
    ProfileFieldDefinition,
)
from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault.validation import (
    ErrorType,
    SchemaValidationService,
    ValidatingProfileStore,
    check_definition,
    check_type,
    check_value,
)

AGENT = uuid4()


def _definition(
    name: str = "thing", tenant: UUID | None = None, **kw: Any
) -> ProfileFieldDefinition:
    return ProfileFieldDefinition(tenant_id=tenant or uuid4(), agent_id=AGENT, name=name, **kw)


class CountingStore(ForwardingProfileStore):
    """Counts how often definitions are read from the store underneath."""

    def __init__(self, inner: ProfileStore) -> None:
        super().__init__(inner)
        self.list_calls = 0
        self.one_calls = 0

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        self.list_calls += 1
        return await super()._get_field_definitions(tenant_id, agent_id, enabled_only)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        self.one_calls += 1
        return await super()._get_field_definition(tenant_id, agent_id, field_name)


@pytest.fixture
async def store() -> AsyncIterator[CountingStore]:
    settings = load_settings(store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False)
    async with open_store(settings) as inner:
        yield CountingStore(inner)


# ---------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------

VALID = [
    (FieldValueType.STRING, "hello"),
    (FieldValueType.STRING, ""),
    (FieldValueType.NUMBER, 42),
    (FieldValueType.NUMBER, -3.5),
    (FieldValueType.NUMBER, 0),
    (FieldValueType.BOOLEAN, True),
    (FieldValueType.BOOLEAN, False),
    (FieldValueType.DATE, "1990-03-12"),
    (FieldValueType.DATE, "2024-02-29"),
    (FieldValueType.EMAIL, "jane.doe@example.org"),
    (FieldValueType.EMAIL, "j+tag@sub.example.co.uk"),
    (FieldValueType.PHONE, "+14155550123"),
    (FieldValueType.PHONE, "+442079460958"),
    (FieldValueType.JSON, {"a": [1, 2]}),
    (FieldValueType.JSON, []),
]

INVALID = [
    (FieldValueType.STRING, 5),
    (FieldValueType.STRING, None),
    (FieldValueType.NUMBER, True),  # a boolean is not a number
    (FieldValueType.NUMBER, False),
    (FieldValueType.NUMBER, float("nan")),
    (FieldValueType.NUMBER, float("inf")),
    (FieldValueType.NUMBER, float("-inf")),
    (FieldValueType.NUMBER, "42"),
    (FieldValueType.BOOLEAN, 1),
    (FieldValueType.BOOLEAN, "true"),
    (FieldValueType.DATE, "2023-02-29"),  # not a real day
    (FieldValueType.DATE, "12/03/1990"),
    (FieldValueType.DATE, "yesterday"),
    (FieldValueType.DATE, 19900312),
    (FieldValueType.EMAIL, "jane.doe@"),
    (FieldValueType.EMAIL, "no-at-sign.example.org"),
    (FieldValueType.EMAIL, "a@b"),
    (FieldValueType.EMAIL, ["jane@example.org"]),
    (FieldValueType.PHONE, "4155550123"),  # no country code
    (FieldValueType.PHONE, "+1 415 555 0123"),  # valid number, not E.164 form
    (FieldValueType.PHONE, "+1555"),
    (FieldValueType.PHONE, "+99912345678"),  # no such country code
    (FieldValueType.PHONE, 14155550123),
    (FieldValueType.JSON, "{}"),
    (FieldValueType.JSON, 3),
]


@pytest.mark.parametrize(("value_type", "value"), VALID)
def test_valid_values_of_each_type(value_type: FieldValueType, value: object) -> None:
    assert check_type(value, value_type) is None
    assert check_value(value, _definition(value_type=value_type)) == []


@pytest.mark.parametrize(("value_type", "value"), INVALID)
def test_invalid_values_of_each_type(value_type: FieldValueType, value: object) -> None:
    problem = check_type(value, value_type)
    assert problem is not None and problem
    found = check_value(value, _definition(value_type=value_type))
    assert [p.error_type for p in found] == [ErrorType.TYPE]


def test_phone_not_in_e164_says_how_to_write_it() -> None:
    problem = check_type("+1 415 555 0123", FieldValueType.PHONE)
    # it explains the form without echoing the (personal) number, normalised or not
    assert problem is not None and "E.164" in problem and "no punctuation" in problem
    assert "4155550123" not in problem and "415 555" not in problem


def test_unknown_type_is_a_problem_not_a_crash() -> None:
    assert check_type("x", "xml") == "unknown value_type 'xml'"


# ---------------------------------------------------------------------------------------
# regex, allowed values, verification, all at once
# ---------------------------------------------------------------------------------------


def test_regex_is_anchored_at_the_start_and_applies_to_strings() -> None:
    definition = _definition(validation_regex=r"[A-Z]{2}\d+")
    assert check_value("AB123", definition) == []
    assert check_value("AB123-extra", definition) == []  # re.match semantics
    assert [p.error_type for p in check_value("xAB123", definition)] == [ErrorType.REGEX]
    anchored = _definition(validation_regex=r"^[A-Z]{2}\d+$")
    assert [p.error_type for p in check_value("AB123-extra", anchored)] == [ErrorType.REGEX]


def test_catastrophic_pattern_runs_in_linear_time() -> None:
    # (a+)+$ takes exponential time with a backtracking engine on this input; RE2 does not
    # backtrack, so this returns (a hang would hit the pytest timeout)
    hostile = "a" * 50_000 + "!"
    for pattern in (r"(a+)+$", r"^(a|aa)+$", r"(.*a){20}$"):
        found = check_value(hostile, _definition(validation_regex=pattern))
        assert [p.error_type for p in found] == [ErrorType.REGEX]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "invalid escape sequence"),  # back-reference
        (r"(?=a)b", "invalid perl operator"),  # look-ahead
        (r"[a-", "missing ]"),
        (r"(a{1000}){1000}", "invalid repetition size"),
    ],
)
def test_uncompilable_regex_refused_with_the_reason(pattern: str, reason: str) -> None:
    definition = _definition(validation_regex=pattern)
    with pytest.raises(errors.ValidationError, match="RE2") as raised:
        check_definition(definition)
    assert reason in str(raised.value)


def test_allowed_values_use_json_equality() -> None:
    definition = _definition(value_type=FieldValueType.NUMBER, allowed_values=[1, 2.5])
    assert check_value(1, definition) == []
    assert check_value(1.0, definition) == []
    assert check_value(2.5, definition) == []
    assert [p.error_type for p in check_value(3, definition)] == [ErrorType.ALLOWED_VALUES]
    flags = _definition(value_type=FieldValueType.JSON, allowed_values=[[1], {"a": 1}])
    assert check_value([1], flags) == []
    # True == 1 in Python, never in JSON: a type error and not an allowed value
    found = check_value(True, definition)
    assert {p.error_type for p in found} == {ErrorType.TYPE, ErrorType.ALLOWED_VALUES}


def test_required_verification() -> None:
    definition = _definition(required_verification=True)
    assert [p.error_type for p in check_value("x", definition)] == [ErrorType.VERIFICATION]
    assert check_value("x", definition, verified=True) == []


def test_every_error_of_a_field_is_reported_at_once() -> None:
    definition = _definition(
        value_type=FieldValueType.STRING,
        validation_regex=r"^[a-z]+$",
        allowed_values=["alpha", "beta"],
        required_verification=True,
    )
    found = check_value("Gamma", definition)
    assert [p.error_type for p in found] == [
        ErrorType.REGEX,
        ErrorType.ALLOWED_VALUES,
        ErrorType.VERIFICATION,
    ]
    assert all(p.message for p in found)


def test_definition_with_allowed_values_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(errors.ValidationError, match="allowed_values"):
        check_definition(_definition(value_type=FieldValueType.NUMBER, allowed_values=["one"]))


# ---------------------------------------------------------------------------------------
# saving definitions
# ---------------------------------------------------------------------------------------


async def test_store_refuses_an_uncompilable_regex_and_writes_nothing(store: CountingStore) -> None:
    tenant = uuid4()
    bad = _definition("code", tenant, validation_regex=r"(x)\1")
    with pytest.raises(errors.ValidationError, match="RE2"):
        await store.save_field_definition(bad)
    assert await store.get_field_definition(tenant, AGENT, "code") is None


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
async def test_unknown_value_type_is_a_vault_validation_error(store: CountingStore) -> None:
    tenant = uuid4()
    bogus = ProfileFieldDefinition.model_construct(
        **{**_definition("code", tenant).model_dump(), "value_type": "xml"}
    )
    service = SchemaValidationService(store)
    with pytest.raises(errors.ValidationError):
        await service.save_definition(bogus)
    with pytest.raises(errors.ValidationError):
        await store.save_field_definition(bogus)
    with pytest.raises(errors.ValidationError, match="value_type"):
        check_definition(bogus)
    assert await store.get_field_definition(tenant, AGENT, "code") is None


# ---------------------------------------------------------------------------------------
# the service: switches, metrics, cache
# ---------------------------------------------------------------------------------------


def _errors_counted(tenant: UUID, field_name: str, error_type: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "profile_schema_validation_errors_total",
        {"tenant_id": str(tenant), "field_name": field_name, "error_type": error_type},
    )
    return value or 0.0


async def test_validate_and_raise_lists_all_errors_and_counts_each(store: CountingStore) -> None:
    tenant = uuid4()
    service = SchemaValidationService(store)
    await service.save_definition(
        _definition(
            "tier",
            tenant,
            validation_regex=r"^[a-z]+$",
            allowed_values=["gold", "silver"],
            required_verification=True,
        )
    )
    with pytest.raises(errors.SchemaValidationError) as raised:
        await service.validate_and_raise(tenant, AGENT, ProfileField(name="tier", value="Bronze"))
    exc = raised.value
    assert exc.field_name == "tier"
    assert exc.error_types == ["regex", "allowed_values", "verification"]
    assert len(exc.errors) == 3
    assert isinstance(exc, errors.ValidationError)
    for kind in ("regex", "allowed_values", "verification"):
        assert _errors_counted(tenant, "tier", kind) == 1.0
    assert _errors_counted(tenant, "tier", "type") == 0.0
    # a valid, verified value passes and counts nothing more
    await service.validate_and_raise(
        tenant, AGENT, ProfileField(name="tier", value="gold", verified=True)
    )
    assert _errors_counted(tenant, "tier", "regex") == 1.0


async def test_strict_mode_refuses_undefined_fields(store: CountingStore) -> None:
    tenant = uuid4()
    lenient = SchemaValidationService(store)
    strict = SchemaValidationService(store, strict=True)
    field = ProfileField(name="nickname", value="JD")
    await lenient.validate_and_raise(tenant, AGENT, field)
    with pytest.raises(errors.SchemaValidationError) as raised:
        await strict.validate_and_raise(tenant, AGENT, field)
    assert raised.value.error_types == ["undefined"]
    # a field without a definition never becomes a label value of its own
    assert _errors_counted(tenant, "_undefined", "undefined") >= 1.0
    assert _errors_counted(tenant, "nickname", "undefined") == 0.0


async def test_disabled_definition_is_not_applied(store: CountingStore) -> None:
    tenant = uuid4()
    await store.save_field_definition(
        _definition("age", tenant, value_type=FieldValueType.NUMBER, enabled=False)
    )
    field = ProfileField(name="age", value="old")
    await SchemaValidationService(store).validate_and_raise(tenant, AGENT, field)
    with pytest.raises(errors.SchemaValidationError):
        await SchemaValidationService(store, strict=True).validate_and_raise(tenant, AGENT, field)


async def test_validation_enabled_false_turns_checks_off(store: CountingStore) -> None:
    tenant = uuid4()
    settings = load_settings(
        store_provider="inmemory", validation_enabled=False, validation_strict=True
    )
    service = SchemaValidationService.from_settings(store, settings)
    assert not service.enabled and service.strict
    await service.save_definition(_definition("age", tenant, value_type=FieldValueType.NUMBER))
    await service.validate_and_raise(tenant, AGENT, ProfileField(name="age", value="old"))
    await service.validate_and_raise(tenant, AGENT, ProfileField(name="undefined", value=1))
    assert await service.check(tenant, AGENT, ProfileField(name="age", value="old")) == []


async def test_from_settings_reads_profile_keys(store: CountingStore) -> None:
    settings = load_settings(
        store_provider="inmemory", validation_strict=True, field_definitions_ttl_seconds=12
    )
    service = SchemaValidationService.from_settings(store, settings)
    assert service.enabled and service.strict and service.definitions_ttl_seconds == 12


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_definitions_cached_with_ttl(store: CountingStore) -> None:
    tenant = uuid4()
    clock = FakeClock()
    service = SchemaValidationService(store, definitions_ttl_seconds=60, clock=clock)
    await store.save_field_definition(_definition("age", tenant, value_type=FieldValueType.NUMBER))
    for name in ("age", "age", "other", "age"):
        await service.get_definition(tenant, AGENT, name)
    assert store.list_calls == 1 and store.one_calls == 0
    # a change made behind the service's back is seen once the entry expires
    await store.save_field_definition(_definition("age", tenant, value_type=FieldValueType.STRING))
    stale = await service.get_definition(tenant, AGENT, "age")
    assert stale is not None and stale.value_type is FieldValueType.NUMBER
    clock.now += 61
    fresh = await service.get_definition(tenant, AGENT, "age")
    assert fresh is not None and fresh.value_type is FieldValueType.STRING
    assert store.list_calls == 2


async def test_save_and_delete_through_the_service_drop_the_cache(store: CountingStore) -> None:
    tenant = uuid4()
    service = SchemaValidationService(store, definitions_ttl_seconds=3600, clock=FakeClock())
    assert await service.get_definition(tenant, AGENT, "age") is None
    await service.save_definition(_definition("age", tenant, value_type=FieldValueType.NUMBER))
    saved = await service.get_definition(tenant, AGENT, "age")
    assert saved is not None and saved.value_type is FieldValueType.NUMBER
    await service.save_definition(_definition("age", tenant, value_type=FieldValueType.STRING))
    updated = await service.get_definition(tenant, AGENT, "age")
    assert updated is not None and updated.value_type is FieldValueType.STRING
    assert updated.id == saved.id  # saving by name updates and keeps the id
    assert await service.delete_definition(tenant, AGENT, "age")
    assert await service.get_definition(tenant, AGENT, "age") is None
    # invalidating one tenant leaves other tenants' entries cached
    other = uuid4()
    await service.save_definition(_definition("age", other))
    await service.get_definition(other, AGENT, "age")
    calls = store.list_calls
    service.invalidate(tenant)
    await service.get_definition(other, AGENT, "age")
    assert store.list_calls == calls
    service.invalidate()
    await service.get_definition(other, AGENT, "age")
    assert store.list_calls == calls + 1


async def test_update_field_validates_before_writing(store: CountingStore) -> None:
    tenant = uuid4()
    service = SchemaValidationService(store)
    definition = _definition("email", tenant, value_type=FieldValueType.EMAIL)
    await service.save_definition(definition)
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+14155550123")
    with pytest.raises(errors.SchemaValidationError):
        await service.update_field(
            tenant, AGENT, profile.id, ProfileField(name="email", value="not-an-email")
        )
    assert await store.get_field_history(tenant, profile.id, "email") == []
    field_id = await service.update_field(
        tenant, AGENT, profile.id, ProfileField(name="email", value="jane@example.org")
    )
    stored = await store.get_field(tenant, profile.id, "email")
    assert stored is not None and stored.id == field_id
    assert stored.value_type == "email"
    assert stored.field_definition_id == definition.id


async def test_validating_store_validates_writes_and_refreshes_definitions(
    store: CountingStore,
) -> None:
    tenant = uuid4()
    validator = SchemaValidationService(store, definitions_ttl_seconds=3600, clock=FakeClock())
    vault = ValidatingProfileStore(store, validator, AGENT)
    profile = await vault.get_or_create(tenant, Channel.SMS, "+14155550123")
    # no definition yet (and not strict): anything goes, and the empty answer is cached
    await vault.update_field(tenant, profile.id, ProfileField(name="age", value="old"))
    # a definition saved through the wrapper is seen at once, despite the long TTL
    await vault.save_field_definition(
        _definition("age", tenant, value_type=FieldValueType.NUMBER, allowed_values=[1, 2, 3])
    )
    with pytest.raises(errors.SchemaValidationError) as raised:
        await vault.update_field(tenant, profile.id, ProfileField(name="age", value="older"))
    assert raised.value.error_types == ["type", "allowed_values"]
    current = await vault.get_field(tenant, profile.id, "age")
    assert current is not None and current.value == "old"  # nothing written
    await vault.update_field(tenant, profile.id, ProfileField(name="age", value=2))

    # save: new or changed fields are validated; the stored ones are left alone
    loaded = await vault.get_by_id(tenant, profile.id)
    assert loaded is not None
    loaded.fields["nickname"] = ProfileField(name="nickname", value="JD")
    await vault.save(loaded)
    loaded = await vault.get_by_id(tenant, profile.id)
    assert loaded is not None
    loaded.fields["age"] = ProfileField(name="age", value=True)
    with pytest.raises(errors.SchemaValidationError):
        await vault.save(loaded)
    after = await vault.get_field(tenant, profile.id, "age")
    assert after is not None and after.value == 2

    assert await vault.delete_field_definition(tenant, AGENT, "age")
    await vault.update_field(tenant, profile.id, ProfileField(name="age", value="any"))


class GatedStore(ForwardingProfileStore):
    """The first definitions read fetches, then waits for ``release`` before returning."""

    def __init__(self, inner: ProfileStore) -> None:
        super().__init__(inner)
        self.fetched = asyncio.Event()
        self.release = asyncio.Event()
        self.gated = True

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        found = await super()._get_field_definitions(tenant_id, agent_id, enabled_only)
        if self.gated:
            self.gated = False
            self.fetched.set()
            await self.release.wait()
        return found


async def test_a_read_overlapping_a_definition_write_is_not_cached(store: CountingStore) -> None:
    tenant = uuid4()
    gated = GatedStore(store)
    service = SchemaValidationService(gated, definitions_ttl_seconds=3600, clock=FakeClock())
    slow_read = asyncio.create_task(service.get_definitions(tenant, AGENT))
    await asyncio.wait_for(gated.fetched.wait(), timeout=10)
    await service.save_definition(_definition("age", tenant, value_type=FieldValueType.NUMBER))
    gated.release.set()
    assert await slow_read == {}  # it read before the write
    fresh = await service.get_definition(tenant, AGENT, "age")
    assert fresh is not None and fresh.value_type is FieldValueType.NUMBER
