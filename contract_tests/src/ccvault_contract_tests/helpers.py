"""Builders and checks shared by the suite's modules. Public API of ``ccvault`` only.

Timestamps are built with whole-millisecond precision so that providers whose storage keeps
only milliseconds (BSON) round-trip them exactly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from ccvault.models import (
    Channel,
    CustomerProfile,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault.store import ProfileStore

__all__ = [
    "assert_not_quoted",
    "assert_unbroken_chain",
    "field_view",
    "make_asset",
    "make_definition",
    "make_field",
    "make_requirement",
    "new_profile",
    "snapshot",
    "ts",
    "unique_user",
]


def ts(seconds: float = 0.0) -> datetime:
    """Now plus ``seconds`` (negative: the past), UTC, truncated to whole milliseconds."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def unique_user(prefix: str = "+1555") -> str:
    """A channel user id no other test uses."""
    return f"{prefix}{uuid4().int % 10**10:010d}"


def make_field(name: str = "email", value: Any = "ada@example.com", **extra: Any) -> ProfileField:
    extra.setdefault("collected_at", ts())
    return ProfileField(name=name, value=value, **extra)


def make_asset(name: str = "id_scan", **extra: Any) -> ProfileAsset:
    extra.setdefault("asset_type", "document")
    extra.setdefault("storage_provider", "s3")
    extra.setdefault("storage_path", f"s3://vault-test/{uuid4()}.pdf")
    extra.setdefault("uploaded_at", ts())
    return ProfileAsset(name=name, **extra)


def make_definition(
    tenant_id: UUID, agent_id: UUID, name: str, **extra: Any
) -> ProfileFieldDefinition:
    extra.setdefault("created_at", ts())
    extra.setdefault("updated_at", ts())
    return ProfileFieldDefinition(tenant_id=tenant_id, agent_id=agent_id, name=name, **extra)


def make_requirement(
    tenant_id: UUID, agent_id: UUID, scenario_id: UUID, field_name: str, **extra: Any
) -> ScenarioFieldRequirement:
    extra.setdefault("created_at", ts())
    extra.setdefault("updated_at", ts())
    return ScenarioFieldRequirement(
        tenant_id=tenant_id,
        agent_id=agent_id,
        scenario_id=scenario_id,
        field_name=field_name,
        **extra,
    )


async def new_profile(
    store: ProfileStore, tenant_id: UUID, channel: Channel = Channel.WHATSAPP
) -> CustomerProfile:
    """A fresh profile owning a fresh identity."""
    return await store.get_or_create(tenant_id, channel, unique_user())


def field_view(item: ProfileField) -> dict[str, Any]:
    """What a caller put into a field, for round-trip comparison (store-managed times out)."""
    return item.model_dump(mode="json", exclude={"updated_at", "superseded_at"})


async def snapshot(
    store: ProfileStore,
    tenant_id: UUID,
    *,
    profiles: tuple[UUID, ...] = (),
    agents: tuple[UUID, ...] = (),
    scenarios: tuple[UUID, ...] = (),
) -> str:
    """Everything the public API shows about a tenant's given objects, as one JSON string.

    Compare two snapshots to prove a refused call changed nothing.
    """
    state: dict[str, Any] = {"counts": await store.count_items_by_status(tenant_id)}
    state["listed"] = tenant_id in await store.list_tenant_ids()
    exports: list[dict[str, Any] | None] = []
    for profile_id in profiles:
        try:
            document = await store.export_profile(tenant_id, profile_id)
        except LookupError:
            exports.append(None)
            continue
        document.pop("exported_at", None)
        exports.append(document)
    state["profiles"] = exports
    state["definitions"] = [
        [
            d.model_dump(mode="json")
            for d in await store.get_field_definitions(tenant_id, agent, enabled_only=False)
        ]
        for agent in agents
    ]
    state["requirements"] = [
        [r.model_dump(mode="json") for r in await store.get_scenario_requirements(tenant_id, s)]
        for s in scenarios
    ]
    return json.dumps(state, sort_keys=True, default=str)


def fresh_id() -> UUID:
    return uuid4()


def assert_unbroken_chain(history: list[ProfileField]) -> None:
    """One ACTIVE version and a single supersede chain through every other version.

    Every SUPERSEDED version points (``superseded_by_id``) at another version of the name,
    no two point at the same one, and walking from the one version nobody points at visits
    every version and ends at the ACTIVE one.
    """
    from ccvault.models import ItemStatus

    by_id = {version.id: version for version in history}
    assert len(by_id) == len(history), "a version id appears twice in the history"
    active = [v for v in history if v.status is ItemStatus.ACTIVE]
    assert len(active) == 1, f"{len(active)} ACTIVE versions"
    superseded = [v for v in history if v.status is ItemStatus.SUPERSEDED]
    assert len(superseded) == len(history) - 1, "versions neither ACTIVE nor SUPERSEDED"
    successors = [v.superseded_by_id for v in superseded]
    assert all(s in by_id for s in successors), "superseded_by_id points outside the history"
    assert all(v.superseded_at is not None for v in superseded), "superseded_at missing"
    assert len(set(successors)) == len(successors), "two versions superseded by the same one"
    roots = [v for v in history if v.id not in set(successors)]
    assert len(roots) == 1, f"{len(roots)} chain starts"
    seen = 0
    current: ProfileField | None = roots[0]
    while current is not None:
        seen += 1
        assert seen <= len(history), "the supersede chain loops"
        nxt = current.superseded_by_id
        current = by_id[nxt] if nxt is not None else None
        if current is None:
            break
    assert seen == len(history), f"chain visits {seen} of {len(history)} versions"


def assert_not_quoted(error: BaseException, text: str, *, printed_only: bool = False) -> None:
    """No error reachable from ``error`` quotes ``text`` (stored or customer data) in its
    message, its repr, the repr of an argument or a note: ``error``, each error it was
    raised from and while handling (``__cause__`` and ``__context__``, both followed), and
    the members of an exception group. ``printed_only``: follow them as a printed
    traceback does (a context hidden by ``raise ... from``, left out); by default a hidden
    context must not quote it either (code that keeps the error, or walks the chain, finds
    it there).

    For a provider's own tests of rows that cannot be read back (see the README).
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        name = type(current).__name__
        assert text not in str(current), f"{name} quotes it: {current}"
        assert text not in repr(current), f"the repr of {name} quotes it"
        for arg in current.args:
            assert text not in repr(arg), f"an argument of {name} quotes it"
        for note in getattr(current, "__notes__", ()):
            assert text not in str(note), f"a note of {name} quotes it"
        linked = [current.__cause__]
        if not (printed_only and current.__suppress_context__):
            linked.append(current.__context__)
        if isinstance(current, BaseExceptionGroup):
            linked.extend(current.exceptions)
        pending.extend(link for link in linked if link is not None)
