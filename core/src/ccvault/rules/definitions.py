"""Saving field definitions and scenario requirements: which row is written, or a conflict.

The rule (one behaviour on every provider, and so through the cache):

* A field definition is unique per (tenant, agent, name); a requirement per (tenant,
  scenario, step, rule, field name). Saving by an existing natural key updates that row and
  keeps its stored ``id`` and ``created_at``.
* An id is bound to the row it was first stored as: to its tenant, its agent and its
  natural key (for a requirement: its agent and its scenario, step, rule and field name).
  Saving a stored id under another agent, another scenario or another name is a
  :class:`~ccvault.errors.ConflictError` and nothing is written — a definition or a
  requirement never moves between agents or scenarios, and is never renamed in place.
* A requirement's natural key does not name the agent; a stored requirement of that key
  belongs to its agent, so saving the same key under another agent is a ConflictError too.

A provider reads, inside one atomic step, the stored row with the given id (same tenant)
and the stored row with the given natural key, calls :func:`plan_definition_save` or
:func:`plan_requirement_save`, and writes the returned :class:`SchemaUpsert`. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ccvault import errors
from ccvault.models import ProfileFieldDefinition, ScenarioFieldRequirement

__all__ = [
    "SchemaUpsert",
    "definition_key",
    "plan_definition_save",
    "plan_requirement_save",
    "requirement_key",
]

DefinitionKey = tuple[UUID, UUID, str]
RequirementKey = tuple[UUID, UUID, UUID | None, UUID | None, str]


@dataclass(frozen=True, slots=True)
class SchemaUpsert:
    """Write the saved definition/requirement with this ``id`` and ``created_at``.

    ``insert``: no row of that natural key is stored (insert one); else update the stored
    row of that key in place.
    """

    id: UUID
    created_at: datetime
    insert: bool


def definition_key(definition: ProfileFieldDefinition) -> DefinitionKey:
    """(tenant, agent, name): what a definition is unique by."""
    return (definition.tenant_id, definition.agent_id, definition.name)


def requirement_key(requirement: ScenarioFieldRequirement) -> RequirementKey:
    """(tenant, scenario, step, rule, field name): what a requirement is unique by."""
    return (
        requirement.tenant_id,
        requirement.scenario_id,
        requirement.step_id,
        requirement.rule_id,
        requirement.field_name,
    )


def plan_definition_save(
    new: ProfileFieldDefinition,
    stored_by_id: ProfileFieldDefinition | None,
    stored_by_key: ProfileFieldDefinition | None,
) -> SchemaUpsert:
    """Where ``new`` goes, given the stored definition with its id and the one with its key."""
    if stored_by_id is not None and definition_key(stored_by_id) != definition_key(new):
        if stored_by_id.agent_id != new.agent_id:
            raise errors.ConflictError(
                f"field definition {new.id} belongs to another agent; "
                "a definition never moves between agents"
            )
        raise errors.ConflictError(
            f"field definition {new.id} is stored under another name; it keeps its name"
        )
    if stored_by_key is not None:
        return SchemaUpsert(stored_by_key.id, stored_by_key.created_at, insert=False)
    return SchemaUpsert(new.id, new.created_at, insert=True)


def plan_requirement_save(
    new: ScenarioFieldRequirement,
    stored_by_id: ScenarioFieldRequirement | None,
    stored_by_key: ScenarioFieldRequirement | None,
) -> SchemaUpsert:
    """Where ``new`` goes, given the stored requirement with its id and the one with its key."""
    if stored_by_id is not None:
        if stored_by_id.agent_id != new.agent_id:
            raise errors.ConflictError(
                f"requirement {new.id} belongs to another agent; "
                "a requirement never moves between agents"
            )
        if stored_by_id.scenario_id != new.scenario_id:
            raise errors.ConflictError(
                f"requirement {new.id} belongs to another scenario; "
                "a requirement never moves between scenarios"
            )
        if requirement_key(stored_by_id) != requirement_key(new):
            raise errors.ConflictError(
                f"requirement {new.id} is stored under another step, rule or field name"
            )
    if stored_by_key is not None:
        if stored_by_key.agent_id != new.agent_id:
            raise errors.ConflictError(
                "this scenario's requirement of that step, rule and field belongs to another "
                "agent; a requirement never moves between agents"
            )
        return SchemaUpsert(stored_by_key.id, stored_by_key.created_at, insert=False)
    return SchemaUpsert(new.id, new.created_at, insert=True)
