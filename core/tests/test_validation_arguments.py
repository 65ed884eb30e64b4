"""SchemaValidationService: bad arguments are ccvault ValidationErrors, and messages never
echo the value being checked (values are often personal data and end up in logs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, FieldValueType, ProfileField, ProfileFieldDefinition
from ccvault.validation import SchemaValidationService, check_value
from ccvault_inmemory import InMemoryProfileStore


@pytest.fixture
async def inner() -> AsyncIterator[InMemoryProfileStore]:
    async with InMemoryProfileStore() as store:
        yield store


async def test_check_and_update_field_refuse_non_fields(inner: InMemoryProfileStore) -> None:
    service = SchemaValidationService(inner)
    tenant, agent = uuid4(), uuid4()
    pid = (await inner.get_or_create(tenant, Channel.WEB, "u1")).id
    with pytest.raises(errors.ValidationError, match="field must be a ProfileField"):
        await service.check(tenant, agent, {"name": "email"})  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="field must be a ProfileField"):
        await service.update_field(tenant, agent, pid, {"name": "email", "value": 1})  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="field must be a ProfileField"):
        await service.validate_and_raise(tenant, agent, "email")  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="agent_id must be a UUID"):
        await service.check(tenant, "nope", ProfileField(name="email", value="x"))  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="profile_id must be a UUID"):
        await service.update_field(tenant, agent, None, ProfileField(name="a", value=1))  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="definitions"):
        await service.check(tenant, agent, ProfileField(name="a", value=1), definitions=[])  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="definition must be"):
        service.validate_field(ProfileField(name="a", value=1), {})  # type: ignore[arg-type]
    assert await inner.get_field(tenant, pid, "email") is None


SECRET_CASES: list[tuple[FieldValueType, Any, dict[str, Any]]] = [
    (FieldValueType.EMAIL, "bob.secret@", {}),
    (FieldValueType.EMAIL, "bob secret@example.com", {}),
    (FieldValueType.PHONE, "4915112345678", {}),
    (FieldValueType.PHONE, "+49 151 12345678", {}),
    (FieldValueType.PHONE, "+1555secret", {}),
    (FieldValueType.PHONE, "+999123456", {}),
    (FieldValueType.DATE, "secret-1980", {}),
    (FieldValueType.STRING, "secret-tier", {"allowed_values": ["gold", "silver"]}),
]


@pytest.mark.parametrize(("value_type", "value", "extra"), SECRET_CASES)
async def test_messages_never_echo_the_value(
    inner: InMemoryProfileStore, value_type: FieldValueType, value: Any, extra: dict[str, Any]
) -> None:
    tenant, agent = uuid4(), uuid4()
    definition = ProfileFieldDefinition(
        tenant_id=tenant, agent_id=agent, name="f", value_type=value_type, **extra
    )
    problems = check_value(value, definition)
    assert problems
    secret_parts = {value, value.replace(" ", ""), "bob", "secret", "12345678"}
    for problem in problems:
        assert not any(part in problem.message for part in secret_parts), problem.message
    await inner.save_field_definition(definition)
    service = SchemaValidationService(inner)
    with pytest.raises(errors.SchemaValidationError) as raised:
        await service.validate_and_raise(tenant, agent, ProfileField(name="f", value=value))
    assert not any(part in str(raised.value) for part in secret_parts)


def test_email_message_says_what_is_wrong() -> None:
    definition = ProfileFieldDefinition(
        tenant_id=uuid4(), agent_id=uuid4(), name="email", value_type="email"
    )
    [problem] = check_value("bob@x", definition)
    assert problem.message == "value is not a valid email address"
