"""Argument checks of the public store methods: one rule for every provider and wrapper.

Every public :class:`~ccvault.store.ProfileStore` method runs its arguments through these
before anything is read or written; a bad argument raises
:class:`~ccvault.errors.ValidationError`. Messages name the argument and the reason, never
a stored value (values are often personal data).

Edge values refused here, so that no backend ever sees them:

* **Strings that cannot be encoded as UTF-8** (lone surrogates such as ``"\\ud800"``),
  anywhere in a written model (values, nested JSON keys and values, names, metadata,
  identities, definitions, requirements) or in a string argument.
* **Timestamps** outside :data:`TIMESTAMP_MIN` .. :data:`TIMESTAMP_MAX` (UTC). Naive
  timestamps are refused by the models already (every timestamp is timezone-aware UTC).

A leaf module: it imports only :mod:`ccvault.errors` and :mod:`ccvault.models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import pydantic

from ccvault import errors
from ccvault.models import (
    Channel,
    CustomerProfile,
    ItemStatus,
    ItemType,
    ProfileField,
    RequiredLevel,
    check_json_value,
    is_valid_field_name,
)

__all__ = [
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "check_asset_name",
    "check_bool",
    "check_channel",
    "check_channel_user_id",
    "check_field_name",
    "check_item_type",
    "check_json_payload",
    "check_max_per_channel",
    "check_model",
    "check_optional_uuid",
    "check_read_fields",
    "check_read_profile",
    "check_required_level",
    "check_status",
    "check_text",
    "check_timestamp",
    "check_uuid",
    "check_written",
]

#: The earliest timestamp the vault stores (inclusive, UTC). Every provider must store and
#: read back every timestamp in ``[TIMESTAMP_MIN, TIMESTAMP_MAX]`` exactly (to the
#: microsecond, timezone-aware). One day inside Python's own range, so that converting an
#: accepted value to any UTC offset can never overflow, and so that no backend maps it to
#: a special value (asyncpg stores ``datetime.max`` in UTC as ``infinity`` and
#: ``datetime.min`` as ``-infinity``, both read back naive).
TIMESTAMP_MIN = datetime(1, 1, 2, tzinfo=UTC)
#: The latest timestamp the vault stores (inclusive, UTC). See :data:`TIMESTAMP_MIN`.
TIMESTAMP_MAX = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)

_M = TypeVar("_M", bound=pydantic.BaseModel)


def check_uuid(value: object, what: str) -> UUID:
    """``value`` as a UUID (a UUID or its string form), else a ValidationError naming ``what``."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise errors.ValidationError(f"{what} must be a UUID, got a {type(value).__name__}")


def check_optional_uuid(value: object, what: str) -> UUID | None:
    """As :func:`check_uuid`, with None allowed."""
    return None if value is None else check_uuid(value, what)


def check_bool(value: object, what: str) -> bool:
    """``value`` if it is a bool (not merely truthy), else a ValidationError."""
    if not isinstance(value, bool):
        raise errors.ValidationError(f"{what} must be a bool, got {_shown(value)}")
    return value


def check_text(value: str, what: str) -> str:
    """``value`` if it can be encoded as UTF-8, else a ValidationError (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.ValidationError(
            f"{what} holds a string that cannot be encoded as UTF-8 (a lone surrogate)"
        ) from None
    return value


def check_timestamp(value: datetime, what: str) -> datetime:
    """``value`` if timezone-aware and within [TIMESTAMP_MIN, TIMESTAMP_MAX], else a
    ValidationError saying the supported range."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.ValidationError(f"{what} must be timezone-aware")
    try:
        inside = TIMESTAMP_MIN <= value <= TIMESTAMP_MAX
    except OverflowError:  # comparing converts to UTC, which may overflow at the edges
        inside = False
    if not inside:
        raise errors.ValidationError(
            f"{what} is outside the supported range {TIMESTAMP_MIN.isoformat()} .. "
            f"{TIMESTAMP_MAX.isoformat()}"
        )
    return value


def check_written(value: object, what: str) -> None:
    """Refuse, anywhere inside ``value`` (a model, dict, list...), a string that cannot be
    encoded as UTF-8 or a timestamp outside the supported range.

    Messages name ``what`` and the model attribute, never the offending value or a key of
    free-form JSON (either may be personal data).
    """
    if isinstance(value, pydantic.BaseModel):
        for name, item in value.__dict__.items():
            _walk(item, f"{what}.{name}")
    else:
        _walk(value, what)


