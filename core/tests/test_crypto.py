"""PII encryption at rest: keyring format, AES-GCM binding, the PII registry, rotation."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

import ccvault
from ccvault import errors
from ccvault.crypto import (
    ENVELOPE_PREFIX,
    METADATA_KEY,
    PII_REGISTRY_AGENT_ID,
    EncryptedProfileStore,
    Keyring,
    RotationProgress,
    generate_key_entry,
    key_id_of,
)
from ccvault.models import (
    Channel,
    ItemStatus,
    ProfileField,
    ProfileFieldDefinition,
    SourceType,
)
from ccvault.store import ProfileStore
from ccvault_inmemory import InMemoryProfileStore


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


TENANT = uuid4()
AGENT = uuid4()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.parse(f"k1:{_key()}")


@pytest.fixture
async def inner() -> AsyncIterator[InMemoryProfileStore]:
    async with InMemoryProfileStore() as store:
        yield store


@pytest.fixture
def store(inner: InMemoryProfileStore, keyring: Keyring) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, keyring)


async def _pii(store: ProfileStore, name: str = "email", tenant: UUID = TENANT) -> None:
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=AGENT, name=name, is_pii=True)
    )


async def _profile(store: ProfileStore, user: str = "+31600000001", tenant: UUID = TENANT) -> UUID:
    return (await store.get_or_create(tenant, Channel.WHATSAPP, user)).id


# ---------------------------------------------------------------------------------------
# keyring
# ---------------------------------------------------------------------------------------


def test_keyring_last_entry_is_current_and_all_decrypt() -> None:
    ring = Keyring.parse(f"old:{_key()}, new:{_key()}")
    assert ring.current == "new" and set(ring.keys) == {"old", "new"}


def test_bare_key_gets_default_id_and_urlsafe_base64_is_accepted() -> None:
    raw = os.urandom(32)
    assert Keyring.parse(base64.b64encode(raw).decode()).current == "default"
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert Keyring.parse(f"u:{urlsafe}").current == "u"


def test_generate_key_entry_parses() -> None:
    entry = generate_key_entry("2026a")
    assert Keyring.parse(entry).current == "2026a"
    with pytest.raises(errors.ValidationError):
        generate_key_entry("bad id!")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "no encryption key"),
        ("   ,  ", "no encryption key"),
        ("k1:not base64!!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "32 bytes"),
        (f"bad id:{_key()}", "invalid key id"),
        ("k1:{k},k1:{k}".format(k=_key()), "listed twice"),
    ],
    # fixed ids: the keys are random, and pytest-xdist needs the same ids in every worker
    ids=["empty", "blank", "not-base64", "short-key", "bad-id", "listed-twice"],
)
def test_bad_keyrings_are_configuration_errors(spec: str, reason: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=reason) as raised:
        Keyring.parse(spec)
    assert "pii_encryption_key_id" in str(raised.value)


def test_errors_never_echo_key_material() -> None:
    secret = base64.b64encode(os.urandom(20)).decode()
    with pytest.raises(errors.ConfigurationError) as raised:
        Keyring.parse(f"k1:{secret}")
    assert secret not in str(raised.value)


async def test_encryption_on_without_key_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROFILE_PII_ENCRYPTION_KEY", raising=False)
    settings = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=True
    )
    with pytest.raises(errors.ConfigurationError, match="PROFILE_PII_ENCRYPTION_KEY"):
        async with ccvault.open_store(settings):
            pytest.fail("the store must not open without a key")


async def test_open_store_composes_the_wrapper_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", f"a:{_key()},b:{_key()}")
    settings = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=True
    )
    async with ccvault.open_store(settings) as store:
        assert isinstance(store, EncryptedProfileStore)
        assert store.keyring.current == "b"
    off = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )
    async with ccvault.open_store(off) as store:
        assert not isinstance(store, EncryptedProfileStore)


# ---------------------------------------------------------------------------------------
# what is stored, what is served
# ---------------------------------------------------------------------------------------


async def test_pii_value_and_metadata_are_stored_only_as_ciphertext(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store)
    pid = await _profile(store)
    field = ProfileField(
        name="email",
        value="alice@example.com",
        source_metadata={"quote": "my mail is alice@example.com"},
    )
    await store.update_field(TENANT, pid, field)
    raw = await inner.get_field(TENANT, pid, "email")
    assert raw is not None
    assert isinstance(raw.value, str) and raw.value.startswith(ENVELOPE_PREFIX)
    assert set(raw.source_metadata) == {METADATA_KEY}
    assert "alice" not in raw.model_dump_json()
    assert key_id_of(raw.value) == "k1"
    # and every read path of the wrapper serves the plaintext
    got = await store.get_field(TENANT, pid, "email")
    assert got is not None and got.value == "alice@example.com"
    assert got.source_metadata == {"quote": "my mail is alice@example.com"}
    profile = await store.get_by_id(TENANT, pid, include_history=True)
    assert profile is not None
    assert profile.fields["email"].value == "alice@example.com"
    assert profile.field_history["email"][0].value == "alice@example.com"
    history = await store.get_field_history(TENANT, pid, "email")
    assert [v.value for v in history] == ["alice@example.com"]
    exported = await store.export_profile(TENANT, pid)
    assert exported["profile"]["fields"]["email"]["value"] == "alice@example.com"
    assert "alice" not in str(await inner.export_profile(TENANT, pid))


async def test_non_pii_fields_stay_plaintext(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store)
    pid = await _profile(store)
    await store.update_field(TENANT, pid, ProfileField(name="language", value="nl"))
    raw = await inner.get_field(TENANT, pid, "language")
    assert raw is not None and raw.value == "nl"


async def test_encryption_required_also_marks_pii(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=TENANT, agent_id=AGENT, name="iban", encryption_required=True
        )
    )
    pid = await _profile(store)
    await store.update_field(TENANT, pid, ProfileField(name="iban", value="NL91ABNA0417164300"))
    raw = await inner.get_field(TENANT, pid, "iban")
    assert raw is not None and str(raw.value).startswith(ENVELOPE_PREFIX)


async def test_any_agents_definition_makes_the_name_pii_for_the_tenant(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    other_agent = uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=TENANT, agent_id=other_agent, name="email", is_pii=True)
    )
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=TENANT, agent_id=AGENT, name="email", is_pii=False)
    )
    pid = await _profile(store)
    await store.update_field(TENANT, pid, ProfileField(name="email", value="bob@example.com"))
    raw = await inner.get_field(TENANT, pid, "email")
    assert raw is not None and "bob" not in str(raw.value)
    # the registry is per tenant: another tenant's email is not PII
    other = uuid4()
    pid2 = await _profile(store, tenant=other)
    await store.update_field(other, pid2, ProfileField(name="email", value="eve@example.com"))
    raw2 = await inner.get_field(other, pid2, "email")
    assert raw2 is not None and raw2.value == "eve@example.com"


async def test_registry_is_sticky_and_shared_by_every_wrapper_on_the_store(
    store: EncryptedProfileStore, inner: InMemoryProfileStore, keyring: Keyring
) -> None:
    await _pii(store)
    assert await store.delete_field_definition(TENANT, AGENT, "email")
    # a second process: its own wrapper, the same database
    second = EncryptedProfileStore(inner, keyring)
    pid = await _profile(second)
    await second.update_field(TENANT, pid, ProfileField(name="email", value="carol@example.com"))
    raw = await inner.get_field(TENANT, pid, "email")
    assert raw is not None and "carol" not in str(raw.value)
    markers = await inner.get_field_definitions(TENANT, PII_REGISTRY_AGENT_ID, enabled_only=False)
    assert [m.name for m in markers] == ["email"]
    assert not any(m.enabled for m in markers)
    # the marker is not one of the agent's definitions
    assert await store.get_field_definitions(TENANT, AGENT) == []


async def test_save_encrypts_pii_fields_of_the_aggregate(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store, "phone")
    profile = await store.get_or_create(TENANT, Channel.SMS, "+31611111111")
    profile.fields["phone"] = ProfileField(name="phone", value="+31611111111")
    await store.save(profile)
    raw = await inner.get_field(TENANT, profile.id, "phone")
    assert raw is not None and "+3161" not in str(raw.value)
    got = await store.get_by_id(TENANT, profile.id)
    assert got is not None and got.fields["phone"].value == "+31611111111"


async def test_json_values_of_every_shape_round_trip(store: EncryptedProfileStore) -> None:
    await _pii(store, "doc")
    pid = await _profile(store)
    for value in [None, True, 3, 2.5, "x", ["a", 1], {"k": {"n": [1, None]}}]:
        await store.update_field(TENANT, pid, ProfileField(name="doc", value=value))
        got = await store.get_field(TENANT, pid, "doc")
        assert got is not None and got.value == value


async def test_reserved_envelope_values_are_refused_before_writing(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    pid = await _profile(store)
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.update_field(
            TENANT, pid, ProfileField(name="note", value=f"{ENVELOPE_PREFIX}k1:AAAA")
        )
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.update_field(
            TENANT, pid, ProfileField(name="note", value="x", source_metadata={METADATA_KEY: "y"})
        )
    assert await inner.get_field_history(TENANT, pid, "note") == []


async def test_lineage_reads_decrypt_metadata(store: EncryptedProfileStore) -> None:
    await _pii(store, "passport_number")
    pid = await _profile(store)
    root = ProfileField(name="nationality", value="NL")
    await store.update_field(TENANT, pid, root)
    derived = ProfileField(
        name="passport_number",
        value="NX1234567",
        source_item_id=root.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata={"ocr": "NX1234567"},
    )
    await store.update_field(TENANT, pid, derived)
    chain = await store.get_derivation_chain(TENANT, derived.id, "profile_field")
    assert [entry["name"] for entry in chain] == ["nationality", "passport_number"]
    assert chain[-1]["source_metadata"] == {"ocr": "NX1234567"}
    items = await store.get_derived_items(TENANT, root.id)
    assert [f.value for f in items["fields"]] == ["NX1234567"]


async def test_merge_keeps_pii_readable(store: EncryptedProfileStore) -> None:
    await _pii(store)
    source = await _profile(store, "+31600000002")
    target = await _profile(store, "+31600000003")
    await store.update_field(TENANT, source, ProfileField(name="email", value="dan@example.com"))
    await store.merge_profiles(TENANT, source, target)
    got = await store.get_field(TENANT, target, "email")
    assert got is not None and got.value == "dan@example.com"


# ---------------------------------------------------------------------------------------
# binding: a ciphertext copied elsewhere does not decrypt
# ---------------------------------------------------------------------------------------


async def _stored(inner: ProfileStore, tenant: UUID, pid: UUID, name: str) -> ProfileField:
    found = await inner.get_field(tenant, pid, name)
    assert found is not None
    return found


@pytest.mark.parametrize("target", ["other_row_same_field", "other_profile", "other_name"])
async def test_ciphertext_copied_to_another_row_does_not_decrypt(
    store: EncryptedProfileStore, inner: InMemoryProfileStore, target: str
) -> None:
    await _pii(store, "email")
    await _pii(store, "backup_email")
    alice = await _profile(store, "+31600000010")
    mallory = await _profile(store, "+31600000011")
    await store.update_field(TENANT, alice, ProfileField(name="email", value="alice@example.com"))
    stolen = await _stored(inner, TENANT, alice, "email")
    pid, name = {
        "other_row_same_field": (alice, "email"),
        "other_profile": (mallory, "email"),
        "other_name": (mallory, "backup_email"),
    }[target]
    # written straight into the database, as an attacker with database access would
    await inner.update_field(
        TENANT,
        pid,
        ProfileField(name=name, value=stolen.value, source_metadata=stolen.source_metadata),
    )
    with pytest.raises(errors.EncryptionError, match="does not authenticate"):
        await store.get_field(TENANT, pid, name)


async def test_ciphertext_copied_to_another_tenant_does_not_decrypt(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store)
    alice = await _profile(store)
    await store.update_field(TENANT, alice, ProfileField(name="email", value="alice@example.com"))
    stolen = await _stored(inner, TENANT, alice, "email")
    other = uuid4()
    pid = await _profile(inner, tenant=other)
    # same row id, other tenant
    await inner.update_field(other, pid, stolen)
    with pytest.raises(errors.EncryptionError):
        await store.get_field(other, pid, "email")


async def test_tampered_ciphertext_and_unknown_key_are_refused(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store)
    pid = await _profile(store)
    item = ProfileField(name="email", value="alice@example.com")
    await store.update_field(TENANT, pid, item)
    raw = await _stored(inner, TENANT, pid, "email")
    body = raw.value[:-2] + ("A" if raw.value[-2] != "A" else "B") + raw.value[-1]
    await inner.rewrite_field_payloads(TENANT, pid, {item.id: (body, raw.source_metadata)})
    with pytest.raises(errors.EncryptionError, match="does not authenticate"):
        await store.get_field(TENANT, pid, "email")
    stranger = EncryptedProfileStore(inner, Keyring.parse(f"k9:{_key()}"))
    with pytest.raises(errors.EncryptionError, match="'k1'"):
        await stranger.get_field_history(TENANT, pid, "email")


# ---------------------------------------------------------------------------------------
# rotation
# ---------------------------------------------------------------------------------------


async def test_rotation_reencrypts_every_version_under_the_newest_key(
    inner: InMemoryProfileStore,
) -> None:
    k1 = f"k1:{_key()}"
    old = EncryptedProfileStore(inner, Keyring.parse(k1))
    await _pii(old)
    tenants = [TENANT, uuid4()]
    written: dict[UUID, list[str]] = {}
    for tenant in tenants:
        await _pii(old, tenant=tenant)
        for n in range(3):
            pid = await _profile(old, f"+3160000010{n}", tenant=tenant)
            values = [f"v{n}-{i}@example.com" for i in range(3)]
            for value in values:
                await old.update_field(tenant, pid, ProfileField(name="email", value=value))
            written[pid] = values
    # a plaintext PII value from before its definition existed
    late = await _profile(old, "+31600000199")
    await old.update_field(TENANT, late, ProfileField(name="nickname", value="ally"))
    await _pii(old, "nickname")

    k2 = f"k2:{_key()}"
    new = EncryptedProfileStore(inner, Keyring.parse(f"{k1},{k2}"))
    seen: list[RotationProgress] = []
    reports = await new.rotate_keys(progress=seen.append, batch_size=2)
    assert sum(r.profiles for r in reports) == 7
    assert sum(r.rewritten for r in reports) == 6 * 3 + 1
    # one progress report per batch of at most 2 profiles, the last one complete
    assert 4 <= len(seen) <= 7
    assert seen[-1].profiles_done == seen[-1].profiles_total == 7
    assert seen[-1].rewritten == 6 * 3 + 1 and seen[-1].failed == 0
    # every version, every part, is now under k2 ...
    for tenant in tenants:
        for pid in await inner.list_profile_ids(tenant):
            document = await inner.export_profile(tenant, pid)
            for versions in document["profile"]["field_history"].values():
                for version in versions:
                    assert key_id_of(version["value"]) == "k2"
                    assert key_id_of(version["source_metadata"][METADATA_KEY]) == "k2"
    # ... and readable with k2 alone, values unchanged, statuses unchanged
    only_new = EncryptedProfileStore(inner, Keyring.parse(k2))
    for pid, values in written.items():
        tenant = TENANT if pid in await inner.list_profile_ids(TENANT) else tenants[1]
        history = await only_new.get_field_history(tenant, pid, "email")
        assert sorted(v.value for v in history) == sorted(values)
        assert [v.status for v in history].count(ItemStatus.ACTIVE) == 1
    got = await only_new.get_field(TENANT, late, "nickname")
    assert got is not None and got.value == "ally"
    # idempotent
    again = await new.rotate_keys()
    assert sum(r.rewritten for r in again) == 0


async def test_rewrite_through_the_wrapper_seals_pii_payloads(
    store: EncryptedProfileStore, inner: InMemoryProfileStore
) -> None:
    await _pii(store)
    pid = await _profile(store)
    email = ProfileField(name="email", value="a@example.com")
    note = ProfileField(name="note", value="n1")
    await store.update_field(TENANT, pid, email)
    await store.update_field(TENANT, pid, note)
    count = await store.rewrite_field_payloads(
        TENANT,
        pid,
        {email.id: ("b@example.com", {"k": "v"}), note.id: ("n2", {}), uuid4(): ("x", {})},
    )
    assert count == 2
    raw = await _stored(inner, TENANT, pid, "email")
    assert "b@example" not in raw.model_dump_json()
    got = await store.get_field(TENANT, pid, "email")
    assert got is not None and got.value == "b@example.com" and got.source_metadata == {"k": "v"}
    raw_note = await _stored(inner, TENANT, pid, "note")
    assert raw_note.value == "n2"
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.rewrite_field_payloads(TENANT, pid, {note.id: (f"{ENVELOPE_PREFIX}k1:AA", {})})
