"""Field definitions (agent-scoped) and scenario requirements."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from ccvault.crypto import PII_REGISTRY_AGENT_ID
from ccvault.models import ProfileFieldDefinition, ScenarioFieldRequirement
from ccvault.server.deps import Reader, Store, Writer
from ccvault.server.errors import ApiError
from ccvault.server.pii import register_pii_definition
from ccvault.server.routes._common import FieldNameParam, check_tenant, found
from ccvault.server.schemas import Count, Deleted, Saved

__all__ = ["router"]

router = APIRouter()


def _not_reserved(agent_id: UUID) -> None:
    """The PII registry's agent is the vault's own: its markers are not written through the
    API (deleting one would unmask a field for keys without pii:read)."""
    if agent_id == PII_REGISTRY_AGENT_ID:
        raise ApiError(400, "reserved_agent", "this agent id is reserved by the vault")


StepId = Annotated[
    UUID | None, Query(description="a step's requirements only; omitted: the scenario-wide ones")
]


@router.get("/agents/{agent_id}/definitions", tags=["definitions"])
async def get_field_definitions(
    agent_id: UUID, caller: Reader, store: Store, enabled_only: bool = True
) -> list[ProfileFieldDefinition]:
    """The agent's field definitions, by name."""
    return await store.get_field_definitions(caller.tenant_id, agent_id, enabled_only=enabled_only)


@router.get("/agents/{agent_id}/definitions/{field_name}", tags=["definitions"])
async def get_field_definition(
    agent_id: UUID, field_name: FieldNameParam, caller: Reader, store: Store
) -> ProfileFieldDefinition:
    """One definition, enabled or not."""
    definition = await store.get_field_definition(caller.tenant_id, agent_id, field_name)
    return found(definition, "definition not found")


@router.put("/definitions", tags=["definitions"])
async def save_field_definition(
    body: ProfileFieldDefinition, caller: Writer, store: Store
) -> Saved:
    """Create or update (by agent and name) a field definition."""
    check_tenant(caller, body.tenant_id)
    _not_reserved(body.agent_id)
    await register_pii_definition(store, body)
    return Saved(id=await store.save_field_definition(body))


@router.delete("/agents/{agent_id}/definitions/{field_name}", tags=["definitions"])
async def delete_field_definition(
    agent_id: UUID, field_name: FieldNameParam, caller: Writer, store: Store
) -> Deleted:
    """Delete the agent's definition of this field."""
    _not_reserved(agent_id)
    deleted = await store.delete_field_definition(caller.tenant_id, agent_id, field_name)
    return Deleted(deleted=deleted)


@router.get("/scenarios/{scenario_id}/requirements", tags=["requirements"])
async def get_scenario_requirements(
    scenario_id: UUID, caller: Reader, store: Store, step_id: StepId = None
) -> list[ScenarioFieldRequirement]:
    """The scenario-wide requirements, or one step's, in collection order."""
    return await store.get_scenario_requirements(caller.tenant_id, scenario_id, step_id=step_id)


@router.put("/requirements", tags=["requirements"])
async def save_scenario_requirement(
    body: ScenarioFieldRequirement, caller: Writer, store: Store
) -> Saved:
    """Create or update (by scenario, step, rule and field name) a requirement."""
    check_tenant(caller, body.tenant_id)
    return Saved(id=await store.save_scenario_requirement(body))


@router.delete("/scenarios/{scenario_id}/requirements", tags=["requirements"])
async def delete_scenario_requirements(
    scenario_id: UUID, caller: Writer, store: Store, step_id: StepId = None
) -> Count:
    """Delete every requirement of the scenario (omitted step_id), or one step's."""
    count = await store.delete_scenario_requirements(caller.tenant_id, scenario_id, step_id=step_id)
    return Count(count=count)
