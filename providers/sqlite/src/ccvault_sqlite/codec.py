"""Conversions between the vault's models and SQLite rows.

Column tuples below are the single source of truth for column order: ``*_params`` builds the
bound values in that order, ``*_from_row`` reads a row selected with ``*_SELECT``.
Timestamps become fixed-width ISO-8601 UTC text, so comparing the text compares the times.
JSON values are stored as JSON text written by orjson; a value orjson cannot write
losslessly (an integer beyond 64 bits, a string with lone surrogates) is refused with
:class:`~ccvault.errors.ValidationError` before any statement runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
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


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _zip(columns: Sequence[str], row: Row) -> dict[str, Any]:
    return dict(zip(columns, row, strict=False))


# ---------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------

FIELD_COLUMNS = (
    "id",
    "name",
    "value",
    "value_type",
    "source",
    "source_session_id",
    "source_scenario_id",
    "source_step_id",
    "source_item_id",
    "source_item_type",
    "source_metadata",
    "status",
    "superseded_by_id",
    "superseded_at",
    "verified",
    "verification_method",
    "verified_at",
    "verified_by",
    "confidence",
    "requires_confirmation",
    "collected_at",
    "updated_at",
    "expires_at",
    "field_definition_id",
)
FIELD_SELECT = ", ".join(FIELD_COLUMNS)


def field_params(item: ProfileField) -> tuple[Any, ...]:
    return (
        str(item.id),
        item.name,
        dumps(item.value, f"field {item.name!r} value"),
        item.value_type,
        item.source.value,
        uid(item.source_session_id),
        uid(item.source_scenario_id),
        uid(item.source_step_id),
        uid(item.source_item_id),
        None if item.source_item_type is None else item.source_item_type.value,
        dumps(item.source_metadata, f"field {item.name!r} source_metadata"),
        item.status.value,
        uid(item.superseded_by_id),
        ts_opt(item.superseded_at),
        int(item.verified),
        item.verification_method,
        ts_opt(item.verified_at),
        item.verified_by,
        float(item.confidence),
        int(item.requires_confirmation),
        ts(item.collected_at),
        ts(item.updated_at),
        ts_opt(item.expires_at),
        uid(item.field_definition_id),
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

ASSET_COLUMNS = (
    "id",
    "name",
    "asset_type",
    "storage_provider",
    "storage_path",
    "mime_type",
    "size_bytes",
    "checksum",
    "uploaded_at",
    "uploaded_in_session_id",
    "uploaded_in_scenario_id",
    "source_item_id",
    "source_item_type",
    "derived_from_tool",
    "status",
    "superseded_by_id",
    "superseded_at",
    "verified",
    "verification_result",
    "retention_policy",
    "expires_at",
    "analysis_field_ids",
)
ASSET_SELECT = ", ".join(ASSET_COLUMNS)

_MAX_INT64 = 2**63 - 1


def asset_params(item: ProfileAsset) -> tuple[Any, ...]:
    if item.size_bytes > _MAX_INT64:
        raise errors.ValidationError(f"asset {item.name!r} size_bytes is too large")
    return (
        str(item.id),
        item.name,
        item.asset_type,
        item.storage_provider,
        item.storage_path,
        item.mime_type,
        item.size_bytes,
        item.checksum,
        ts(item.uploaded_at),
        uid(item.uploaded_in_session_id),
        uid(item.uploaded_in_scenario_id),
        uid(item.source_item_id),
        None if item.source_item_type is None else item.source_item_type.value,
        item.derived_from_tool,
        item.status.value,
        uid(item.superseded_by_id),
        ts_opt(item.superseded_at),
        int(item.verified),
        None
        if item.verification_result is None
        else dumps(item.verification_result, f"asset {item.name!r} verification_result"),
        item.retention_policy,
        ts_opt(item.expires_at),
        dumps([str(i) for i in item.analysis_field_ids], "analysis_field_ids"),
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


CONSENT_COLUMNS = (
    "consent_type",
    "granted",
    "granted_at",
    "revoked_at",
    "source_session_id",
    "ip_address",
)
CONSENT_SELECT = ", ".join(CONSENT_COLUMNS)


def consent_params(item: Consent) -> tuple[Any, ...]:
    return (
        item.consent_type,
        int(item.granted),
        ts_opt(item.granted_at),
        ts_opt(item.revoked_at),
        uid(item.source_session_id),
        None if item.ip_address is None else str(item.ip_address),
    )


def consent_from_row(row: Row) -> Consent:
    data = _zip(CONSENT_COLUMNS, row)
    data["granted"] = bool(data["granted"])
    return Consent.model_validate(data)


# ---------------------------------------------------------------------------------------
# field definitions and scenario requirements
# ---------------------------------------------------------------------------------------

DEFINITION_COLUMNS = (
    "id",
    "tenant_id",
    "agent_id",
    "name",
    "display_name",
    "description",
    "value_type",
    "validation_regex",
    "validation_tool_id",
    "allowed_values",
    "required_verification",
    "verification_methods",
    "collection_prompt",
    "extraction_examples",
    "extraction_prompt_hint",
    "is_pii",
    "encryption_required",
    "retention_days",
    "freshness_seconds",
    "created_at",
    "updated_at",
    "enabled",
)
DEFINITION_SELECT = ", ".join(DEFINITION_COLUMNS)
_DEFINITION_BOOLS = ("required_verification", "is_pii", "encryption_required", "enabled")


def definition_params(item: ProfileFieldDefinition) -> tuple[Any, ...]:
    return (
        str(item.id),
        str(item.tenant_id),
        str(item.agent_id),
        item.name,
        item.display_name,
        item.description,
        item.value_type.value,
        item.validation_regex,
        item.validation_tool_id,
        None
        if item.allowed_values is None
        else dumps(item.allowed_values, "allowed_values"),
        int(item.required_verification),
        dumps(item.verification_methods, "verification_methods"),
        item.collection_prompt,
        dumps(item.extraction_examples, "extraction_examples"),
        item.extraction_prompt_hint,
        int(item.is_pii),
        int(item.encryption_required),
        item.retention_days,
        item.freshness_seconds,
        ts(item.created_at),
        ts(item.updated_at),
        int(item.enabled),
    )


def definition_from_row(row: Row) -> ProfileFieldDefinition:
    data = _zip(DEFINITION_COLUMNS, row)
    for key in _DEFINITION_BOOLS:
        data[key] = bool(data[key])
    data["allowed_values"] = loads(data["allowed_values"])
    data["verification_methods"] = orjson.loads(data["verification_methods"])
    data["extraction_examples"] = orjson.loads(data["extraction_examples"])
    return ProfileFieldDefinition.model_validate(data)


REQUIREMENT_COLUMNS = (
    "id",
    "tenant_id",
    "agent_id",
    "scenario_id",
    "step_id",
    "rule_id",
    "field_name",
    "required_level",
    "fallback_action",
    "when_condition",
    "depends_on_fields",
    "collection_order",
    "created_at",
    "updated_at",
)
REQUIREMENT_SELECT = ", ".join(REQUIREMENT_COLUMNS)


def requirement_params(item: ScenarioFieldRequirement) -> tuple[Any, ...]:
    if abs(item.collection_order) > _MAX_INT64:
        raise errors.ValidationError("collection_order is out of the 64-bit range")
    return (
        str(item.id),
        str(item.tenant_id),
        str(item.agent_id),
        str(item.scenario_id),
        uid(item.step_id),
        uid(item.rule_id),
        item.field_name,
        item.required_level.value,
        item.fallback_action.value,
        item.when_condition,
        dumps(item.depends_on_fields, "depends_on_fields"),
        item.collection_order,
        ts(item.created_at),
        ts(item.updated_at),
    )


def requirement_from_row(row: Row) -> ScenarioFieldRequirement:
    data = _zip(REQUIREMENT_COLUMNS, row)
    data["depends_on_fields"] = orjson.loads(data["depends_on_fields"])
    return ScenarioFieldRequirement.model_validate(data)
