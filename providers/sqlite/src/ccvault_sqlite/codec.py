"""Conversions between the vault's models and SQLite rows.

Column tuples below are derived from the models (:func:`ccvault.storage.columns`) and are
the single source of truth for column order: ``*_params`` builds the bound values in that
order (by name, through :func:`ccvault.storage.row_values`), ``*_from_row`` reads a row
selected with ``*_SELECT``.
Timestamps become fixed-width ISO-8601 UTC text, so comparing the text compares the times.
JSON values are stored as JSON text written by orjson; a value orjson cannot write
losslessly (an integer beyond 64 bits, a string with lone surrogates) is refused with
:class:`~ccvault.errors.ValidationError` before any statement runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson

from ccvault import errors
from ccvault.models import (
    ChannelIdentity,
    Consent,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.storage import columns, row_values

Row = Sequence[Any]


def ts(value: datetime) -> str:
    """Fixed-width, sortable ISO-8601 UTC text (microseconds always present)."""
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:"
        f"{v.second:02d}.{v.microsecond:06d}+00:00"
    )


def ts_opt(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def uid(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def dumps(value: Any, what: str) -> str:
    """JSON text of ``value``; ValidationError when it cannot be stored losslessly."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise errors.ValidationError(f"{what} cannot be stored as JSON: {exc}") from None


def enum_opt(member: StrEnum | None) -> str | None:
    return None if member is None else member.value


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _zip(columns: Sequence[str], row: Row) -> dict[str, Any]:
    return dict(zip(columns, row, strict=False))


# ---------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------

FIELD_COLUMNS = columns(ProfileField)
FIELD_SELECT = ", ".join(FIELD_COLUMNS)


def field_params(item: ProfileField) -> tuple[Any, ...]:
    return row_values(
        item,
        FIELD_COLUMNS,
        id=str(item.id),
        value=dumps(item.value, f"field {item.name!r} value"),
        source=item.source.value,
        source_session_id=uid(item.source_session_id),
        source_scenario_id=uid(item.source_scenario_id),
        source_step_id=uid(item.source_step_id),
        source_item_id=uid(item.source_item_id),
        source_item_type=enum_opt(item.source_item_type),
        source_metadata=dumps(item.source_metadata, f"field {item.name!r} source_metadata"),
        status=item.status.value,
        superseded_by_id=uid(item.superseded_by_id),
        superseded_at=ts_opt(item.superseded_at),
        verified=int(item.verified),
        verified_at=ts_opt(item.verified_at),
        confidence=float(item.confidence),
        requires_confirmation=int(item.requires_confirmation),
        collected_at=ts(item.collected_at),
        updated_at=ts(item.updated_at),
        expires_at=ts_opt(item.expires_at),
        field_definition_id=uid(item.field_definition_id),
    )


def field_from_row(row: Row) -> ProfileField:
    data = _zip(FIELD_COLUMNS, row)
    data["value"] = orjson.loads(data["value"])
    data["source_metadata"] = orjson.loads(data["source_metadata"])
    data["verified"] = bool(data["verified"])
    data["requires_confirmation"] = bool(data["requires_confirmation"])
    return ProfileField.model_validate(data)


# ---------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------

ASSET_COLUMNS = columns(ProfileAsset)
ASSET_SELECT = ", ".join(ASSET_COLUMNS)

_MAX_INT64 = 2**63 - 1


def asset_params(item: ProfileAsset) -> tuple[Any, ...]:
    if item.size_bytes > _MAX_INT64:
        raise errors.ValidationError(f"asset {item.name!r} size_bytes is too large")
    return row_values(
        item,
        ASSET_COLUMNS,
        id=str(item.id),
        uploaded_at=ts(item.uploaded_at),
        uploaded_in_session_id=uid(item.uploaded_in_session_id),
        uploaded_in_scenario_id=uid(item.uploaded_in_scenario_id),
        source_item_id=uid(item.source_item_id),
        source_item_type=enum_opt(item.source_item_type),
        status=item.status.value,
        superseded_by_id=uid(item.superseded_by_id),
        superseded_at=ts_opt(item.superseded_at),
        verified=int(item.verified),
        verification_result=None
        if item.verification_result is None
        else dumps(item.verification_result, f"asset {item.name!r} verification_result"),
        expires_at=ts_opt(item.expires_at),
        analysis_field_ids=dumps([str(i) for i in item.analysis_field_ids], "analysis_field_ids"),
    )


def asset_from_row(row: Row) -> ProfileAsset:
    data = _zip(ASSET_COLUMNS, row)
    data["verified"] = bool(data["verified"])
    data["verification_result"] = loads(data["verification_result"])
    data["analysis_field_ids"] = orjson.loads(data["analysis_field_ids"])
    return ProfileAsset.model_validate(data)


