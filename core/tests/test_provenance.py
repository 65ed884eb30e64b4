"""``ccvault.provenance``: the pure rules (as-of, ownership across merges, revert plan,
explanation), property-tested against a small simulation of what the vault stores, and
``ccvault profile explain`` (text and JSON, customer strings never rendered as markup)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ccvault.cli import cli
from ccvault.models import ItemStatus, ProfileField, ProfileFieldSource, SourceType
from ccvault.provenance import (
    Move,
    ReplacementReason,
    explain,
    explanation_lines,
    field_as_of,
    owner_at,
    plan_revert,
)
from ccvault.store import ProfileStore, present_field

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
TICK = timedelta(seconds=1)


# ---------------------------------------------------------------------------------------
# a simulation of what the vault stores for one name, write by write
# ---------------------------------------------------------------------------------------


@dataclass
class _Sim:
    versions: list[ProfileField]
    #: (instant, id served then or None) at every probe
    served: list[tuple[datetime, UUID | None]]


def _simulate(ops: list[tuple[str, int | None]]) -> _Sim:
    """Writes (``("write", lifetime_ticks)``), sweeps and no-supersede writes at T0 + i ticks,
    stored exactly as update_field/expire_stale_fields store them."""
    versions: dict[UUID, ProfileField] = {}
    order: list[UUID] = []
    truth: list[tuple[datetime, UUID]] = []  # (write instant, id), in order
    served: list[tuple[datetime, UUID | None]] = []

    def current(at: datetime) -> UUID | None:
        live = [
            vid
            for _, vid in truth
            if versions[vid].status is ItemStatus.ACTIVE and not versions[vid].is_expired(at)
        ]
        return live[-1] if live else None

    for step, (kind, lifetime) in enumerate(ops):
        at = T0 + step * TICK
        served.append((at - TICK / 2, current(at - TICK / 2)))
        if kind == "sweep":
            for vid in order:
                item = versions[vid]
                if item.status is ItemStatus.ACTIVE and item.is_expired(at):
                    versions[vid] = item.model_copy(
                        update={"status": ItemStatus.EXPIRED, "updated_at": at}
                    )
        else:
            active = next((v for v in order if versions[v].status is ItemStatus.ACTIVE), None)
            if kind == "keep" and active is not None and not versions[active].is_expired(at):
                served.append((at, current(at)))
                continue  # refused: an unexpired ACTIVE version is there
            new = ProfileField(
                name="email",
                value=f"v{step}",
                collected_at=at,
                updated_at=at,
                expires_at=None if lifetime is None else at + lifetime * TICK,
            )
            if active is not None:
                old = versions[active]
                if kind == "keep":  # past expires_at: swept in the same step
                    versions[active] = old.model_copy(
                        update={"status": ItemStatus.EXPIRED, "updated_at": at}
                    )
                else:
                    versions[active] = old.model_copy(
                        update={
                            "status": ItemStatus.SUPERSEDED,
                            "superseded_by_id": new.id,
                            "superseded_at": at,
                            "updated_at": at,
                        }
                    )
            versions[new.id] = new
            order.append(new.id)
            truth.append((at, new.id))
        served.append((at, current(at)))
    end = T0 + len(ops) * TICK
    for extra in range(6):
        served.append((end + extra * TICK, current(end + extra * TICK)))
    newest_first = sorted((versions[v] for v in order), key=lambda v: v.collected_at, reverse=True)
    return _Sim(newest_first, served)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "write", "keep", "sweep"]),
        st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    ),
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_as_of_matches_what_was_served_at_every_instant(ops: list[tuple[str, int | None]]) -> None:
    sim = _simulate(ops)
    # as stored, and as a reader presents them later (overdue ACTIVE versions read EXPIRED)
    presented = [present_field(v, T0 + 100 * TICK) for v in sim.versions]
    for versions in (sim.versions, presented):
        for at, expected in sim.served:
            found = field_as_of(versions, at)
            assert (None if found is None else found.id) == expected, at
            if found is not None:
                assert found.status is ItemStatus.ACTIVE and found.superseded_by_id is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from("ABC"), st.sampled_from("ABC")), max_size=6
    ),
    st.integers(-1, 22),
)
def test_owner_at_follows_every_move_of_an_item(
    raw: list[tuple[int, str, str]], probe: int
) -> None:
    item = uuid4()
    ids = {name: UUID(int=ord(name)) for name in "ABC"}
    # a consistent path: each move starts where the item is
    moves: list[Move] = []
    where = "A"
    for offset, _, to in sorted(raw):
        if to == where:
            continue
        moves.append(Move(T0 + offset * TICK, ids[where], ids[to], frozenset({item})))
        where = to
    moves.sort(key=lambda m: m.at)
    at = T0 + probe * TICK
    expected = "A"
    for move in moves:
        if move.at <= at:
            expected = next(n for n, i in ids.items() if i == move.to_profile)
    assert owner_at(item, ids[where], moves, at) == ids[expected]
    # an item no move names stays with its holder
    assert owner_at(uuid4(), ids["C"], moves, at) == ids["C"]


def test_plan_revert_copies_how_the_value_was_obtained_and_points_at_it() -> None:
    restored = ProfileField(
        name="email",
        value="ann@example.com",
        source=ProfileFieldSource.LLM_EXTRACTED,
        source_metadata={"quote": "I am ann@example.com", "extraction_method": "offline"},
        confidence=0.7,
        verified=True,
        verification_method="email_link",
        collected_at=T0,
        expires_at=T0 + 10 * TICK,
        status=ItemStatus.EXPIRED,
    )
    now = T0 + 100 * TICK
    new = plan_revert(restored, now)
    assert new.id != restored.id and new.status is ItemStatus.ACTIVE
    assert new.source_item_id == restored.id
    assert new.source_item_type is SourceType.PROFILE_FIELD
    assert (new.value, new.source, new.confidence, new.verified) == (
        "ann@example.com",
        ProfileFieldSource.LLM_EXTRACTED,
        0.7,
        True,
    )
    assert new.source_metadata == restored.source_metadata
    assert new.source_metadata is not restored.source_metadata
    assert new.collected_at == now and new.expires_at == now + 10 * TICK
    forever = plan_revert(restored.model_copy(update={"expires_at": None}), now)
    assert forever.expires_at is None


def test_explain_names_reasons_merge_from_the_log_and_extractor_and_quote() -> None:
    loser = ProfileField(
        name="email", value="b", collected_at=T0, status=ItemStatus.SUPERSEDED, verified=False
    )
    old = ProfileField(name="email", value="a", collected_at=T0, status=ItemStatus.SUPERSEDED)
    active = ProfileField(
        name="email",
        value="c",
        collected_at=T0 + TICK,
        updated_at=T0 + TICK,
        source_metadata={"extraction_method": "offline", "quote": "it is c"},
    )
    loser = loser.model_copy(update={"superseded_by_id": active.id, "superseded_at": T0 + 5 * TICK})
    old = old.model_copy(update={"superseded_by_id": active.id, "superseded_at": T0 + TICK})
    merge_id = uuid4()
    found = explain(
        uuid4(),
        "email",
        [active, loser, old],
        T0 + 9 * TICK,
        merge_superseded={loser.id: merge_id},
    )
    assert found.active is not None and found.active.id == active.id
    assert (found.extractor, found.quote) == ("offline", "it is c")
    reasons = {r.version.id: (r.reason, r.merge_id) for r in found.replaced}
    assert reasons == {
        loser.id: (ReplacementReason.MERGE, merge_id),
        old.id: (ReplacementReason.UPDATE, None),
    }
    # the merge loser is not taken for the version the winner's write replaced
    assert field_as_of([active, loser, old], T0 + TICK, merge_losers={loser.id}) is not None


# ---------------------------------------------------------------------------------------
# ccvault profile explain
# ---------------------------------------------------------------------------------------


@pytest.fixture
def plugin(shared_provider: Any) -> Any:
    """A provider "explaintest" whose stores share one in-memory database (conftest.py)."""
    return shared_provider("explaintest")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(
        '[profile]\nstore_provider = "explaintest"\ncache_enabled = false\n'
        "auto_encrypt_pii = false\n"
    )
    return path


async def _seed(store: ProfileStore, tenant: UUID) -> tuple[UUID, UUID]:
    from ccvault.models import Channel

    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+4915100000001")
    first = await store.update_field(
        tenant, profile.id, ProfileField(name="city", value="[bold]Oslo[/bold]\x1b[2J")
    )
    await store.update_field(
        tenant,
        profile.id,
        ProfileField(
            name="city",
            value="Bergen",
            source=ProfileFieldSource.LLM_EXTRACTED,
            source_metadata={"extraction_method": "offline", "quote": "I moved to Bergen"},
            confidence=0.8,
        ),
    )
    return profile.id, first


def test_cli_explain_prints_plain_text_and_json(plugin: Any, config: Path) -> None:
    tenant = uuid4()
    profile_id, first = asyncio.run(_seed(plugin.db, tenant))
    args = ["-c", str(config), "profile", "explain", "-t", str(tenant), "-p", str(profile_id)]
    result = CliRunner().invoke(cli, [*args, "city"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = result.output
    assert '"Bergen"' in text and "extractor: offline" in text and "I moved to Bergen" in text
    assert "update" in text and str(first) in text
    # a customer string is shown as it is, never as markup, control characters escaped
    assert "[bold]Oslo[/bold]" in text and "\x1b" not in text
    as_json = CliRunner().invoke(cli, [*args, "city", "--json"], catch_exceptions=False)
    document = json.loads(as_json.output)
    assert document["active"]["value"] == "Bergen" and document["quote"] == "I moved to Bergen"
    assert [r["reason"] for r in document["replaced"]] == ["update"]


def test_cli_explain_unknown_field_is_exit_3(plugin: Any, config: Path) -> None:
    tenant = uuid4()
    profile_id, _ = asyncio.run(_seed(plugin.db, tenant))
    result = CliRunner().invoke(
        cli,
        ["-c", str(config), "profile", "explain", "-t", str(tenant), "-p", str(profile_id), "zip"],
    )
    assert result.exit_code == 3


def test_explanation_lines_say_when_nothing_is_served() -> None:
    expired = ProfileField(
        name="otp", value="1", collected_at=T0, expires_at=T0 + TICK, status=ItemStatus.EXPIRED
    )
    found = explain(uuid4(), "otp", [expired], T0 + 5 * TICK)
    lines = explanation_lines(found)
    assert any("served: nothing" in line for line in lines)
    assert any("expiry" in line for line in lines)


def test_a_version_an_unmerge_reactivated_was_served_before_the_merge_and_after_it() -> None:
    merged, unmerged = T0 + 5 * TICK, T0 + 9 * TICK
    before = ProfileField(
        name="email",
        value="old",
        collected_at=T0,
        status=ItemStatus.SUPERSEDED,
        superseded_at=T0 + 2 * TICK,
        updated_at=T0 + 2 * TICK,
    )
    # written at T0 + 2 (it replaced "old"), lost a merge at 5, reactivated by the unmerge at 9
    loser = ProfileField(
        name="email", value="mine", collected_at=T0 + 2 * TICK, updated_at=unmerged
    )
    before = before.model_copy(update={"superseded_by_id": loser.id})
    versions = [loser, before]
    gaps = {loser.id: (merged, unmerged)}
    losers = {loser.id}

    def at(tick: float) -> str | None:
        found = field_as_of(versions, T0 + tick * TICK, merge_losers=losers, reactivated=gaps)
        return None if found is None else str(found.value)

    assert [at(t) for t in (0, 1, 2, 4.5, 5, 8.9, 9, 20)] == [
        "old",
        "old",
        "mine",
        "mine",
        None,
        None,
        "mine",
        "mine",
    ]
    # without the merge log's word the gap is unknown: served from its write on
    without = [field_as_of(versions, T0 + t * TICK) for t in (3, 6)]
    assert [None if f is None else f.value for f in without] == ["mine", "mine"]
