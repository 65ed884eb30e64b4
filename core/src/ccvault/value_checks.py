"""The pure checks of field values and definitions, usable without a store.

:func:`check_definition` (run by ``ProfileStore.save_field_definition`` before anything is
written) refuses a definition the vault could not enforce; :func:`check_value` lists every
problem of one value against one definition, each with an error type (:class:`ErrorType`).
Regular expressions run on RE2 (google-re2), whose matching time is linear in the input.

A leaf module (it imports only :mod:`ccvault.errors` and :mod:`ccvault.models`), so the store
can run these checks without depending on :mod:`ccvault.validation`, whose service and store
wrapper depend on the store. Every name here is importable from :mod:`ccvault.validation` too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

import orjson

from ccvault import errors
from ccvault.extras import requires_extra
from ccvault.models import FieldValueType, ProfileField, ProfileFieldDefinition

# The checking libraries are imported on first use (the ``validation`` extra): the store
# imports this module, and a definition needing none of them works without the extra.

__all__ = [
    "ErrorType",
    "FieldProblem",
    "check_definition",
    "check_type",
    "check_value",
    "check_value_size",
    "compile_pattern",
]


class ErrorType(StrEnum):
    """The ``error_type`` label of ``profile_schema_validation_errors_total``."""

    TYPE = "type"
    REGEX = "regex"
    ALLOWED_VALUES = "allowed_values"
    VERIFICATION = "verification"
    UNDEFINED = "undefined"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One reason a value breaks its definition."""

    error_type: ErrorType
    message: str


# ---------------------------------------------------------------------------------------
# regular expressions: RE2 only
# ---------------------------------------------------------------------------------------

_RE2_MAX_MEM = 8 << 20  # RE2's own default: a pattern needing more is refused at save


def _re2() -> Any:
    with requires_extra("validation", "A validation_regex (checked by RE2)"):
        import re2
    return re2


def _re2_options() -> Any:
    options = _re2().Options()
    options.log_errors = False  # the reason travels in the exception; keep stderr quiet
    options.max_mem = _RE2_MAX_MEM
    return options


