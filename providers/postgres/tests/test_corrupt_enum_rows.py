"""A row written outside the vault with an enumeration column no member has (the columns are
text) is refused on every read with StorageError naming the table and column, never the
stored text: it may be personal data. The lookups that map a column's text back to its
member raise it themselves, so the reads keep no per-row try/except."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ItemType,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
)
from ccvault_contract_tests import assert_not_quoted
from ccvault_postgres import PostgresProfileStore

#: the text written outside the vault: what a message must never quote
SECRET = "jane.doe@example.org"

Read = Callable[[PostgresProfileStore], Awaitable[Any]]


def assert_refused(
    caught: pytest.ExceptionInfo[errors.StorageError], table: str, column: str
) -> None:
    """StorageError naming ``table.column``; the stored text in no message along its chain."""
    assert f"{table}.{column}" in str(caught.value)
    assert_not_quoted(caught.value, SECRET)


async def corrupt(store: PostgresProfileStore, statement: str, *args: Any) -> None:
    """Run ``statement`` on the store's schema, as a hand-written UPDATE would."""
    async with store.connection() as conn:
        status = await conn.execute(statement, *args)
    assert not status.endswith(" 0"), status  # it did change a row


async def drop_status_checks(store: PostgresProfileStore) -> None:
    """Drop the tables' CHECK on status (a schema changed by hand), so it can be corrupt."""
    async with store.connection() as conn:
        for table in ("profile_fields", "profile_assets"):
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_status_check")


async def requirements(
    store: PostgresProfileStore,
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """Two agents' requirements (one's HARD, the other's SOFT) and a definition each:
    (tenant, scenario, step, the second agent)."""
    tenant, scenario, step, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for agent, level in ((uuid.uuid4(), RequiredLevel.HARD), (second, RequiredLevel.SOFT)):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant,
                agent_id=agent,
                name="email",
                required_verification=True,
                source_priority=[ProfileFieldSource.USER_PROVIDED],
            )
        )
        for step_id in (None, step):
            for name in ("email", "phone"):
                await store.save_scenario_requirement(
                    ScenarioFieldRequirement(
                        tenant_id=tenant,
                        agent_id=agent,
                        scenario_id=scenario,
                        step_id=step_id,
                        rule_id=agent,
                        field_name=name,
                        required_level=level,
                    )
                )
    return tenant, scenario, step, second


@pytest.mark.parametrize("column", ["required_level", "fallback_action"])
async def test_a_requirement_column_no_member_has_is_refused_on_every_read(
    store: PostgresProfileStore, column: str
) -> None:
    tenant, scenario, step, _ = await requirements(store)
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-requirements")
    await corrupt(
        store,
        f"UPDATE scenario_field_requirements SET {column} = $2 "
        "WHERE tenant_id = $1 AND field_name = 'phone'",
        tenant,
        SECRET,
    )
    reads: list[Read] = [
        lambda s: s.get_scenario_requirements(tenant, scenario),
        lambda s: s.get_scenario_requirements(tenant, scenario, step_id=step),
        lambda s: s.get_missing_fields(tenant, profile, scenario),
        lambda s: s.get_missing_fields(tenant, profile, scenario, step_id=step),
        lambda s: s._get_requirements_with_definitions(tenant, scenario, None),
        lambda s: s._get_requirement_checks(tenant, scenario, step),
    ]
    for read in reads:
        with pytest.raises(errors.StorageError, match="scenario requirement row") as caught:
            await read(store)
        assert_refused(caught, "scenario_field_requirements", column)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("value_type", SECRET),
        ("survivorship", SECRET),
        ("source_priority", ["user_provided", SECRET]),
    ],
    ids=["value_type", "survivorship", "source_priority"],
)
async def test_a_definition_column_no_member_has_is_refused_on_every_read(
    store: PostgresProfileStore, column: str, value: Any
) -> None:
    tenant, scenario, _, agent = await requirements(store)
    await corrupt(
        store,
        f"UPDATE profile_field_definitions SET {column} = $3 "
        "WHERE tenant_id = $1 AND agent_id = $2",
        tenant,
        agent,
        value,
    )
    reads: list[Read] = [
        lambda s: s.get_field_definitions(tenant, agent),
        lambda s: s.get_field_definition(tenant, agent, "email"),
        lambda s: s._get_requirements_with_definitions(tenant, scenario, None),
    ]
    for read in reads:
        with pytest.raises(errors.StorageError, match="field definition row") as caught:
            await read(store)
        assert_refused(caught, "profile_field_definitions", column)


