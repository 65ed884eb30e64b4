"""The opened-envelope cache of the encryption wrapper (issue 13, encrypted reads): a hit
needs the same tenant, field version, name and both envelopes, exactly what the associated
data checks, so a copied or tampered envelope still fails; nothing mutable is shared
between callers; erasure through the wrapper drops every opened copy."""

from __future__ import annotations

import base64
import os
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.crypto import METADATA_KEY, EncryptedProfileStore, Keyring, RowMovedError
from ccvault.models import Channel, ProfileField
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("0be1ed00-0000-4000-8000-000000000001")
OTHER_TENANT = UUID("0be1ed00-0000-4000-8000-000000000002")


def _store(inner: InMemoryProfileStore, size: int = 20_000) -> EncryptedProfileStore:
    keyring = Keyring.parse(f"k1:{base64.b64encode(os.urandom(32)).decode()}")
    return EncryptedProfileStore(inner, keyring, encrypt_all=True, opened_cache_size=size)


async def _two_profiles(store: EncryptedProfileStore) -> tuple[UUID, UUID]:
    a = (await store.get_or_create(TENANT, Channel.WEB, "a")).id
    b = (await store.get_or_create(TENANT, Channel.WEB, "b")).id
    await store.update_field(
        TENANT, a, ProfileField(name="email", value="a@example.com", source_metadata={"q": 1})
    )
    await store.update_field(
        TENANT, b, ProfileField(name="email", value="b@example.com", source_metadata={"q": 2})
    )
    return a, b


async def test_a_copied_envelope_fails_even_when_its_original_was_opened() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, b = await _two_profiles(store)
    got = await store.get_by_id(TENANT, a)  # opens (and caches) a's envelopes
    assert got is not None and got.fields["email"].value == "a@example.com"
    a_raw = await inner.get_field(TENANT, a, "email")
    b_raw = await inner.get_field(TENANT, b, "email")
    assert a_raw is not None and b_raw is not None
    # a's value envelope copied onto b's row (another profile, another field version)
    await inner._rewrite_field_payloads(TENANT, b, {b_raw.id: (a_raw.value, b_raw.source_metadata)})
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_by_id(TENANT, b)
    # a's value envelope moved into its own metadata slot: another part, still refused
    await inner._rewrite_field_payloads(
        TENANT, a, {a_raw.id: (a_raw.value, {METADATA_KEY: a_raw.value})}
    )
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_by_id(TENANT, a)


async def test_a_tampered_envelope_fails_after_a_cached_read() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, _ = await _two_profiles(store)
    assert (await store.get_field(TENANT, a, "email")) is not None
    raw = await inner.get_field(TENANT, a, "email")
    assert raw is not None and isinstance(raw.value, str)
    flipped = raw.value[:-2] + ("A" if raw.value[-2] != "A" else "B") + raw.value[-1]
    await inner._rewrite_field_payloads(TENANT, a, {raw.id: (flipped, raw.source_metadata)})
    with pytest.raises(errors.EncryptionError):
        await store.get_field(TENANT, a, "email")


async def test_the_same_envelope_read_as_another_tenant_fails() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, _ = await _two_profiles(store)
    assert (await store.get_by_id(TENANT, a)) is not None
    raw = await inner.get_field(TENANT, a, "email")
    assert raw is not None
    with pytest.raises(errors.EncryptionError):
        store.decrypt_field(OTHER_TENANT, raw)


async def test_mutable_values_are_never_shared_between_reads() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    pid = (await store.get_or_create(TENANT, Channel.WEB, "m")).id
    value = {"street": "Main 1", "tags": ["x"]}
    await store.update_field(
        TENANT, pid, ProfileField(name="address", value=value, source_metadata={"n": [1]})
    )
    first = await store.get_field(TENANT, pid, "address")
    second = await store.get_field(TENANT, pid, "address")
    assert first is not None and second is not None
    assert first.value == second.value == value
    assert first.value is not second.value
    first.value["tags"].append("changed")
    first.source_metadata["n"].append(2)
    third = await store.get_field(TENANT, pid, "address")
    assert third is not None and third.value == value and third.source_metadata == {"n": [1]}


async def test_erasure_through_the_wrapper_drops_every_opened_copy() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, b = await _two_profiles(store)
    assert (await store.get_by_id(TENANT, a)) is not None
    assert (await store.get_by_id(TENANT, b)) is not None
    assert len(store._opened) == 2
    await store.purge_profile(TENANT, a)
    assert store._opened == {}


async def test_without_the_cache_reads_are_the_same() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner, size=0)
    a, _ = await _two_profiles(store)
    for _ in range(2):
        got = await store.get_by_id(TENANT, a)
        assert got is not None and got.fields["email"].value == "a@example.com"
        assert got.fields["email"].source_metadata == {"q": 1}
    assert store._opened == {}


async def test_the_cache_is_bounded() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner, size=3)
    pid = (await store.get_or_create(TENANT, Channel.WEB, "bounded")).id
    for n in range(10):
        await store.update_field(TENANT, pid, ProfileField(name=f"f{n}", value=n))
    got = await store.get_by_id(TENANT, pid)
    assert got is not None and {k: v.value for k, v in got.fields.items()} == {
        f"f{n}": n for n in range(10)
    }
    assert len(store._opened) == 3


async def test_the_copying_path_checks_a_hit_as_the_profile_reads_do() -> None:
    """decrypt_field (lineage reads, rotation, merge re-seal) serves the opened-envelope
    cache through the same checks as the in-place profile reads: a hit is refused under
    a profile the envelopes are not bound to, accepted when no profile is given (the
    binding is not checked there), and the stored model is never changed."""
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, b = await _two_profiles(store)
    assert (await store.get_by_id(TENANT, a)) is not None  # a's envelopes cached
    raw = await inner.get_field(TENANT, a, "email")
    assert raw is not None and isinstance(raw.value, str)
    sealed_value, sealed_metadata = raw.value, dict(raw.source_metadata)
    with pytest.raises(RowMovedError):
        store.decrypt_field(TENANT, raw, b)
    with pytest.raises(RowMovedError):
        store.decrypt_field(TENANT, raw, b, {raw.id: {a, UUID(int=1)}})  # another merge
    assert store.decrypt_field(TENANT, raw, b, {raw.id: {a, b}}).value == "a@example.com"
    opened = store.decrypt_field(TENANT, raw)
    assert opened is not raw and opened.value == "a@example.com"
    assert opened.source_metadata == {"q": 1}
    assert store.decrypt_field(TENANT, raw, a).value == "a@example.com"
    assert raw.value == sealed_value and raw.source_metadata == sealed_metadata
