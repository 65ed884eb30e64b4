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

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Self
from uuid import UUID

import pydantic

from ccvault import errors, metrics
from ccvault.arguments import check_uuid
from ccvault.models import CustomerProfile, ProfileField, ProfileFieldDefinition
from ccvault.settings import ProfileSettings, VaultSettings
from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault.value_checks import (
    ErrorType,
    FieldProblem,
    check_definition,
    check_type,
    check_value,
    compile_pattern,
)

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
                # a label value only from a stored definition, never a client's invention
                field_name=field.name if definition is not None else metrics.UNDEFINED_FIELD,
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
            stored = await super()._get_by_id(profile.tenant_id, profile.id, False)
            now = self.now()
            # as the public layer presents it: a version past expires_at is not current
            before = (
                {name: f for name, f in stored.fields.items() if not f.is_expired(now)}
                if stored is not None
                else {}
            )
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
