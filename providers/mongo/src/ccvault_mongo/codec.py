"""How vault models become MongoDB documents and back, losslessly.

* UUIDs are BSON binary subtype 4 (``Binary.from_uuid``), built explicitly, so the client
  needs no ``uuidRepresentation`` setting and the emulation stores exactly the same bytes.
* Timestamps are fixed-width ISO-8601 UTC strings with microseconds
  (``2026-05-01T09:30:00.123456Z``). A BSON date holds milliseconds only, which would change
  ``collected_at`` on the way through and break "newest first" between versions written in
  the same millisecond. Fixed width makes string order equal time order, so range queries
  (``expires_at <= now``) and sorted indexes work on them.
* JSON values (a field's ``value``, ``source_metadata``, an asset's ``verification_result``,
  a definition's ``allowed_values``) are stored as native BSON when BSON can hold them
  exactly; a value it cannot (an integer beyond 64 bits, an object key with ``.``, a leading
  ``$`` or a NUL) is stored as JSON text under ``<name>__json`` instead.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from uuid import UUID

from bson.binary import Binary, UuidRepresentation
from bson.int64 import Int64

__all__ = [
    "JSON_SUFFIX",
    "decode",
    "dt",
    "encode",
    "is_bson_safe",
    "pack_json",
    "uid",
    "unpack_json",
]

JSON_SUFFIX = "__json"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def uid(value: UUID) -> Binary:
    """A UUID as BSON binary subtype 4."""
    return Binary.from_uuid(value, UuidRepresentation.STANDARD)


def dt(value: datetime) -> str:
    """A timestamp as a fixed-width, sortable UTC string with microseconds."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode(value: Any) -> Any:
    """``value`` (a ``model_dump(mode="python")`` result) with UUIDs, timestamps, enums and
    IP addresses in their stored form; JSON values pass through unchanged."""
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, UUID):
        return uid(value)
    if isinstance(value, datetime):
        return dt(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` as far as pydantic needs it: binary UUIDs become UUIDs,
    ``Int64`` becomes ``int`` (timestamps stay strings; the model parses them)."""
    if isinstance(value, dict):
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, Binary) and value.subtype == 4:
        return value.as_uuid(UuidRepresentation.STANDARD)
    if isinstance(value, Int64):
        return int(value)  # the driver decodes 64-bit integers as Int64; a value is an int
    return value


def is_bson_safe(value: Any) -> bool:
    """True when BSON stores ``value`` (a JSON value) exactly as it is."""
    if value is None or isinstance(value, (bool, str, float)):
        return True
    if isinstance(value, int):
        return _INT64_MIN <= value <= _INT64_MAX
    if isinstance(value, list):
        return all(is_bson_safe(item) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str)
            and "." not in key
            and "\x00" not in key
            and not key.startswith("$")
            and is_bson_safe(item)
            for key, item in value.items()
        )
    return False


def pack_json(document: dict[str, Any], key: str) -> None:
    """Move ``document[key]`` to ``<key>__json`` as JSON text unless BSON holds it exactly."""
    value = document.get(key)
    if not is_bson_safe(value):
        document[key] = None
        document[key + JSON_SUFFIX] = json.dumps(value, ensure_ascii=False, allow_nan=False)


def unpack_json(document: dict[str, Any], key: str) -> None:
    """The inverse of :func:`pack_json`."""
    text = document.pop(key + JSON_SUFFIX, None)
    if text is not None:
        document[key] = json.loads(text)
