"""Gap fill: fill a scenario's unmet requirements from the session and the conversation."""

from __future__ import annotations

from fastapi import APIRouter

from ccvault.gapfill import scenario_blocked
from ccvault.server.deps import GapFill, Store, Writer
from ccvault.server.pii import Masker
from ccvault.server.routes._common import check_tenant
from ccvault.server.schemas import GapFillRequest, GapFillResponse

__all__ = ["router"]

router = APIRouter(tags=["gap fill"])


@router.post("/gap-fill")
async def fill_scenario(
    body: GapFillRequest, caller: Writer, store: Store, service: GapFill
) -> GapFillResponse:
    """Fill what the scenario still needs: from the profile, the session variables, then the
    conversation; persist what was found (``persist``) with lineage to the session. Unfilled
    results say what to do next (ask with ``prompt``, skip, or ``blocked``)."""
    check_tenant(caller, body.session.tenant_id)
    results = await service.fill_scenario_requirements(
        body.session,
        body.scenario_id,
        body.step_id,
        required_level=body.required_level,
        persist=body.persist,
    )
    masker = await Masker.for_caller(store, caller)
    definitions = [r.field_definition for r in results.values() if r.field_definition is not None]
    masker = masker.definitions_for(definitions)
    return GapFillResponse(
        results=[masker.gap_fill(result) for result in results.values()],
        blocked=scenario_blocked(results),
    )
