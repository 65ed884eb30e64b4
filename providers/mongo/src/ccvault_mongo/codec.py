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
* A stored document that cannot be read back (written outside the vault, corrupted) raises
  :class:`~ccvault.errors.StorageError` through :func:`read_back`, whose message names the
  collection and the attribute, never the stored value (it may be personal data).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

from bson.binary import Binary, UuidRepresentation
from bson.int64 import Int64

from ccvault import errors
from ccvault.storage import MODEL_ATTRIBUTES, corrupt_row

__all__ = [
    "JSON_SUFFIX",
    "decode",
    "decode_document",
    "dt",
    "encode",
    "is_bson_safe",
    "pack_json",
    "read_back",
    "uid",
    "unpack_json",
]

JSON_SUFFIX = "__json"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_T = TypeVar("_T")


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


# ---------------------------------------------------------------------------------------
# a stored document that cannot be read back
# ---------------------------------------------------------------------------------------

#: what a document of each collection is, for messages
_KINDS = {
    "profiles": "profile",
    "identities": "channel identity",
    "consents": "consent",
    "fields": "field",
    "assets": "asset",
    "definitions": "field definition",
    "requirements": "scenario requirement",
    "merge_log": "merge log",
}
#: the provider's own keys of a stored document: with the vault models' attributes
#: (``ccvault.storage.MODEL_ATTRIBUTES``), the names a message may quote from a document
#: or a validation error's location. Any other key (of a stored JSON object, or one the
#: vault never writes) may itself be personal data.
_OWN_KEYS = frozenset(
    {
        "profile_id",
        "seq",
        "position",
        "live",
        "merging_into",
        "purging",
        "released_identities",
        "record",
        "write_seq",
    }
)
#: what decoding a stored value may raise (json.JSONDecodeError is a ValueError)
_DECODING_ERRORS = (ValueError, TypeError, LookupError, AttributeError, OverflowError)


def _known(key: object) -> bool:
    return key in MODEL_ATTRIBUTES or key in _OWN_KEYS


def read_back(collection: str, attribute: str | None, build: Callable[..., _T], *args: Any) -> _T:
    """``build(*args)``, which turns (part of) a document read from ``collection`` into
    what the store returns; a document the vault did not write (or a corrupted one)
    raises :class:`~ccvault.errors.StorageError` naming the collection and the attribute
    (``attribute``, when the call reads one; a key the vault writes that is missing),
    never the stored value (:func:`ccvault.storage.corrupt_row`)."""
    try:
        return build(*args)
    except errors.VaultError:  # already ours (errors.ValidationError is a ValueError)
        raise
    except _DECODING_ERRORS as exc:  # pydantic's ValidationError is a ValueError
        key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if attribute is None and _known(key):
            attribute = str(key)  # a key the vault writes is missing
        where = collection if attribute is None else f"{collection}.{attribute}"
        error = corrupt_row(f"{_KINDS.get(collection, '')} document", where, exc, names=_OWN_KEYS)
    # outside the except block: not chained to the original error, whose text may quote
    raise error


def decode_document(collection: str, document: dict[str, Any]) -> dict[str, Any]:
    """:func:`decode` of a whole stored document; a value it cannot decode (a binary UUID
    of the wrong length) raises StorageError naming the attribute, found on that slow path
    only."""
    try:
        data: dict[str, Any] = decode(document)
        return data
    except _DECODING_ERRORS:
        pass
    for key, value in document.items():
        read_back(collection, key if _known(key) else "?", decode, value)
    raise AssertionError("unreachable: decode failed on a document, not on any value")