# ---------------------------------------------------------------------------------------
# identities and consents
# ---------------------------------------------------------------------------------------

IDENTITY_SELECT = "channel, channel_user_id, verified, verified_at, is_primary, created_at"


def identity_params(item: ChannelIdentity) -> tuple[Any, ...]:
    return (
        item.channel.value,
        item.channel_user_id,
        int(item.verified),
        ts_opt(item.verified_at),
        int(item.primary),
        ts(item.created_at),
    )


def identity_from_row(row: Row) -> ChannelIdentity:
    return ChannelIdentity.model_validate(
        {
            "channel": row[0],
            "channel_user_id": row[1],
            "verified": bool(row[2]),
            "verified_at": row[3],
            "primary": bool(row[4]),
            "created_at": row[5],
        }
    )


CONSENT_COLUMNS = columns(Consent)
CONSENT_SELECT = ", ".join(CONSENT_COLUMNS)


def consent_params(item: Consent) -> tuple[Any, ...]:
    return row_values(
        item,
        CONSENT_COLUMNS,
        granted=int(item.granted),
        granted_at=ts_opt(item.granted_at),
        revoked_at=ts_opt(item.revoked_at),
        source_session_id=uid(item.source_session_id),
        ip_address=None if item.ip_address is None else str(item.ip_address),
    )


def consent_from_row(row: Row) -> Consent:
    data = _zip(CONSENT_COLUMNS, row)
    data["granted"] = bool(data["granted"])
    return Consent.model_validate(data)


# ---------------------------------------------------------------------------------------
# field definitions and scenario requirements
# ---------------------------------------------------------------------------------------

DEFINITION_COLUMNS = columns(ProfileFieldDefinition)
DEFINITION_SELECT = ", ".join(DEFINITION_COLUMNS)
_DEFINITION_BOOLS = ("required_verification", "is_pii", "encryption_required", "enabled")


def definition_params(item: ProfileFieldDefinition) -> tuple[Any, ...]:
    return row_values(
        item,
        DEFINITION_COLUMNS,
        id=str(item.id),
        tenant_id=str(item.tenant_id),
        agent_id=str(item.agent_id),
        value_type=item.value_type.value,
        allowed_values=None
        if item.allowed_values is None
        else dumps(item.allowed_values, "allowed_values"),
        required_verification=int(item.required_verification),
        verification_methods=dumps(item.verification_methods, "verification_methods"),
        extraction_examples=dumps(item.extraction_examples, "extraction_examples"),
        is_pii=int(item.is_pii),
        encryption_required=int(item.encryption_required),
        created_at=ts(item.created_at),
        updated_at=ts(item.updated_at),
        enabled=int(item.enabled),
        survivorship=item.survivorship.value,
        source_priority=dumps([s.value for s in item.source_priority], "source_priority"),
    )


def definition_from_row(row: Row) -> ProfileFieldDefinition:
    data = _zip(DEFINITION_COLUMNS, row)
    for key in _DEFINITION_BOOLS:
        data[key] = bool(data[key])
    data["allowed_values"] = loads(data["allowed_values"])
    data["verification_methods"] = orjson.loads(data["verification_methods"])
    data["extraction_examples"] = orjson.loads(data["extraction_examples"])
    data["source_priority"] = orjson.loads(data["source_priority"])
    return ProfileFieldDefinition.model_validate(data)


REQUIREMENT_COLUMNS = columns(ScenarioFieldRequirement)
REQUIREMENT_SELECT = ", ".join(REQUIREMENT_COLUMNS)


def requirement_params(item: ScenarioFieldRequirement) -> tuple[Any, ...]:
    if abs(item.collection_order) > _MAX_INT64:
        raise errors.ValidationError("collection_order is out of the 64-bit range")
    return row_values(
        item,
        REQUIREMENT_COLUMNS,
        id=str(item.id),
        tenant_id=str(item.tenant_id),
        agent_id=str(item.agent_id),
        scenario_id=str(item.scenario_id),
        step_id=uid(item.step_id),
        rule_id=uid(item.rule_id),
        required_level=item.required_level.value,
        fallback_action=item.fallback_action.value,
        depends_on_fields=dumps(item.depends_on_fields, "depends_on_fields"),
        created_at=ts(item.created_at),
        updated_at=ts(item.updated_at),
    )


def requirement_from_row(row: Row) -> ScenarioFieldRequirement:
    data = _zip(REQUIREMENT_COLUMNS, row)
    data["depends_on_fields"] = orjson.loads(data["depends_on_fields"])
    return ScenarioFieldRequirement.model_validate(data)
