"""All-or-nothing writes: a failure injected mid-transaction leaves nothing half-written.

The failure is a TEMP trigger on the store's own connection that aborts one particular
statement of a multi-statement transaction, after earlier statements of the same
transaction have already run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    VerificationLevel,
)
from ccvault_sqlite import SqliteProfileStore


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, db: Path) -> AsyncIterator[SqliteProfileStore]:
    path = db if request.param == "file" else ":memory:"
    async with SqliteProfileStore(path=path) as s:
        yield s


async def inject(store: SqliteProfileStore, name: str, when: str) -> None:
    """Abort every statement matching ``when`` (a trigger head) on the store's connection."""
    await store.connection.execute(
        f"CREATE TEMP TRIGGER {name} {when} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )


async def heal(store: SqliteProfileStore, name: str) -> None:
    await store.connection.execute(f"DROP TRIGGER temp.{name}")


async def state(store: SqliteProfileStore, tenant: UUID, *profiles: UUID) -> str:
    """Everything stored about these profiles, raw, as one comparable string."""
    documents: list[Any] = []
    for profile_id in profiles:
        try:
            document = await store.export_profile(tenant, profile_id)
        except errors.NotFoundError:
            documents.append(None)
            continue
        document.pop("exported_at")
        documents.append(document)
    counts = await store.count_items_by_status(tenant)
    rows = await store.connection.execute_fetchall(
        "SELECT channel, channel_user_id, profile_id FROM channel_identities "
        "WHERE tenant_id = ? ORDER BY 1, 2",
        (str(tenant),),
    )
    return json.dumps([documents, counts, [list(r) for r in rows]], sort_keys=True, default=str)


def field(name: str, value: Any, **extra: Any) -> ProfileField:
    return ProfileField(name=name, value=value, **extra)


def asset(name: str) -> ProfileAsset:
    return ProfileAsset(
        name=name, asset_type="document", storage_provider="s3", storage_path=f"s3://b/{uuid4()}"
    )


async def test_save_failing_on_its_last_field_writes_nothing(store: SqliteProfileStore) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550100")
    old_city = await store.update_field(tenant, profile.id, field("city", "Rome"))
    before = await state(store, tenant, profile.id)

    current = await store.get_by_id(tenant, profile.id)
    assert current is not None
    current.verification_level = VerificationLevel.KYC_COMPLETE
    current.channel_identities.append(ChannelIdentity(channel=Channel.EMAIL, channel_user_id="a@x"))
    current.consents = [Consent(consent_type="marketing", granted=True)]
    current.fields["city"] = field("city", "Milan")  # supersedes Rome first
    current.fields["email"] = field("email", "a@x")
    current.fields["zz_boom"] = field("zz_boom", 1)  # the last insert fails
    current.assets.append(asset("selfie"))
    await inject(store, "boom", "BEFORE INSERT ON main.fields WHEN NEW.name = 'zz_boom'")
    with pytest.raises(errors.VaultError, match="injected"):
        await store.save(current)
    assert await state(store, tenant, profile.id) == before

    # the identity it tried to take is still free; Rome is still the ACTIVE city
    assert await store.get_by_channel_identity(tenant, Channel.EMAIL, "a@x") is None
    city = await store.get_field(tenant, profile.id, "city")
    assert city is not None and city.id == old_city and city.superseded_by_id is None

    # and the store works on: the same save goes through once the fault is gone
    await heal(store, "boom")
    await store.save(current)
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None and set(found.fields) == {"city", "email", "zz_boom"}
    assert found.verification_level is VerificationLevel.KYC_COMPLETE


async def test_update_field_failing_after_the_supersede_keeps_the_old_version_active(
    store: SqliteProfileStore,
) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550101")
    old = await store.update_field(tenant, profile.id, field("email", "old@x.org"))
    before = await state(store, tenant, profile.id)
    await inject(store, "boom", "BEFORE INSERT ON main.fields WHEN NEW.value = '\"boom\"'")
    with pytest.raises(errors.VaultError, match="injected"):
        await store.update_field(tenant, profile.id, field("email", "boom"))
    assert await state(store, tenant, profile.id) == before
    current = await store.get_field(tenant, profile.id, "email")
    assert current is not None and current.id == old and current.status is ItemStatus.ACTIVE


async def test_merge_failing_at_its_last_step_moves_nothing(store: SqliteProfileStore) -> None:
    tenant = uuid4()
    source = await store.get_or_create(tenant, Channel.SMS, "+15550102")
    target = await store.get_or_create(tenant, Channel.EMAIL, "t@x.org")
    await store.update_field(tenant, source.id, field("email", "s@x.org", verified=True))
    await store.update_field(tenant, target.id, field("email", "t@x.org"))
    await store.update_field(tenant, source.id, field("city", "Oslo"))
    await store.add_asset(tenant, source.id, asset("passport"))
    before = await state(store, tenant, source.id, target.id)
    # soft-deleting the source is the merge's last statement
    await inject(store, "boom", "BEFORE UPDATE OF deleted_at ON main.profiles")
    with pytest.raises(errors.VaultError, match="injected"):
        await store.merge_profiles(tenant, source.id, target.id)
    assert await state(store, tenant, source.id, target.id) == before

    await heal(store, "boom")
    await store.merge_profiles(tenant, source.id, target.id)
    merged = await store.get_by_id(tenant, target.id)
    assert merged is not None
    assert merged.fields["email"].value == "s@x.org" and merged.fields["city"].value == "Oslo"
    assert {i.channel_user_id for i in merged.channel_identities} == {"+15550102", "t@x.org"}
    assert await store.get_by_id(tenant, source.id) is None


async def test_purge_failing_in_its_cascade_deletes_nothing(store: SqliteProfileStore) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550103")
    await store.update_field(tenant, profile.id, field("email", "a@x.org"))
    await store.add_asset(tenant, profile.id, asset("contract"))
    before = await state(store, tenant, profile.id)
    await inject(store, "boom", "BEFORE DELETE ON main.assets")
    with pytest.raises(errors.VaultError, match="injected"):
        await store.purge_profile(tenant, profile.id)
    assert await state(store, tenant, profile.id) == before
    await heal(store, "boom")
    assert await store.purge_profile(tenant, profile.id) is True
    assert await store.get_by_id(tenant, profile.id) is None


async def test_soft_delete_failing_while_releasing_identities_keeps_the_profile(
    store: SqliteProfileStore,
) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550104")
    before = await state(store, tenant, profile.id)
    await inject(store, "boom", "BEFORE DELETE ON main.channel_identities")
    with pytest.raises(errors.VaultError, match="injected"):
        await store.delete(tenant, profile.id)
    assert await state(store, tenant, profile.id) == before
    assert await store.get_by_id(tenant, profile.id) is not None


async def test_a_value_sqlite_cannot_hold_is_refused_before_writing(
    store: SqliteProfileStore,
) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550105")
    before = await state(store, tenant, profile.id)
    with pytest.raises(errors.ValidationError):
        await store.update_field(tenant, profile.id, field("big", 2**70))
    with pytest.raises(errors.ValidationError):
        await store.update_field(tenant, profile.id, field("text", "lone \ud800 surrogate"))
    current = await store.get_by_id(tenant, profile.id)
    assert current is not None
    current.fields["big"] = field("big", 2**70)
    with pytest.raises(errors.ValidationError):
        await store.save(current)
    assert await state(store, tenant, profile.id) == before


async def test_a_write_cancelled_mid_transaction_is_rolled_back(
    store: SqliteProfileStore,
) -> None:
    """A caller's timeout fires while the INSERT runs: the supersede before it is undone."""
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550106")
    old = await store.update_field(tenant, profile.id, field("email", "old@x.org"))
    before = await state(store, tenant, profile.id)
    entered, release = threading.Event(), threading.Event()

    def hold() -> int:  # runs on the connection's thread, inside the transaction
        entered.set()
        release.wait(timeout=30)
        return 0

    await store.connection.create_function("hold", 0, hold)
    await store.connection.execute(
        "CREATE TEMP TRIGGER slow BEFORE INSERT ON main.fields "
        "WHEN NEW.value = '\"slow\"' BEGIN SELECT hold(); END"
    )
    write = asyncio.create_task(store.update_field(tenant, profile.id, field("email", "slow")))
    deadline = time.monotonic() + 10
    while not entered.is_set():
        assert time.monotonic() < deadline, "the write never reached the INSERT"
        await asyncio.sleep(0.005)
    write.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert await state(store, tenant, profile.id) == before
    current = await store.get_field(tenant, profile.id, "email")
    assert current is not None and current.id == old
    await store.update_field(tenant, profile.id, field("email", "new@x.org"))
    history = await store.get_field_history(tenant, profile.id, "email")
    assert [v.value for v in history] == ["new@x.org", "old@x.org"]


async def test_saving_a_soft_deleted_profile_is_not_found(store: SqliteProfileStore) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550107")
    await store.delete(tenant, profile.id)
    before = await state(store, tenant, profile.id)
    with pytest.raises(errors.NotFoundError):
        await store.save(profile)
    assert await state(store, tenant, profile.id) == before
    assert await store.get_by_id(tenant, profile.id) is None
