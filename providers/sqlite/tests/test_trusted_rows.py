"""Rows the vault wrote become models without validation; rows it did not write are refused.

The fast path (``codec.*s_from_rows``) must build exactly the models validation builds, and
a row edited in SQL must never come back as a garbage model: a row in a foreign but valid
form is validated (and reads correctly), an invalid one is refused with
:class:`~ccvault.errors.StorageError` naming the table and column, never the value.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
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
    FallbackAction,
    FieldValueType,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    RequiredLevel,
    ScenarioFieldRequirement,
    SourceType,
    SurvivorshipPolicy,
    VerificationLevel,
)
from ccvault_contract_tests import assert_not_quoted
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
        assert_not_quoted(caught.value, SECRET)  # nor any error chained to it
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
        assert_not_quoted(caught.value, SECRET)  # nor any error chained to it


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


def refuse_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every per-row validating path raises: a read that succeeds took the trusted path."""
    for name in (
        "_field_validated",
        "_asset_validated",
        "_identity_validated",
        "_definition_validated",
        "_requirement_validated",
    ):

        def validated(row: object, name: str = name) -> Any:
            raise AssertionError(f"a row in the vault's own form went through {name}")

        monkeypatch.setattr(codec, name, validated)


async def test_rows_in_our_own_form_are_never_revalidated(
    store: SqliteProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identities, assets with an empty analysis_field_ids (the default, refused by the
    trusted path before), definitions and requirements with empty lists: all trusted."""
    tenant, profile = await rich_profile(store)
    await store.add_asset(
        tenant,
        profile.id,
        ProfileAsset(
            name="selfie", asset_type="image", storage_provider="s3", storage_path="s3://b/s"
        ),
    )
    agent, other, scenario = uuid4(), uuid4(), uuid4()
    for owner, name in ((agent, "email"), (other, "phone"), (agent, "f0")):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=owner, name=name)
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant, agent_id=owner, scenario_id=scenario, field_name=name
            )
        )
    expected_read = await store.get_by_id(tenant, profile.id, include_history=True)
    refuse_validation(monkeypatch)
    for include_history in (False, True):
        read = await store.get_by_id(tenant, profile.id, include_history=include_history)
        assert read is not None
        assert read == revalidated(read)
        assert [i.channel_user_id for i in read.channel_identities] == [
            "+15550001",
            "a@example.org",
        ]
        for identity in read.channel_identities:
            assert identity == revalidated(identity)
            assert identity.model_fields_set == revalidated(identity).model_fields_set
        assert {a.name: a.analysis_field_ids for a in read.assets}["selfie"] == []
    assert read is not None and read == expected_read
    requirements, definitions = await store._get_requirements_with_definitions(
        tenant, scenario, None
    )
    assert sorted(r.field_name for r in requirements) == ["email", "f0", "phone"]
    assert {owner: sorted(d.name for d in found) for owner, found in definitions.items()} == {
        agent: ["email", "f0"],
        other: ["phone"],
    }
    for item in [*requirements, *definitions[agent], *definitions[other]]:
        assert item == revalidated(item)
        assert item.model_fields_set == revalidated(item).model_fields_set
    assert await store.get_missing_fields(tenant, read, scenario) == [
        r for r in requirements if r.field_name == "phone"
    ]


async def test_lists_read_from_one_text_are_not_shared(store: SqliteProfileStore) -> None:
    """A list column's distinct texts are parsed once per read; each model gets its own
    list all the same (a caller changing one changes no other model)."""
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    for name in ("email", "phone"):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant,
                agent_id=agent,
                name=name,
                verification_methods=["otp"],
                extraction_examples=["x"],
                source_priority=[ProfileFieldSource.USER_PROVIDED],
            )
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant,
                agent_id=agent,
                scenario_id=scenario,
                field_name=name,
                depends_on_fields=["name"],
            )
        )
    first, second = await store.get_field_definitions(tenant, agent)
    for column in ("verification_methods", "extraction_examples", "source_priority"):
        assert getattr(first, column) == getattr(second, column)
        assert getattr(first, column) is not getattr(second, column)
    assert first.source_priority == [ProfileFieldSource.USER_PROVIDED]
    first.verification_methods.append("sms")
    assert second.verification_methods == ["otp"]
    one, two = await store.get_scenario_requirements(tenant, scenario)
    assert one.depends_on_fields == two.depends_on_fields == ["name"]
    one.depends_on_fields.append("more")
    assert two.depends_on_fields == ["name"]
    again = await store.get_field_definitions(tenant, agent)
    assert [d.verification_methods for d in again] == [["otp"], ["otp"]]


def test_row_plans_follow_which_columns_are_constant() -> None:
    """The plan of a read (which columns are converted once) is reused only for rows whose
    constant columns are the same: a text column (``name``) constant in one read and
    varying in the next, every other column alike, is read from each row the second time."""
    stamp = codec.ts(BASE)
    base = ProfileField(name="a", value="x", collected_at=BASE, updated_at=BASE)
    one = list(codec.field_params(base))
    two = list(codec.field_params(base.model_copy(update={"name": "b"})))
    fixed = {"id": str(uuid4()), "collected_at": stamp, "updated_at": stamp}
    at = {name: codec.FIELD_COLUMNS.index(name) for name in fixed}
    for row in (one, two):
        for name, value in fixed.items():
            row[at[name]] = value
    same_name = [tuple(one), tuple(one)]
    two_names = [tuple(one), tuple(two)]
    for rows in (same_name, two_names, same_name):
        read = codec.fields_from_rows(rows)
        assert [f.name for f in read] == [codec.field_from_row(r).name for r in rows]
        assert read == [codec.field_from_row(r) for r in rows]


async def test_constants_memo_holds_no_personal_text(store: SqliteProfileStore) -> None:
    """Constant columns (one value in every row) are converted through a memo: ids, times,
    enumeration members, flags and numbers only, never a text column (personal data)."""
    codec._CONSTANTS.clear()
    tenant, profile = await rich_profile(store)
    await store.get_by_id(tenant, profile.id, include_history=True)
    await store.get_field_definitions(tenant, uuid4())
    held = [key[2] for key in codec._CONSTANTS]
    # and the plans of the reads' shapes key on the same kind of values only
    held += [v for shapes in codec._SHAPES.values() for key in shapes.plans for v in key[2]]
    assert held  # the memo is in use (the profile's own ids at least)
    enums: tuple[type[StrEnum], ...] = (ItemStatus, VerificationLevel, SourceType, Channel)
    enums += (ProfileFieldSource, FieldValueType, SurvivorshipPolicy, RequiredLevel)
    enums += (FallbackAction,)
    members = {m.value for enum in enums for m in enum}
    for value in held:
        assert (
            value is None
            or isinstance(value, (int, float))
            or value in members
            or re.fullmatch(r"[0-9a-f-]{36}|[0-9T:.+-]{32}", value)
        ), value
    assert not {"+15550001", "a@example.org", "s3://bucket/p.jpg", "otp", "agent"} & set(held)
    # twice the same read: equal models, and the mutable values are not shared
    first = await store.get_by_id(tenant, profile.id)
    second = await store.get_by_id(tenant, profile.id)
    assert first == second
    assert first is not None and second is not None
    first.fields["email"].source_metadata["changed"] = True
    assert "changed" not in second.fields["email"].source_metadata


IDENTITY_TAMPERING = {
    "user-id-control-character": "channel_user_id = char(10) || channel_user_id",
    "user-id-edge-blank": "channel_user_id = channel_user_id || ' '",
    "user-id-empty": "channel_user_id = ''",
    "channel-unknown": "channel = 'pigeon'",
    "verified-out-of-range": "verified = 2",
    "created-at-naive": "created_at = '2026-01-15T09:30:00'",
}


@pytest.mark.parametrize("tampering", sorted(IDENTITY_TAMPERING))
async def test_a_tampered_identity_row_is_refused(
    store: SqliteProfileStore, tampering: str
) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        f"UPDATE channel_identities SET {IDENTITY_TAMPERING[tampering]} "
        "WHERE tenant_id = ? AND channel = 'whatsapp'",
        (str(tenant),),
    )
    with pytest.raises(errors.StorageError, match="stored channel identity row is corrupt") as e:
        await store.get_by_id(tenant, profile.id)
    assert "15550001" not in str(e.value)


async def test_a_foreign_but_valid_identity_row_reads_correctly(
    store: SqliteProfileStore,
) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        "UPDATE channel_identities SET verified_at = '2026-01-15T11:30:00.123456+02:00' "
        "WHERE tenant_id = ? AND channel = 'whatsapp'",
        (str(tenant),),
    )
    read = await store.get_by_id(tenant, profile.id)
    assert read is not None
    assert read.channel_identities[0].verified_at == BASE
    assert read.channel_identities[0].verified_at.tzinfo is UTC


DEFINITION_TAMPERING = {
    # valid JSON lists of the wrong items: the trusted path once let these through
    "verification-methods-not-text": "verification_methods = '[1]'",
    "extraction-examples-objects": "extraction_examples = '[{\"a\": 1}]'",
    "source-priority-unknown": "source_priority = '[\"pigeon\"]'",
    "source-priority-nested": "source_priority = '[[\"user_provided\"]]'",
    "verification-methods-not-a-list": "verification_methods = '\"otp\"'",
    "value-type-unknown": "value_type = 'quantum'",
    "id-not-a-uuid": "id = 'nobody'",
}


@pytest.mark.parametrize("tampering", sorted(DEFINITION_TAMPERING))
async def test_a_tampered_definition_row_is_refused(
    store: SqliteProfileStore, tampering: str
) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    for name in ("email", "phone"):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name=name)
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name=name
            )
        )
    await store.connection.execute(
        f"UPDATE field_definitions SET {DEFINITION_TAMPERING[tampering]} "
        "WHERE tenant_id = ? AND name = 'email'",
        (str(tenant),),
    )
    for read in (
        lambda: store._get_field_definitions(tenant, agent, True),
        lambda: store._get_requirements_with_definitions(tenant, scenario, None),
    ):
        with pytest.raises(errors.StorageError, match="stored field definition row is corrupt"):
            await read()


async def test_an_analysis_id_list_of_the_wrong_items_is_refused(
    store: SqliteProfileStore,
) -> None:
    tenant, profile = await rich_profile(store)
    await store.connection.execute(
        "UPDATE assets SET analysis_field_ids = '[[1]]' WHERE tenant_id = ?", (str(tenant),)
    )
    with pytest.raises(errors.StorageError, match="stored asset row is corrupt"):
        await store.get_by_id(tenant, profile.id)


def test_the_id_and_time_memos_are_bounded_and_hold_only_accepted_text() -> None:
    ids = [str(uuid4()) for _ in range(5000)]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        assert codec._uuids(chunk) == [UUID(text) for text in chunk]
        assert len(codec._UUID_MEMO.entries) <= 4096
    # one read bigger than the memo (a long history) is parsed, not kept
    assert codec._uuids(ids) == [UUID(text) for text in ids]
    assert len(codec._UUID_MEMO.entries) <= 4096
    again = codec._uuids(ids[-3:])
    assert again == [UUID(text) for text in ids[-3:]]
    assert again[0] is codec._UUID_MEMO.entries[ids[-3]]  # served from the memo
    for garbage in (["not-a-uuid-" + SECRET], [ids[0][:-1] + "g"], [ids[0], None]):
        with pytest.raises(codec._NotOurs):
            codec._uuids(garbage)
        assert not set(garbage) - {ids[0]} & set(codec._UUID_MEMO.entries)
    times = [codec.ts(BASE + timedelta(seconds=n)) for n in range(3)]
    assert codec._timestamps(times) == [BASE + timedelta(seconds=n) for n in range(3)]
    assert codec._timestamps(times)[0] is codec._TIMESTAMP_MEMO.entries[times[0]]
    for garbage in (["2026-01-15T09:30:00"], ["2026-13-15T09:30:00.000000+00:00"]):
        with pytest.raises(codec._NotOurs):
            codec._timestamps(garbage)
        assert garbage[0] not in codec._TIMESTAMP_MEMO.entries


@pytest.mark.parametrize(
    "tampering",
    [
        "when_condition = printf('%.2001c', 'x')",  # over the 2,000 characters allowed
        "depends_on_fields = '[[\"name\"]]'",
        "required_level = 'maybe'",
        "rule_id = 'nowhere'",
    ],
)
async def test_a_tampered_requirement_column_is_refused(
    store: SqliteProfileStore, tampering: str
) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    for name, condition in (("email", "x == 1"), ("phone", None)):
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant,
                agent_id=agent,
                scenario_id=scenario,
                field_name=name,
                when_condition=condition,
            )
        )
    await store.connection.execute(
        f"UPDATE scenario_requirements SET {tampering} "
        "WHERE tenant_id = ? AND field_name = 'email'",
        (str(tenant),),
    )
    with pytest.raises(errors.StorageError, match="scenario requirement row is corrupt"):
        await store._get_scenario_requirements(tenant, scenario, None)


@pytest.mark.parametrize("tampering", sorted(IDENTITY_TAMPERING))
async def test_a_tampered_lone_identity_row_is_refused(
    store: SqliteProfileStore, tampering: str
) -> None:
    # one identity: the one-row path (each value on its own), not the column plans
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550001")
    assert (await store.get_by_id(tenant, profile.id)) == profile  # memos warmed
    await store.connection.execute(
        f"UPDATE channel_identities SET {IDENTITY_TAMPERING[tampering]} WHERE tenant_id = ?",
        (str(tenant),),
    )
    with pytest.raises(errors.StorageError, match="stored channel identity row is corrupt") as e:
        await store.get_by_id(tenant, profile.id)
    assert "15550001" not in str(e.value)


def test_one_row_builds_the_model_validation_builds() -> None:
    identity = ChannelIdentity(
        channel=Channel.EMAIL, channel_user_id="a@example.org", verified=True, verified_at=BASE
    )
    row = codec.identity_params(identity)
    [built] = codec.identities_from_rows([row])
    assert built == identity == revalidated(built)
    assert built.model_fields_set == set(ChannelIdentity.model_fields)
    assert codec.identities_from_rows([row])[0].verified_at is built.verified_at  # memoized


def test_the_names_memo_holds_only_accepted_names() -> None:
    names = codec._Names(codec._FIELD_NAME_LINES, size=4096)
    assert names(["email", "email", "phone"]) == ["email", "email", "phone"]
    assert names.known == {"email", "phone"}
    # a known name beside one that is not a name: the column is refused, the memo unchanged
    for garbage in (["email", "Not A Name"], ["email", "a\nb"], ["email", None], ["email", b"x"]):
        with pytest.raises(codec._NotOurs):
            names(garbage)
        assert names.known == {"email", "phone"}
    for garbage in (["Not A Name"], ["a\nb"]):  # refused again: never served from the memo
        with pytest.raises(codec._NotOurs):
            names(garbage)
    assert names(["phone"]) == ["phone"]
    many = [f"name_{n}" for n in range(5000)]
    for start in range(0, len(many), 1000):
        assert names(many[start : start + 1000]) == many[start : start + 1000]
        assert len(names.known) <= 4096
    assert names(many) == many  # more names than the memo holds: checked, not kept
    assert len(names.known) <= 4096
    with pytest.raises(codec._NotOurs):
        names([*many, "Not A Name"])
