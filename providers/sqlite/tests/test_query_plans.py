"""Every query the store issues stays inside its tenant whatever the statistics say.

ANALYZE and ``PRAGMA optimize`` write ``sqlite_stat1``; with statistics of a skewed
database the planner may otherwise prefer scanning a whole table (every tenant) to an index.
The store pins its access paths (``INDEXED BY``, no joins it could reorder), so the plans
must be the same with any statistics, and never build a Bloom filter or an automatic index
(either reads a whole table: a cost growing with every tenant's data). The statements are
not a hand list: they are captured (trace callbacks on both connections) while the store
runs its operations, then each SELECT is explained on a database with real statistics
(ANALYZE, PRAGMA optimize on skewed data) and with hostile ones (every index claimed
useless).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemType,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
)
from ccvault_sqlite import SqliteProfileStore, SqliteSettings

BASE = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
BIG_TENANT_PROFILES = 150
# what a plan may scan: the profile found first (hit), the recursive chain, constants
SCANNABLE = {"hit", "chain", "link", "CONSTANT ROW"}
TENANT_TABLE_ALIASES = {"p", "i", "r", "c", "f", "a", "ci", "s"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteProfileStore]:
    settings = SqliteSettings(path=str(tmp_path / "vault.db"), migrate_on_start=True)
    async with SqliteProfileStore(settings) as s:
        yield s


async def skewed(store: SqliteProfileStore) -> tuple[UUID, UUID]:
    """A big tenant of many small profiles, and a small tenant (the one read) of one deep
    profile; returns (small tenant, its profile)."""
    big = uuid4()
    for n in range(BIG_TENANT_PROFILES):
        await store.save(
            CustomerProfile(
                tenant_id=big,
                channel_identities=[ChannelIdentity(channel=Channel.SMS, channel_user_id=f"+{n}")],
                fields={f"f{i}": ProfileField(name=f"f{i}", value=i) for i in range(4)},
            )
        )
    small = uuid4()
    profile = await store.get_or_create(small, Channel.WEB, "visitor")
    for version in range(25):
        await store.update_field(
            small,
            profile.id,
            ProfileField(
                name="email", value=f"v{version}", collected_at=BASE + timedelta(minutes=version)
            ),
        )
    return small, profile.id


async def hostile_statistics(store: SqliteProfileStore) -> None:
    """Statistics claiming every table huge and tenant_id matching half of it."""
    conn = store.connection
    rows = await conn.execute_fetchall("SELECT tbl, idx, stat FROM sqlite_stat1")
    for table, index, stat in list(rows):
        columns = len(str(stat).split()) - 1
        if index is None or columns < 1:
            continue
        claim = "1100000 550000" + " 20" * (columns - 1)
        await conn.execute(
            "UPDATE sqlite_stat1 SET stat = ? WHERE tbl = ? AND idx = ?", (claim, table, index)
        )
    await conn.execute("ANALYZE sqlite_schema")  # reload the statistics


async def run_everything(store: SqliteProfileStore, tenant: UUID, profile_id: UUID) -> list[str]:
    """The statements (parameters inlined) of the store's operations on this profile."""
    seen: list[str] = []
    connections = {id(c): c for c in (store.connection, store.read_connection)}.values()
    for connection in connections:
        await connection.set_trace_callback(seen.append)
    try:
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None
        await store.get_by_id(tenant, profile_id, include_history=True)
        await store.get_by_customer_id(tenant, profile.customer_id)
        await store.get_by_customer_id(tenant, profile.customer_id, include_history=True)
        await store.get_by_channel_identity(tenant, Channel.WEB, "visitor")
        await store.get_field(tenant, profile_id, "email")
        await store.get_field(tenant, profile_id, "email", status=None)
        await store.get_field_history(tenant, profile_id, "email")
        email = profile.fields["email"]
        derived = ProfileField(
            name="domain",
            value="x",
            source_item_id=email.id,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile_id, derived)
        asset = ProfileAsset(
            name="doc",
            asset_type="pdf",
            storage_provider="s3",
            storage_path="s3://b/doc",
            source_item_id=derived.id,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.add_asset(tenant, profile_id, asset)
        await store.get_asset(tenant, profile_id, asset.id)
        await store.get_asset_by_name(tenant, profile_id, "doc")
        await store.get_derivation_chain(tenant, asset.id, ItemType.PROFILE_ASSET)
        await store.get_derived_items(tenant, email.id)
        await store.check_has_dependents(tenant, email.id)
        agent, scenario = uuid4(), uuid4()
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="email")
        )
        await store.get_field_definitions(tenant, agent)
        await store.get_field_definition(tenant, agent, "email")
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="phone"
            )
        )
        await store.get_scenario_requirements(tenant, scenario)
        current = await store.get_by_id(tenant, profile_id)
        assert current is not None
        await store.get_missing_fields(tenant, current, scenario)
        current.fields["city"] = ProfileField(name="city", value="Paris")
        await store.save(current)
        other = await store.get_or_create(tenant, Channel.SMS, "+1555")
        await store.link_channel(
            tenant,
            other.id,
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id="o@example.org"),
        )
        merge_id = uuid4()
        await store.merge_profiles(tenant, other.id, profile_id, merge_id=merge_id)
        await store.get_merge_log(tenant, profile_id)
        await store.unmerge(tenant, merge_id)
        await store.count_items_by_status(tenant)
        await store.list_profile_ids(tenant)
        await store.export_profile(tenant, profile_id)
        await store.expire_stale_fields(tenant, profile_id)
    finally:
        for connection in connections:
            await connection.set_trace_callback(None)
    return seen


