"""Rows the vault wrote become models without validation; rows it did not write are refused.

The fast path (``codec.*s_from_rows``) must build exactly the models validation builds, and
a row edited in SQL must never come back as a garbage model: a row in a foreign but valid
form is validated (and reads correctly), an invalid one is refused with
:class:`~ccvault.errors.StorageError` naming the table and column, never the value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    FieldValueType,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
    SurvivorshipPolicy,
)
from ccvault_sqlite import SqliteProfileStore, SqliteSettings, codec

BASE = datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC)
SECRET = "s3cret-personal-value"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteProfileStore]:
    settings = SqliteSettings(path=str(tmp_path / "vault.db"), migrate_on_start=True)
    async with SqliteProfileStore(settings) as s:
        yield s


async def rich_profile(store: SqliteProfileStore) -> tuple[UUID, CustomerProfile]:
    """A profile using every column: optional ids and times, history, assets, consents."""
    tenant = uuid4()
    profile = CustomerProfile(
        tenant_id=tenant,
        created_at=BASE,
        updated_at=BASE,
        last_interaction_at=BASE + timedelta(minutes=1),
        channel_identities=[
            ChannelIdentity(
                channel=Channel.WHATSAPP,
                channel_user_id="+15550001",
                verified=True,
                verified_at=BASE,
                primary=True,
                created_at=BASE,
            ),
            ChannelIdentity(
                channel=Channel.EMAIL, channel_user_id="a@example.org", created_at=BASE
            ),
        ],
        consents=[
            Consent(consent_type="marketing", granted=True, granted_at=BASE, ip_address="10.0.0.1")
        ],
    )
    await store.save(profile)
    first = ProfileField(
        name="email",
        value={"address": SECRET, "tags": [1, 2.5, None, True]},
        value_type="object",
        source=ProfileFieldSource.LLM_EXTRACTED,
        source_session_id=uuid4(),
        source_scenario_id=uuid4(),
        source_step_id=uuid4(),
        source_metadata={"quote": "my email", "n": 3},
        verified=True,
        verification_method="otp",
        verified_at=BASE,
        verified_by="agent",
        confidence=0.25,
        requires_confirmation=True,
        collected_at=BASE,
        updated_at=BASE,
        expires_at=BASE + timedelta(days=365),
        field_definition_id=uuid4(),
    )
    await store.update_field(tenant, profile.id, first)
    second = ProfileField(
        name="email",
        value="b@example.org",
        source_item_id=first.id,
        source_item_type=SourceType.PROFILE_FIELD,
        collected_at=BASE + timedelta(seconds=5),
        updated_at=BASE + timedelta(seconds=5),
    )
    await store.update_field(tenant, profile.id, second)
    for n in range(3):
        await store.update_field(
            tenant, profile.id, ProfileField(name=f"f{n}", value=n, collected_at=BASE)
        )
    await store.add_asset(
        tenant,
        profile.id,
        ProfileAsset(
            name="passport",
            asset_type="image",
            storage_provider="s3",
            storage_path="s3://bucket/p.jpg",
            mime_type="image/jpeg",
            size_bytes=1234,
            checksum="a" * 64,
            uploaded_at=BASE,
            uploaded_in_session_id=uuid4(),
            source_item_id=first.id,
            source_item_type=SourceType.PROFILE_FIELD,
            derived_from_tool="ocr",
            verified=True,
            verification_result={"ok": True},
            retention_policy="1y",
            expires_at=BASE + timedelta(days=30),
            analysis_field_ids=[first.id, second.id],
        ),
    )
    return tenant, profile


def revalidated(model: Any) -> Any:
    """The same model through full validation."""
    return type(model).model_validate(model.model_dump())


async def test_trusted_profiles_equal_validated_models(store: SqliteProfileStore) -> None:
    tenant, profile = await rich_profile(store)
    for include_history in (False, True):
        read = await store.get_by_id(tenant, profile.id, include_history=include_history)
        assert read is not None
        assert read == revalidated(read)
        assert read.model_dump() == revalidated(read).model_dump()
        assert read.model_fields_set == revalidated(read).model_fields_set
        assert read.last_interaction_at is not None and read.last_interaction_at.tzinfo is UTC
        assert read.fields["email"].value == "b@example.org"
        assert read.fields["email"].source_item_id is not None
        assert len(read.assets) == 1 and read.assets[0].analysis_field_ids
        for item in [*read.fields.values(), *read.assets]:
            assert item == revalidated(item)
            assert item.model_fields_set == revalidated(item).model_fields_set
    history = await store.get_field_history(tenant, profile.id, "email")
    assert [v.status.value for v in history] == ["active", "superseded"]
    assert history[1].value == {"address": SECRET, "tags": [1, 2.5, None, True]}
    assert history[1].expires_at == BASE + timedelta(days=365)
    for version in history:
        assert version == revalidated(version)


async def test_trusted_rows_equal_the_validating_path(store: SqliteProfileStore) -> None:
    tenant, _ = await rich_profile(store)
    rows = list(
        await store.connection.execute_fetchall(
            f"SELECT {codec.FIELD_SELECT} FROM fields WHERE tenant_id = ?", (str(tenant),)
        )
    )
    assert codec.fields_from_rows(rows) == [codec.field_from_row(r) for r in rows]
    assets = list(
        await store.connection.execute_fetchall(
            f"SELECT {codec.ASSET_SELECT} FROM assets WHERE tenant_id = ?", (str(tenant),)
        )
    )
    assert codec.assets_from_rows(assets) == [codec.asset_from_row(r) for r in assets]


async def test_definitions_and_requirements_equal_validated_models(
    store: SqliteProfileStore,
) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    definition = ProfileFieldDefinition(
        tenant_id=tenant,
        agent_id=agent,
        name="email",
        display_name="E-mail",
        description="where we write",
        value_type=FieldValueType.STRING,
        allowed_values=["a", "b"],
        verification_methods=["otp"],
        extraction_examples=["x"],
        is_pii=True,
        retention_days=30,
        freshness_seconds=60,
        created_at=BASE,
        updated_at=BASE,
        survivorship=SurvivorshipPolicy.MOST_RECENT,
        source_priority=[ProfileFieldSource.LLM_EXTRACTED],
    )
    await store.save_field_definition(definition)
    requirement = ScenarioFieldRequirement(
        tenant_id=tenant,
        agent_id=agent,
        scenario_id=scenario,
        step_id=uuid4(),
        field_name="email",
        required_level=RequiredLevel.SOFT,
        when_condition="x == 1",
        depends_on_fields=["phone", "name"],
        collection_order=-3,
        created_at=BASE,
        updated_at=BASE,
    )
    await store.save_scenario_requirement(requirement)
    definitions = await store.get_field_definitions(tenant, agent)
    # the store stamps updated_at on save
    assert definitions == [definition.model_copy(update={"updated_at": definitions[0].updated_at})]
    assert definitions[0] == revalidated(definitions[0])
    assert definitions[0].model_fields_set == revalidated(definitions[0]).model_fields_set
    requirements = await store.get_scenario_requirements(
        tenant, scenario, step_id=requirement.step_id
    )
    assert requirements == [
        requirement.model_copy(update={"updated_at": requirements[0].updated_at})
    ]
    assert requirements[0] == revalidated(requirements[0])


# every tampering below breaks a row; the value must never appear in the error
FIELD_TAMPERING = {
    "confidence-text": "confidence = 'very high'",
    "confidence-range": "confidence = 7.5",
    "value-bad-json": 'value = \'{"address": ' + SECRET + "'",
    "value-blob": "value = x'00ff'",
    "metadata-not-object": "source_metadata = '[1, 2]'",
    "verified-text": "verified = 'yes'",
    "verified-out-of-range": "verified = 7",
    "collected-at-not-a-time": "collected_at = 'yesterday " + SECRET + "'",
    "collected-at-naive": "collected_at = '2026-01-15T09:30:00'",
    "id-not-a-uuid": "id = 'not-a-uuid-" + SECRET + "'",
    "status-unknown": "status = 'bogus'",
    "name-invalid": "name = 'Not A Name'",
    "source-item-type-unknown": "source_item_type = 'profile_nothing'",
}


@pytest.mark.parametrize("tampering", sorted(FIELD_TAMPERING))
async def test_a_tampered_field_row_is_refused(store: SqliteProfileStore, tampering: str) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        f"UPDATE fields SET {FIELD_TAMPERING[tampering]} "
        "WHERE tenant_id = ? AND name = 'email' AND status = 'active'",
        (str(tenant),),
    )
    reads = [lambda: store.get_by_id(tenant, profile.id, include_history=True)]
    if tampering != "name-invalid":  # a renamed field is no longer found by its name
        reads.append(lambda: store.get_field_history(tenant, profile.id, "email"))
    if tampering not in ("name-invalid", "status-unknown"):  # still the ACTIVE "email"
        reads.append(lambda: store.get_by_id(tenant, profile.id))
        reads.append(lambda: store.get_field(tenant, profile.id, "email"))
    for read in reads:
        with pytest.raises(errors.StorageError, match="stored field row is corrupt") as caught:
            await read()
        assert SECRET not in str(caught.value)
        assert "very high" not in str(caught.value)


ASSET_TAMPERING = {
    "size-negative": "size_bytes = -1",
    "checksum-bad": "checksum = 'xyz'",
    "analysis-ids-bad": "analysis_field_ids = '[\"" + SECRET + "\"]'",
    "uploaded-at-bad": "uploaded_at = 'soon'",
}


@pytest.mark.parametrize("tampering", sorted(ASSET_TAMPERING))
async def test_a_tampered_asset_row_is_refused(store: SqliteProfileStore, tampering: str) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        f"UPDATE assets SET {ASSET_TAMPERING[tampering]} WHERE tenant_id = ?", (str(tenant),)
    )
    for read in (
        lambda: store.get_by_id(tenant, profile.id),
        lambda: store.get_asset_by_name(tenant, profile.id, "passport"),
    ):
        with pytest.raises(errors.StorageError, match="stored asset row is corrupt") as caught:
            await read()
        assert SECRET not in str(caught.value)


async def test_a_tampered_profile_row_is_refused(store: SqliteProfileStore) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        "UPDATE profiles SET verification_level = 'godlike' WHERE tenant_id = ?", (str(tenant),)
    )
    with pytest.raises(errors.StorageError, match="stored profile row is corrupt"):
        await store.get_by_id(tenant, profile.id)


async def test_a_tampered_requirement_row_is_refused(store: SqliteProfileStore) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    await store.connection.execute(
        "UPDATE scenario_requirements SET depends_on_fields = '[\"Bad Name\"]' WHERE tenant_id = ?",
        (str(tenant),),
    )
    profile = await store.get_or_create(tenant, Channel.WEB, "v")
    for read in (
        lambda: store.get_scenario_requirements(tenant, scenario),
        lambda: store.get_missing_fields(tenant, profile, scenario),
    ):
        with pytest.raises(errors.StorageError, match="scenario requirement row is corrupt"):
            await read()


async def test_a_foreign_but_valid_row_reads_correctly(store: SqliteProfileStore) -> None:
    """Another offset, upper-case UUID text: not our form, so validated, and correct."""
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        "UPDATE fields SET collected_at = '2026-01-15T11:30:00.123456+02:00', "
        "field_definition_id = upper(field_definition_id) "
        "WHERE tenant_id = ? AND name = 'email' AND status = 'superseded'",
        (str(tenant),),
    )
    history = await store.get_field_history(tenant, profile.id, "email")
    (old,) = [v for v in history if v.status.value == "superseded"]
    assert old.collected_at == BASE and old.collected_at.tzinfo is UTC
    assert old.field_definition_id is not None
    read = await store.get_by_id(tenant, profile.id, include_history=True)
    assert read is not None and old in read.field_history["email"]


async def test_superseded_by_id_reuses_parsed_ids_only_for_our_own_text(
    store: SqliteProfileStore,
) -> None:
    """A history's ``superseded_by_id`` reuses the UUIDs parsed from the ``id`` column of
    the same result when its text is exactly theirs; any other text is converted (or
    validated) on its own, so a foreign form still reads correctly and garbage is refused."""
    tenant, profile = await rich_profile(store)
    read = await store.get_by_id(tenant, profile.id, include_history=True)
    assert read is not None
    active, old = read.field_history["email"]
    assert old.superseded_by_id == active.id
    assert old.superseded_by_id is active.id  # the one parsed UUID, shared
    where = "WHERE tenant_id = ? AND name = 'email' AND status = 'superseded'"
    # the same id in a foreign (upper-case) form: not reused, validated, and correct
    await store.connection.execute(
        f"UPDATE fields SET superseded_by_id = upper(superseded_by_id) {where}", (str(tenant),)
    )
    read = await store.get_by_id(tenant, profile.id, include_history=True)
    assert read is not None
    assert read.field_history["email"][1].superseded_by_id == active.id
    # an id outside the result: parsed on its own
    elsewhere = uuid4()
    await store.connection.execute(
        f"UPDATE fields SET superseded_by_id = ? {where}", (str(elsewhere), str(tenant))
    )
    read = await store.get_by_id(tenant, profile.id, include_history=True)
    assert read is not None
    assert read.field_history["email"][1].superseded_by_id == elsewhere
    # not a UUID at all: refused, naming the column and not the value
    await store.connection.execute(
        f"UPDATE fields SET superseded_by_id = 'not-a-uuid' {where}", (str(tenant),)
    )
    with pytest.raises(errors.StorageError, match="superseded_by_id") as caught:
        await store.get_by_id(tenant, profile.id, include_history=True)
    assert "not-a-uuid" not in str(caught.value)