def _reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (linear-time matching); ValidationError with the reason
    when RE2 cannot compile it (back-references, look-arounds, syntax errors, too large)."""
    re2 = _re2()
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as exc:
        raise errors.ValidationError(
            f"validation_regex {pattern!r} cannot be compiled by the linear-time engine "
            f"(RE2): {_reason(exc)}"
        ) from None


# ---------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    # bool is an int subclass in Python, but true/false is not a number in JSON
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _date_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected an ISO 8601 date string, got {type(value).__name__}"
    try:
        date.fromisoformat(value)
    except ValueError:
        return "value is not an ISO 8601 date (YYYY-MM-DD)"
    return None


def _email_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected an email address string, got {type(value).__name__}"
    with requires_extra("validation", "The email value_type check"):
        import email_validator
    try:
        # syntax only: no DNS lookups, ever
        email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        # the library's reason may quote parts of the address: never echo the value
        return "value is not a valid email address"
    return None


def _phone_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected an E.164 phone number string, got {type(value).__name__}"
    if not value.startswith("+"):
        return "value is not in E.164 form (+ and country code, digits only)"
    with requires_extra("validation", "The phone value_type check"):
        import phonenumbers
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        # the library's reasons are fixed texts that never quote the input
        return f"value is not a phone number: {exc}"
    if not phonenumbers.is_valid_number(number):
        return "value is not a valid phone number"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 != value:
        return "value is not in E.164 form (+ and country code, digits only, no punctuation)"
    return None


def _simple(predicate: Callable[[object], bool], expected: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if predicate(value):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected {expected}, got a non-finite number"
        return f"expected {expected}, got {type(value).__name__}"

    return check


_TYPE_CHECKS: dict[FieldValueType, Callable[[object], str | None]] = {
    FieldValueType.STRING: _simple(lambda v: isinstance(v, str), "a string"),
    FieldValueType.NUMBER: _simple(_is_number, "a finite number (not a boolean)"),
    FieldValueType.BOOLEAN: _simple(lambda v: isinstance(v, bool), "a boolean"),
    FieldValueType.DATE: _date_problem,
    FieldValueType.EMAIL: _email_problem,
    FieldValueType.PHONE: _phone_problem,
    FieldValueType.JSON: _simple(lambda v: isinstance(v, (dict, list)), "a JSON object or array"),
}


def check_type(value: object, value_type: FieldValueType | str) -> str | None:
    """Why ``value`` is not of ``value_type``, or None when it is."""
    try:
        kind = FieldValueType(value_type)
    except ValueError:
        return f"unknown value_type {value_type!r}"
    return _TYPE_CHECKS[kind](value)


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _allowed(value: object, allowed: list[Any]) -> bool:
    # ``True in [1]`` holds in Python; in JSON a boolean is never equal to a number
    return any(_json_kind(value) == _json_kind(item) and value == item for item in allowed)


# ---------------------------------------------------------------------------------------
# the pure checks
# ---------------------------------------------------------------------------------------


def check_definition(definition: ProfileFieldDefinition) -> None:
    """Refuse a definition the vault could not enforce, with the reason.

    Raises :class:`~ccvault.errors.ValidationError` when the ``value_type`` is unknown, the
    ``validation_regex`` cannot be compiled by RE2, or an ``allowed_values`` entry is not of
    the definition's own type (no value could ever pass both checks).
    """
    try:
        kind = FieldValueType(definition.value_type)
    except ValueError:
        raise errors.ValidationError(
            f"value_type of {definition.name!r} must be one of "
            f"{[t.value for t in FieldValueType]}, got {definition.value_type!r}"
        ) from None
    if definition.validation_regex is not None:
        compile_pattern(definition.validation_regex)
    for item in definition.allowed_values or []:
        problem = check_type(item, kind)
        if problem is not None:
            raise errors.ValidationError(
                f"allowed_values of {definition.name!r} holds {item!r}, which is not a "
                f"{kind.value}: {problem}"
            )


def check_value(
    value: object, definition: ProfileFieldDefinition, *, verified: bool = False
) -> list[FieldProblem]:
    """Every problem of ``value`` against ``definition`` (empty when valid).

    Checks, all reported together: the type; the ``validation_regex`` (RE2, anchored at the
    start like ``re.match``; applied to string values); ``allowed_values`` (JSON equality:
    ``true`` never equals ``1``); and ``required_verification`` against ``verified``.
    """
    found: list[FieldProblem] = []
    type_problem = check_type(value, definition.value_type)
    if type_problem is not None:
        found.append(FieldProblem(ErrorType.TYPE, type_problem))
    if definition.validation_regex is not None and isinstance(value, str):
        if compile_pattern(definition.validation_regex).match(value) is None:
            found.append(
                FieldProblem(
                    ErrorType.REGEX,
                    f"value does not match the pattern {definition.validation_regex!r}",
                )
            )
    if definition.allowed_values is not None and not _allowed(value, definition.allowed_values):
        found.append(
            FieldProblem(
                ErrorType.ALLOWED_VALUES,
                f"value is not one of the allowed values {definition.allowed_values!r}",
            )
        )
    if definition.required_verification and not verified:
        found.append(
            FieldProblem(
                ErrorType.VERIFICATION, "the field requires verification but is not verified"
            )
        )
    return found


# ---------------------------------------------------------------------------------------
# size
# ---------------------------------------------------------------------------------------


def _json_size(value: object, limit: int) -> int:
    """The size in bytes of ``value`` as JSON, or more than ``limit`` as soon as that is
    certain (a string longer than ``limit`` characters is not serialized at all)."""
    if isinstance(value, str) and len(value) > limit:
        return len(value)
    try:
        return len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return 0  # not JSON orjson can write (a 65-bit integer): the model's checks decide


def check_value_size(field: ProfileField, limit: int, what: str = "field") -> None:
    """Refuse a field whose ``value`` or ``source_metadata`` serializes to more than
    ``limit`` bytes of JSON (``[profile] max_field_value_bytes``), with a ValidationError
    naming the field and the sizes, never the content."""
    for attribute in ("value", "source_metadata"):
        size = _json_size(getattr(field, attribute), limit)
        if size > limit:
            raise errors.ValidationError(
                f"{what} {field.name!r}: its {attribute} is {size:,} bytes as JSON, more than "
                f"the {limit:,} allowed ([profile] max_field_value_bytes)"
            )
