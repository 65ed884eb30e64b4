"""Schema validation of field values against their agent-scoped definitions.

Two layers:

* Pure checks, usable without a store: :func:`check_definition` (run by
  ``ProfileStore.save_field_definition`` before anything is written) refuses a definition the
  vault could not enforce; :func:`check_value` lists every problem of one value against one
  definition, each with an error type (:class:`ErrorType`).
* :class:`SchemaValidationService`, the service agents call: it looks definitions up through a
  store (cached per tenant and agent with the ``field_definitions_ttl_seconds`` TTL), applies
  the ``[profile]`` switches ``validation_enabled`` and ``validation_strict``, counts every
  error in ``profile_schema_validation_errors_total`` and raises
  :class:`~ccvault.errors.SchemaValidationError` with all of a field's errors at once.

:class:`ValidatingProfileStore` wraps a store for one agent: every field written through it
is validated first, and definition writes through it refresh the validator's cache.

Regular expressions run on RE2 (google-re2), whose matching time is linear in the input, so
no ``validation_regex`` can hang the process with catastrophic backtracking.

Error messages never quote the value being checked (``value is not a valid email address``):
values are often personal data, and messages end up in logs and API responses.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

import email_validator
import phonenumbers
import pydantic
import re2

from ccvault import errors, metrics
from ccvault.models import CustomerProfile, FieldValueType, ProfileField, ProfileFieldDefinition
from ccvault.settings import ProfileSettings, VaultSettings
from ccvault.store import ForwardingProfileStore, ProfileStore, check_uuid

__all__ = [
    "ErrorType",
    "FieldProblem",
    "SchemaValidationService",
    "ValidatingProfileStore",
    "check_definition",
    "check_type",
    "check_value",
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


def _re2_options() -> Any:
    options = re2.Options()
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
# the service
# ---------------------------------------------------------------------------------------


def _check_field(field: object) -> ProfileField:
    if not isinstance(field, ProfileField):
        raise errors.ValidationError(f"field must be a ProfileField, got {type(field).__name__}")
    return field


def _check_definitions(value: object) -> Mapping[str, ProfileFieldDefinition] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(item, ProfileFieldDefinition) for item in value.values()
    ):
        raise errors.ValidationError(
            "definitions must be a mapping of field name to ProfileFieldDefinition"
        )
    return value


_Key = tuple[UUID, UUID]


class SchemaValidationService:
    """Validates fields against their definitions; the definitions cache lives here.

    Definitions are fetched per (tenant, agent) with one store call and kept for
    ``definitions_ttl_seconds``. Writes made through :meth:`save_definition` and
    :meth:`delete_definition` drop the agent's entry at once, so this vault sees its own
    changes immediately; changes made by other processes (or directly on the store) are seen
    when the entry expires. :meth:`invalidate` drops entries on demand.

    A disabled definition (``enabled=False``) is not applied: the field counts as undefined.
    """

    def __init__(
        self,
        store: ProfileStore,
        *,
        enabled: bool = True,
        strict: bool = False,
        definitions_ttl_seconds: float = 3600.0,
        max_cached_agents: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if definitions_ttl_seconds < 0:
            raise errors.ConfigurationError("definitions_ttl_seconds must be >= 0")
        self.store = store
        self.enabled = enabled
        self.strict = strict
        self.definitions_ttl_seconds = definitions_ttl_seconds
        self._max_cached_agents = max(1, max_cached_agents)
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[float, dict[str, ProfileFieldDefinition]]] = (
            OrderedDict()
        )
        # bumped by every invalidation, so a fetch that overlapped a definition write is
        # never cached (one counter: conservative, and no per-key bookkeeping to grow)
        self._epoch = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, store: ProfileStore, settings: VaultSettings | ProfileSettings) -> Self:
        """A service configured by ``[profile]``: ``validation_enabled``,
        ``validation_strict`` and ``field_definitions_ttl_seconds``."""
        profile = settings.profile if isinstance(settings, VaultSettings) else settings
        return cls(
            store,
            enabled=profile.validation_enabled,
            strict=profile.validation_strict,
            definitions_ttl_seconds=profile.field_definitions_ttl_seconds,
        )

    # -- definitions ------------------------------------------------------------------------

    async def get_definitions(
        self, tenant_id: UUID, agent_id: UUID
    ) -> dict[str, ProfileFieldDefinition]:
        """The agent's enabled definitions by name (cached; one store call per miss)."""
        key = (check_uuid(tenant_id, "tenant_id"), check_uuid(agent_id, "agent_id"))
        tenant_id, agent_id = key
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry[0] > now:
                self._cache.move_to_end(key)
                return dict(entry[1])
            epoch = self._epoch
        found = await self.store.get_field_definitions(tenant_id, agent_id, enabled_only=True)
        definitions = {definition.name: definition for definition in found}
        with self._lock:
            if self._epoch == epoch and self.definitions_ttl_seconds > 0:
                self._cache[key] = (now + self.definitions_ttl_seconds, definitions)
                self._cache.move_to_end(key)
                while len(self._cache) > self._max_cached_agents:
                    self._cache.popitem(last=False)
        return dict(definitions)

    async def get_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        """The agent's enabled definition of ``field_name``, or None (cached)."""
        return (await self.get_definitions(tenant_id, agent_id)).get(field_name)

    def invalidate(self, tenant_id: UUID | None = None, agent_id: UUID | None = None) -> None:
        """Drop cached definitions: of one agent, of a whole tenant, or (no args) all."""
        with self._lock:
            self._epoch += 1
            for key in [
                key
                for key in self._cache
                if (tenant_id is None or key[0] == tenant_id)
                and (agent_id is None or key[1] == agent_id)
            ]:
                del self._cache[key]

    async def save_definition(self, definition: ProfileFieldDefinition) -> UUID:
        """Save through the store (which refuses what :func:`check_definition` refuses) and
        drop the agent's cached definitions; return the definition's id."""
        if not isinstance(definition, ProfileFieldDefinition):
            raise errors.ValidationError(
                f"definition must be a ProfileFieldDefinition, got {type(definition).__name__}"
            )
        try:
            # a model built with model_construct() may hold an unknown value_type: refuse it
            # as a vault ValidationError rather than a pydantic one
            checked = ProfileFieldDefinition.model_validate(definition.model_dump())
        except pydantic.ValidationError as exc:
            raise errors.ValidationError(f"invalid definition: {exc}") from None
        try:
            return await self.store.save_field_definition(checked)
        finally:
            self.invalidate(checked.tenant_id, checked.agent_id)

    async def delete_definition(self, tenant_id: UUID, agent_id: UUID, field_name: str) -> bool:
        """Delete through the store and drop the agent's cached definitions."""
        try:
            return await self.store.delete_field_definition(tenant_id, agent_id, field_name)
        finally:
            self.invalidate(tenant_id, agent_id)

    # -- validation --------------------------------------------------------------------------

    def validate_field(self, field: ProfileField, definition: ProfileFieldDefinition) -> list[str]:
        """The seed's signature: every error message of ``field`` (empty when valid).

        Not subject to ``validation_enabled`` and not counted: a pure check.
        """
        field = _check_field(field)
        if not isinstance(definition, ProfileFieldDefinition):
            raise errors.ValidationError(
                f"definition must be a ProfileFieldDefinition, got {type(definition).__name__}"
            )
        return [p.message for p in check_value(field.value, definition, verified=field.verified)]

    async def check(
        self,
        tenant_id: UUID,
        agent_id: UUID,
        field: ProfileField,
        *,
        definitions: Mapping[str, ProfileFieldDefinition] | None = None,
    ) -> list[FieldProblem]:
        """Every problem of ``field`` under the configured rules, each counted in
        ``profile_schema_validation_errors_total``. Empty when valid or validation is off.

        ``definitions`` (name -> definition) spares a lookup when the caller has them.
        Bad arguments raise :class:`~ccvault.errors.ValidationError`.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        agent_id = check_uuid(agent_id, "agent_id")
        field = _check_field(field)
        definitions = _check_definitions(definitions)
        if not self.enabled:
            return []
        if definitions is None:
            definitions = await self.get_definitions(tenant_id, agent_id)
        definition = definitions.get(field.name)
        if definition is None or not definition.enabled:
            problems = (
                [
                    FieldProblem(
                        ErrorType.UNDEFINED,
                        f"no definition for field {field.name!r} (validation_strict is on)",
                    )
                ]
                if self.strict
                else []
            )
        else:
            problems = check_value(field.value, definition, verified=field.verified)
        for problem in problems:
            metrics.SCHEMA_VALIDATION_ERRORS.labels(
                tenant_id=str(tenant_id),
                field_name=field.name,
                error_type=problem.error_type.value,
            ).inc()
        return problems

    async def validate_and_raise(
        self,
        tenant_id: UUID,
        agent_id: UUID,
        field: ProfileField,
        *,
        definitions: Mapping[str, ProfileFieldDefinition] | None = None,
    ) -> None:
        """Raise :class:`~ccvault.errors.SchemaValidationError` listing all of the field's
        errors (and their types) if it breaks its definition."""
        problems = await self.check(tenant_id, agent_id, field, definitions=definitions)
        if problems:
            raise errors.SchemaValidationError(
                field.name,
                [p.message for p in problems],
                [p.error_type.value for p in problems],
            )

    async def update_field(
        self,
        tenant_id: UUID,
        agent_id: UUID,
        profile_id: UUID,
        field: ProfileField,
        *,
        supersede_existing: bool = True,
    ) -> UUID:
        """Validate ``field`` for the agent, then store it with ``store.update_field``.

        Nothing is written when validation fails. With a definition, the field is stored with
        the definition's ``value_type`` and (unless it has one) its ``field_definition_id``.
        This is the write path for agents: the store itself cannot validate, since
        definitions are agent-scoped and ``update_field`` carries no agent. Bad arguments
        raise :class:`~ccvault.errors.ValidationError` before anything is written.
        """
        tenant_id = check_uuid(tenant_id, "tenant_id")
        agent_id = check_uuid(agent_id, "agent_id")
        profile_id = check_uuid(profile_id, "profile_id")
        field = _check_field(field)
        if not isinstance(supersede_existing, bool):
            raise errors.ValidationError(
                f"supersede_existing must be a bool, got {supersede_existing!r}"
            )
        definitions = await self.get_definitions(tenant_id, agent_id)
        await self.validate_and_raise(tenant_id, agent_id, field, definitions=definitions)
        definition = definitions.get(field.name)
        if definition is not None:
            # the value passed the definition's type check: record that type and the link
            field = field.model_copy(
                update={
                    "value_type": definition.value_type.value,
                    "field_definition_id": field.field_definition_id or definition.id,
                }
            )
        return await self.store.update_field(
            tenant_id, profile_id, field, supersede_existing=supersede_existing
        )


class ValidatingProfileStore(ForwardingProfileStore):
    """A store wrapper that validates what one agent writes, and keeps the definitions
    cache of its validator in step with definition writes made through it.

    Definitions are agent-scoped while ``update_field`` and ``save`` carry no agent, so the
    wrapper is bound to one ``agent_id``: an agent's runtime wraps its vault once and every
    field it writes (``update_field``, new or changed fields in ``save``) is validated first;
    nothing is written when one fails. Merges and reads are not validated (they move or show
    values already stored). Definitions saved or deleted through this store (for any agent)
    drop the validator's cached entry at once.
    """

    def __init__(
        self, inner: ProfileStore, validator: SchemaValidationService, agent_id: UUID
    ) -> None:
        super().__init__(inner)
        self.validator = validator
        self.agent_id = agent_id

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        await self.validator.validate_and_raise(tenant_id, self.agent_id, field)
        return await super()._update_field(tenant_id, profile_id, field, supersede_existing)

    async def _save(self, profile: CustomerProfile) -> UUID:
        if profile.fields:
            stored = await self.inner.get_by_id(profile.tenant_id, profile.id)
            before = stored.fields if stored is not None else {}
            definitions = await self.validator.get_definitions(profile.tenant_id, self.agent_id)
            for field in profile.fields.values():
                old = before.get(field.name)
                unchanged = (
                    old is not None
                    and old.id == field.id
                    and old.value == field.value
                    and old.verified == field.verified
                )
                if not unchanged:
                    # only what this save writes anew; a value stored earlier under an older
                    # definition does not block an unrelated change
                    await self.validator.validate_and_raise(
                        profile.tenant_id, self.agent_id, field, definitions=definitions
                    )
        return await super()._save(profile)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        try:
            return await super()._save_field_definition(definition)
        finally:
            self.validator.invalidate(definition.tenant_id, definition.agent_id)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        try:
            return await super()._delete_field_definition(tenant_id, agent_id, field_name)
        finally:
            self.validator.invalidate(tenant_id, agent_id)
