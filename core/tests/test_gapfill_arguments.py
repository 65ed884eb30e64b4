"""Gap fill services refuse bad arguments up front with ccvault ValidationError: nothing is
read, extracted or written, and no pydantic/AttributeError escapes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.gapfill import EnhancedGapFillService, GapFillService
from ccvault.models import Channel, ConversationTurn, Session
from ccvault_inmemory import InMemoryProfileStore


@pytest.fixture
async def inner() -> AsyncIterator[InMemoryProfileStore]:
    async with InMemoryProfileStore() as store:
        yield store


@pytest.fixture
async def session(inner: InMemoryProfileStore) -> Session:
    tenant = uuid4()
    profile = await inner.get_or_create(tenant, Channel.WEB, "u1")
    return Session(
        tenant_id=tenant,
        agent_id=uuid4(),
        customer_profile_id=profile.id,
        variables={"email": "x@example.com"},
        turns=[ConversationTurn(content="my mail is x@example.com")],
    )


async def test_fill_multiple_refuses_a_single_string(
    inner: InMemoryProfileStore, session: Session
) -> None:
    service = GapFillService(inner)
    with pytest.raises(errors.ValidationError, match="field_names must be a list"):
        await service.fill_multiple("email", session)
    with pytest.raises(errors.ValidationError, match="field_names"):
        await service.fill_multiple(42, session)  # type: ignore[arg-type]
    # a list still works
    assert list(await service.fill_multiple(["email"], session)) == ["email"]


async def test_persist_refuses_bad_ids_and_results_before_writing(
    inner: InMemoryProfileStore, session: Session
) -> None:
    service = GapFillService(inner)
    result = await service.fill_gap("email", session)
    assert result.filled
    with pytest.raises(errors.ValidationError, match="scenario_id must be a UUID"):
        await service.persist_extracted_values(session, [result], scenario_id="bad")  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="step_id must be a UUID"):
        await service.persist_extracted_values(session, [result], step_id=7)  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="GapFillResult"):
        await service.persist_extracted_values(session, [result, {"field_name": "a"}])  # type: ignore[list-item]
    with pytest.raises(errors.ValidationError, match="session must be a Session"):
        await service.persist_extracted_values(None, [result])  # type: ignore[arg-type]
    # nothing was written by any refused call
    assert await inner.get_field(session.tenant_id, session.customer_profile_id, "email") is None


BadCall = Callable[[EnhancedGapFillService, Session], Coroutine[Any, Any, Any]]
BAD_CALLS: list[tuple[str, BadCall]] = [
    ("fill_gap session=None", lambda g, s: g.fill_gap("email", None)),  # type: ignore[arg-type]
    ("fill_gap definition=dict", lambda g, s: g.fill_gap("email", s, definition={})),  # type: ignore[arg-type]
    ("fill_gap definitions=list", lambda g, s: g.fill_gap("email", s, definitions=[1])),  # type: ignore[arg-type]
    ("try_profile_fill profile=dict", lambda g, s: g.try_profile_fill("email", s, profile={})),  # type: ignore[arg-type]
    ("try_session_fill scenario_id=1", lambda g, s: g.try_session_fill("email", s, scenario_id=1)),  # type: ignore[arg-type]
    ("extraction session=dict", lambda g, s: g.try_conversation_extraction("email", {})),  # type: ignore[arg-type]
    ("fill_multiple session=None", lambda g, s: g.fill_multiple(["email"], None)),  # type: ignore[arg-type]
    ("fill_scenario scenario_id=x", lambda g, s: g.fill_scenario_requirements(s, "x")),  # type: ignore[arg-type]
    ("fill_scenario step_id=x", lambda g, s: g.fill_scenario_requirements(s, uuid4(), "x")),  # type: ignore[arg-type]
    ("fill_scenario persist=1", lambda g, s: g.fill_scenario_requirements(s, uuid4(), persist=1)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("call", [c for _, c in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
async def test_bad_arguments_are_vault_validation_errors(
    inner: InMemoryProfileStore, session: Session, call: BadCall
) -> None:
    service = EnhancedGapFillService(inner)
    with pytest.raises(errors.ValidationError):
        await call(service, session)