def _walk(value: object, where: str) -> None:
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, datetime):
        check_timestamp(value, where)
    elif isinstance(value, pydantic.BaseModel):
        for name, item in value.__dict__.items():
            _walk(item, f"{where}.{name}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(key, where)
            _walk(item, where)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _walk(item, where)


def check_model(cls: type[_M], value: object, what: str) -> _M:
    """A validated private copy of ``value``, so later changes by the caller cannot leak in.

    Beyond the model's own validation: every string must be encodable as UTF-8 and every
    timestamp within the supported range (:func:`check_written`).
    """
    if not isinstance(value, cls):
        raise errors.ValidationError(f"{what} must be a {cls.__name__}, got {type(value).__name__}")
    try:
        # warnings=False: a model built with model_construct may hold anything; validation
        # below reports it as a ValidationError instead of a serializer warning
        checked = cls.model_validate(value.model_dump(warnings=False))
    except pydantic.ValidationError as exc:
        problem = _describe(exc)
    except (OverflowError, UnicodeError):
        # a timestamp whose conversion to UTC overflows, a string the serializer refuses
        problem = "a value is out of range"
    else:
        check_written(checked, what)
        return checked
    # raised outside the except block: pydantic's error, whose text quotes the input, is
    # neither the cause nor the context of ours
    raise errors.ValidationError(f"invalid {what}: {problem}")


def check_read_profile(value: object, what: str = "profile") -> CustomerProfile:
    """``value`` itself, if it is a :class:`~ccvault.models.CustomerProfile`, for a method
    that only *reads* a few of its attributes and never stores or returns it
    (``get_missing_fields``). Nothing is copied or validated here: the method checks what it
    reads with :func:`check_read_fields`, right before it reads it (no ``await`` between),
    so neither a history it never looks at nor the rest of the profile costs anything."""
    if not isinstance(value, CustomerProfile):
        raise errors.ValidationError(
            f"{what} must be a CustomerProfile, got {type(value).__name__}"
        )
    if not isinstance(value.__dict__.get("tenant_id"), UUID):
        raise errors.ValidationError(f"invalid {what}: tenant_id is not a UUID")
    return value


def _aware(value: object) -> bool:
    return (
        isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None
    )


def check_read_fields(profile: CustomerProfile, what: str = "profile") -> dict[str, ProfileField]:
    """A snapshot (a new dict, the same field models) of ``profile.fields``, each ACTIVE
    version checked for what a reader of it uses: its name matches its key, its status,
    ``verified``, ``collected_at`` and ``expires_at`` have their types, its value is JSON.

    A model validated by pydantic always passes; one built with ``model_construct`` or
    edited through ``__dict__`` may not, and is refused with a ValidationError naming the
    attribute (never a value) rather than failing inside the evaluation.
    """
    fields = profile.__dict__.get("fields")
    if not isinstance(fields, dict):
        raise errors.ValidationError(f"invalid {what}: fields is not a mapping")
    snapshot = dict(fields)
    for key, item in snapshot.items():
        # the common case, all it reads as pydantic leaves it (a text value, UTC
        # timestamps), checked by subscripts; anything else, a missing attribute included,
        # goes through _check_read_field, which refuses it or lets it pass
        if item.__class__ is ProfileField:
            values = item.__dict__
            try:
                collected = values["collected_at"]
                expires = values["expires_at"]
                if not (
                    values["name"] != key
                    or values["status"].__class__ is not ItemStatus
                    or values["verified"].__class__ is not bool
                    or collected.__class__ is not datetime
                    or collected.tzinfo is not UTC
                    or not (
                        expires is None or (expires.__class__ is datetime and expires.tzinfo is UTC)
                    )
                    or values["value"].__class__ is not str
                ):
                    continue
            except KeyError:
                pass
        _check_read_field(key, item, what)
    return snapshot


def _check_read_field(key: object, item: object, what: str) -> None:
    """One version of :func:`check_read_fields`, every case."""
    if not isinstance(item, ProfileField):
        raise errors.ValidationError(f"invalid {what}: fields holds a {type(item).__name__}")
    values = item.__dict__
    if values.get("name") != key:
        raise errors.ValidationError(f"invalid {what}: a field is filed under another name")
    expires = values.get("expires_at")
    if (
        values.get("status").__class__ is not ItemStatus
        or values.get("verified").__class__ is not bool
        or not _aware(values.get("collected_at"))
        or not (expires is None or _aware(expires))
    ):
        raise errors.ValidationError(
            f"invalid {what}: field {_name(key)} has a status, verified flag or timestamp "
            "of the wrong type"
        )
    value = values.get("value")
    if value.__class__ is not str:  # the common case, JSON already
        try:
            check_json_value(value)
        except ValueError:
            raise errors.ValidationError(
                f"invalid {what}: the value of field {_name(key)} is not JSON"
            ) from None


def _name(key: object) -> str:
    # a key that is not a field name could be anything, personal data included
    return repr(key) if is_valid_field_name(key) else "(not a field name)"


def check_json_payload(value: Any, what: str) -> Any:
    """``value`` if it is a JSON value whose strings are all encodable as UTF-8."""
    try:
        check_json_value(value)
    except ValueError as exc:
        raise errors.ValidationError(f"{what}: {exc}") from None
    check_written(value, what)
    return value


def check_field_name(value: object, what: str = "field_name") -> str:
    """``value`` if it is a valid field name (``^[a-z_][a-z0-9_]*$``, at most 50)."""
    if not is_valid_field_name(value):
        raise errors.ValidationError(
            f"{what} must match ^[a-z_][a-z0-9_]*$ and be at most 50 characters, "
            f"got {_shown(value)}"
        )
    assert isinstance(value, str)
    return value


def check_asset_name(value: object) -> str:
    """``value`` if it is a valid asset name (as a field name, at most 100 characters)."""
    if not (isinstance(value, str) and 0 < len(value) <= 100 and is_valid_field_name(value[:50])):
        raise errors.ValidationError(f"asset_name is not a valid name: {_shown(value)}")
    return value


def check_max_per_channel(value: object) -> int | None:
    """``value`` if it is None (no limit) or an int (not a bool) from 1 to 100: the
    ``max_per_channel`` of ``link_channel``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise errors.ValidationError(
            f"max_per_channel must be None or an int from 1 to 100, got {_shown(value)}"
        )
    return value


def check_channel(value: object) -> Channel:
    """``value`` as a :class:`~ccvault.models.Channel`."""
    try:
        return Channel(value)  # type: ignore[arg-type]
    except ValueError:
        raise errors.ValidationError(
            f"channel must be one of {[c.value for c in Channel]}, got {_shown(value)}"
        ) from None


def check_channel_user_id(value: object) -> str:
    """``value`` if it is a usable channel user id (1..255 characters, no control
    characters, no surrounding blanks, encodable as UTF-8). Never echoed: it is personal
    data (a phone number, an address)."""
    if not isinstance(value, str) or not value or len(value) > 255:
        raise errors.ValidationError(
            f"channel_user_id must be a non-empty string of at most 255 characters, got "
            f"{type(value).__name__}"
        )
    if any(ord(ch) < 32 for ch in value) or value != value.strip():
        raise errors.ValidationError("channel_user_id must not hold control characters")
    return check_text(value, "channel_user_id")


def check_status(value: object) -> ItemStatus | None:
    """``value`` as an :class:`~ccvault.models.ItemStatus`, or None."""
    if value is None:
        return None
    try:
        return ItemStatus(value)  # type: ignore[arg-type]
    except ValueError:
        raise errors.ValidationError(
            f"status must be an ItemStatus or None, got {_shown(value)}"
        ) from None


def check_item_type(value: object) -> ItemType:
    """``value`` as an :class:`~ccvault.models.ItemType`."""
    try:
        return ItemType(value)  # type: ignore[arg-type]
    except ValueError:
        raise errors.ValidationError(
            f"item_type must be 'profile_field' or 'profile_asset', got {_shown(value)}"
        ) from None


def check_required_level(value: object) -> RequiredLevel | None:
    """``value`` as a :class:`~ccvault.models.RequiredLevel`, or None (every level)."""
    if value is None:
        return None
    try:
        return RequiredLevel(value)  # type: ignore[arg-type]
    except ValueError:
        raise errors.ValidationError(
            f"required_level must be 'hard', 'soft' or None, got {_shown(value)}"
        ) from None


def _shown(value: object) -> str:
    """A safe rendering of a bad argument: a string is never echoed (it may be personal
    data: an email address passed as an id), only its length; numbers, booleans and None
    are shown; anything else by its type."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return type(value).__name__


def _describe(exc: pydantic.ValidationError) -> str:
    """pydantic's problems without the offending input (it may be personal data): a
    location's parts are shown when they are positions or names (attributes, field names;
    a key of the caller's dict may be anything), and the error raised from here is never
    chained to ``exc``, whose text quotes the input."""
    problems = []
    for problem in exc.errors(include_input=False, include_url=False):
        where = ".".join(
            str(part) if isinstance(part, int) or is_valid_field_name(part) else "(a key)"
            for part in problem["loc"]
        )
        problems.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(problems)
