"""PII encryption: lineage metadata of every field is sealed, the registry cannot be edited
through the public API, and values stored before a name became PII are re-sealed."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.crypto import (
    ENVELOPE_PREFIX,
    METADATA_KEY,
    PII_REGISTRY_AGENT_ID,
    EncryptedProfileStore,
    Keyring,
    key_id_of,
)
from ccvault.gapfill import GapFillService
from ccvault.models import (
    Channel,
    ConversationTurn,
    ProfileField,
    ProfileFieldDefinition,
    Session,
    SourceType,
)
from ccvault_inmemory import InMemoryProfileStore

SECRET = "bob.secret@example.com"


def _keyring(*kids: str) -> Keyring:
    return Keyring.parse(
        ",".join(f"{kid}:{base64.b64encode(os.urandom(32)).decode()}" for kid in kids)
    )


@pytest.fixture
async def inner() -> AsyncIterator[InMemoryProfileStore]:
    async with InMemoryProfileStore() as store:
        yield store


@pytest.fixture
def store(inner: InMemoryProfileStore) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, _keyring("k1"))


async def _raw_dump(inner: InMemoryProfileStore, tenant: UUID, pid: UUID) -> str:
    return str(await inner.export_profile(tenant, pid))


# ---------------------------------------------------------------------------------------
# 1. source_metadata of non-PII fields
# ---------------------------------------------------------------------------------------


async def test_gap_fill_quote_of_a_non_pii_field_is_not_stored_in_plaintext(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    tenant, agent = uuid4(), uuid4()
    pid = (await store.get_or_create(tenant, Channel.WEB, "u1")).id
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant, agent_id=agent, name="email", value_type="email", is_pii=True
        )
    )
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant, agent_id=agent, name="newsletter", value_type="boolean"
        )
    )
    session = Session(
        tenant_id=tenant,
        agent_id=agent,
        customer_profile_id=pid,
        turns=[ConversationTurn(content=f"Yes, sign me up for the newsletter at {SECRET} please")],
    )
    service = GapFillService(store)
    results = await service.fill_multiple(["email", "newsletter"], session)
    assert results["newsletter"].filled
    await service.persist_extracted_values(session, results)

    assert SECRET not in await _raw_dump(inner, tenant, pid)
    raw = await inner.get_field(tenant, pid, "newsletter")
    assert raw is not None and raw.value is True  # a non-PII value stays plaintext
    assert set(raw.source_metadata) == {METADATA_KEY}
    # every read path opens it
    got = await store.get_field(tenant, pid, "newsletter")
    assert got is not None and SECRET in str(got.source_metadata)
    history = await store.get_field_history(tenant, pid, "newsletter")
    assert SECRET in str(history[0].source_metadata)
    exported = await store.export_profile(tenant, pid)
    assert SECRET in str(exported["profile"]["fields"]["newsletter"]["source_metadata"])
    full = await store.get_by_id(tenant, pid, include_history=True)
    assert full is not None
    assert SECRET in str(full.field_history["newsletter"][0].source_metadata)


async def test_lineage_reads_open_metadata_of_non_pii_fields(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    tenant = uuid4()
    pid = (await store.get_or_create(tenant, Channel.WEB, "u1")).id
    root = ProfileField(name="country", value="NL", source_metadata={"quote": SECRET})
    await store.update_field(tenant, pid, root)
    derived = ProfileField(
        name="region",
        value="EU",
        source_item_id=root.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata={"rule": SECRET},
    )
    await store.update_field(tenant, pid, derived)
    assert SECRET not in await _raw_dump(inner, tenant, pid)
    assert SECRET not in str(await inner.get_derivation_chain(tenant, derived.id, "profile_field"))

    chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
    assert [entry["source_metadata"] for entry in chain] == [{"quote": SECRET}, {"rule": SECRET}]
    items = await store.get_derived_items(tenant, root.id)
    assert [f.source_metadata for f in items["fields"]] == [{"rule": SECRET}]
    # empty metadata of a non-PII field is left as is (nothing to hide)
    await store.update_field(tenant, pid, ProfileField(name="language", value="nl"))
    plain = await inner.get_field(tenant, pid, "language")
    assert plain is not None and plain.source_metadata == {} and plain.value == "nl"


async def test_rotation_seals_plaintext_metadata_of_non_pii_fields_under_the_new_key(
    inner: InMemoryProfileStore,
) -> None:
    tenant = uuid4()
    pid = (await inner.get_or_create(tenant, Channel.WEB, "u1")).id
    # written before encryption was switched on
    await inner.update_field(
        tenant, pid, ProfileField(name="newsletter", value=True, source_metadata={"q": SECRET})
    )
    store = EncryptedProfileStore(inner, _keyring("k1", "k2"))
    reports = await store.rotate_keys([tenant])
    assert sum(r.rewritten for r in reports) == 1
    raw = await inner.get_field(tenant, pid, "newsletter")
    assert raw is not None and raw.value is True
    assert key_id_of(raw.source_metadata[METADATA_KEY]) == "k2"
    got = await store.get_field(tenant, pid, "newsletter")
    assert got is not None and got.source_metadata == {"q": SECRET}
    assert sum(r.rewritten for r in await store.rotate_keys([tenant])) == 0


# ---------------------------------------------------------------------------------------
# 2. the registry is not writable through the public API
# ---------------------------------------------------------------------------------------


async def test_registry_markers_cannot_be_deleted_or_overwritten(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    tenant = uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=uuid4(), name="email", is_pii=True)
    )
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.delete_field_definition(tenant, PII_REGISTRY_AGENT_ID, "email")
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant, agent_id=PII_REGISTRY_AGENT_ID, name="email", is_pii=False
            )
        )
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=PII_REGISTRY_AGENT_ID, name="x")
        )
    assert await store.pii_field_names(tenant) == frozenset({"email"})
    pid = (await store.get_or_create(tenant, Channel.WEB, "u1")).id
    await store.update_field(tenant, pid, ProfileField(name="email", value=SECRET))
    assert SECRET not in await _raw_dump(inner, tenant, pid)


# ---------------------------------------------------------------------------------------
# 3. values stored before the name became PII
# ---------------------------------------------------------------------------------------


async def test_marking_a_name_pii_reseals_values_already_stored(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    tenant = uuid4()
    pids = [(await store.get_or_create(tenant, Channel.WEB, f"u{n}")).id for n in range(3)]
    for n, pid in enumerate(pids):
        await store.update_field(tenant, pid, ProfileField(name="email", value=f"old{n}@x.com"))
        await store.update_field(tenant, pid, ProfileField(name="email", value=f"new{n}@x.com"))
    await store.update_field(tenant, pids[0], ProfileField(name="language", value="nl"))

    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=uuid4(), name="email", is_pii=True)
    )
    for n, pid in enumerate(pids):
        dump = await _raw_dump(inner, tenant, pid)
        assert f"old{n}@x.com" not in dump and f"new{n}@x.com" not in dump
        history = await store.get_field_history(tenant, pid, "email")
        assert sorted(v.value for v in history) == [f"new{n}@x.com", f"old{n}@x.com"]
    language = await inner.get_field(tenant, pids[0], "language")
    assert language is not None and language.value == "nl"


async def test_resealing_is_bounded_and_warns_with_the_command(
    inner: InMemoryProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = EncryptedProfileStore(inner, _keyring("k1"), reseal_limit=1)
    tenant = uuid4()
    pids = [(await store.get_or_create(tenant, Channel.WEB, f"u{n}")).id for n in range(3)]
    for pid in pids:
        await store.update_field(tenant, pid, ProfileField(name="email", value=f"{pid}@x.com"))
    with caplog.at_level(logging.WARNING, logger="ccvault.crypto"):
        added = await store.register_pii_names(tenant, ["email"])
    assert added == ["email"]
    assert f"ccvault rotate-keys --tenant {tenant}" in caplog.text
    sealed = [
        str((await inner.get_field(tenant, pid, "email")).value).startswith(ENVELOPE_PREFIX)  # type: ignore[union-attr]
        for pid in sorted(pids)
    ]
    assert sealed == [True, False, False]
    # the command the warning names seals the rest
    await store.rotate_keys([tenant])
    for pid in pids:
        assert f"{pid}@x.com" not in await _raw_dump(inner, tenant, pid)
    # registering again adds nothing and rewrites nothing
    assert await store.register_pii_names(tenant, ["email"]) == []