async def rich_profile(store: PostgresProfileStore) -> tuple[uuid.UUID, uuid.UUID]:
    """A profile with two fields (one derived from the other) and an asset derived from a
    field, each version with every enumeration column set; (tenant, profile id)."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "corrupt-profile")
    email = await store.update_field(
        tenant,
        profile.id,
        ProfileField(name="email", value="a@b.example", source=ProfileFieldSource.TOOL_RESULT),
    )
    await store.update_field(
        tenant,
        profile.id,
        ProfileField(
            name="domain",
            value="b.example",
            source=ProfileFieldSource.SYSTEM_INFERRED,
            source_item_id=email,
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )
    await store.add_asset(
        tenant,
        profile.id,
        ProfileAsset(
            name="id_scan",
            asset_type="passport",
            storage_provider="s3",
            storage_path="bucket/scan.png",
            source_item_id=email,
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )
    return tenant, profile.id


# (table, column, rows: the WHERE of the UPDATE after the tenant, reads: which reads see it)
_PROFILE_CASES = [
    ("customer_profiles", "verification_level", "", "profile"),
    ("channel_identities", "channel", "", "profile"),
    # one version of two (a column read row by row) and both (a column the same in every row)
    ("profile_fields", "source", "AND name = 'domain'", "field"),
    ("profile_fields", "source", "", "field"),
    ("profile_fields", "source_item_type", "AND name = 'domain'", "field"),
    ("profile_fields", "status", "AND name = 'domain'", "history"),
    ("profile_assets", "source_item_type", "", "asset"),
    ("profile_assets", "status", "", "history"),
]


@pytest.mark.parametrize(
    ("table", "column", "rows", "seen_by"),
    _PROFILE_CASES,
    ids=[f"{t}.{c}{'-one' if r else ''}" for t, c, r, _ in _PROFILE_CASES],
)
async def test_a_profile_column_no_member_has_is_refused_on_every_read(
    store: PostgresProfileStore, table: str, column: str, rows: str, seen_by: str
) -> None:
    tenant, profile_id = await rich_profile(store)
    found = await store.get_by_id(tenant, profile_id, include_history=True)
    assert found is not None
    customer = found.customer_id
    (asset,) = found.assets
    derived = found.fields["domain"]
    if column == "status":
        await drop_status_checks(store)
    await corrupt(
        store, f"UPDATE {table} SET {column} = $2 WHERE tenant_id = $1 {rows}", tenant, SECRET
    )
    reads: list[Read] = [
        lambda s: s.get_by_id(tenant, profile_id, include_history=True),
        lambda s: s.export_profile(tenant, profile_id),
    ]
    if seen_by != "history":  # a status no member has is not 'active': only history reads it
        reads += [
            lambda s: s.get_by_id(tenant, profile_id),
            lambda s: s.get_by_customer_id(tenant, customer),
        ]
    if seen_by == "field":
        reads += [
            lambda s: s.get_field(tenant, profile_id, "domain"),
            lambda s: s.get_field_history(tenant, profile_id, "domain"),
        ]
    if seen_by == "asset":
        reads += [
            lambda s: s.get_asset(tenant, profile_id, asset.id),
            lambda s: s.get_derivation_chain(tenant, asset.id, ItemType.PROFILE_ASSET.value),
        ]
    if column == "source_item_type":
        reads += [lambda s: s.get_derived_items(tenant, derived.source_item_id)]
    if (table, column) == ("profile_fields", "source_item_type"):
        reads += [
            lambda s: s.get_derivation_chain(tenant, derived.id, ItemType.PROFILE_FIELD.value)
        ]
    for read in reads:
        with pytest.raises(errors.StorageError, match="row is corrupt") as caught:
            await read(store)
        assert_refused(caught, table, column)


@pytest.mark.parametrize("table", ["profile_fields", "profile_assets"])
async def test_a_stored_status_no_member_has_is_refused_by_save(
    store: PostgresProfileStore, table: str
) -> None:
    """save reads the stored status of every item it is handed, inside its transaction."""
    tenant, profile_id = await rich_profile(store)
    held = await store.get_by_id(tenant, profile_id)
    assert held is not None
    await drop_status_checks(store)
    await corrupt(store, f"UPDATE {table} SET status = $2 WHERE tenant_id = $1", tenant, SECRET)
    with pytest.raises(errors.StorageError, match="row is corrupt") as caught:
        await store.save(held)
    assert_refused(caught, table, "status")