def plan_problems(statement: str, plan: list[str]) -> list[str]:
    problems = []
    for line in plan:
        words = line.split()
        # a Bloom filter or an automatic index is built by reading a whole table
        if "BLOOM FILTER" in line or "AUTOMATIC" in line:
            problems.append(line)
        elif words[:1] == ["SCAN"]:
            target = " ".join(words[1:3]) if words[1:2] == ["CONSTANT"] else words[1]
            if target not in SCANNABLE and not target.startswith("json_each"):
                problems.append(line)
        elif words[:1] == ["SEARCH"] and words[1] not in SCANNABLE:
            if "(tenant_id=?" not in line:
                problems.append(line)
    return [f"{' '.join(statement.split())[:160]}\n    {p}" for p in problems]


@pytest.mark.parametrize("statistics", ["analyzed", "hostile"])
async def test_every_read_stays_inside_its_tenant(
    store: SqliteProfileStore, statistics: str
) -> None:
    tenant, profile_id = await skewed(store)
    await store.connection.execute("ANALYZE")
    await store.connection.execute("PRAGMA optimize")
    if statistics == "hostile":
        await hostile_statistics(store)
    rows = await store.connection.execute_fetchall("SELECT COUNT(*) FROM sqlite_stat1")
    assert next(iter(rows))[0] > 0, "ANALYZE wrote no statistics"
    statements = await run_everything(store, tenant, profile_id)
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) >= 25
    explained = 0
    problems: list[str] = []
    for statement in reads:
        plan = [
            str(row[3])
            for row in await store.connection.execute_fetchall("EXPLAIN QUERY PLAN " + statement)
        ]
        explained += 1
        problems.extend(plan_problems(statement, plan))
    assert explained == len(reads)
    assert not problems, "plans leaving the tenant:\n" + "\n".join(problems)


async def test_the_check_catches_a_scan(store: SqliteProfileStore) -> None:
    """The checker itself: an unpinned query over hostile statistics is reported."""
    await skewed(store)
    await store.connection.execute("ANALYZE")
    await hostile_statistics(store)
    statement = "SELECT status, COUNT(*) FROM fields WHERE tenant_id = 'x' GROUP BY status"
    plan = [
        str(row[3])
        for row in await store.connection.execute_fetchall("EXPLAIN QUERY PLAN " + statement)
    ]
    assert plan_problems(statement, plan)
