"""Consent IP addresses sealed at rest (issue 12, finding 5), on the in-memory provider.

With encryption on, the wrapper stores a consent's ``ip_address`` as ``ip_address_sealed``
(an envelope bound to tenant, profile and consent type) and opens it on every read. The
raw scans of the real SQLite file, PostgreSQL rows and Redis keys are in
test_crypto_raw.py; tampering in raw SQL on PostgreSQL in
providers/postgres/tests/test_seal_identities.py.
"""

from __future__ import annotations

import base64
from ipaddress import ip_address
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.crypto import ENVELOPE_PREFIX, EncryptedProfileStore, Keyring
from ccvault.models import Channel, Consent
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("c0c00000-0000-4000-8000-000000000001")
K1 = "k1:" + base64.b64encode(bytes(range(32, 64))).decode()
K2 = "k2:" + base64.b64encode(bytes(range(64, 96))).decode()
IPV4 = "203.0.113.77"
IPV6 = "2001:db8::77:4711"


def _store(inner: InMemoryProfileStore, keys: str = K1) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, Keyring.parse(keys))


def _consents() -> list[Consent]:
    return [
        Consent(consent_type="marketing", granted=True, ip_address=IPV4),
        Consent(consent_type="calls", granted=False, ip_address=IPV6),
        Consent(consent_type="mail", granted=True),
    ]


async def _with_consents(store: EncryptedProfileStore, user: str) -> UUID:
    profile = await store.get_or_create(TENANT, Channel.WEB, user)
    profile.consents = _consents()
    await store.save(profile)
    return profile.id


def _ips(consents: list[Consent]) -> list[tuple[str | None, str | None]]:
    return [
        (None if c.ip_address is None else str(c.ip_address), c.ip_address_sealed) for c in consents
    ]


async def test_the_ip_is_stored_sealed_and_every_read_opens_it() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    pid = await _with_consents(store, "consent-read")
    raw = await inner.get_by_id(TENANT, pid)
    assert raw is not None
    assert [c.ip_address for c in raw.consents] == [None, None, None]
    sealed = [c.ip_address_sealed for c in raw.consents]
    assert sealed[0] is not None and sealed[0].startswith(ENVELOPE_PREFIX)
    assert sealed[1] is not None and sealed[1].startswith(ENVELOPE_PREFIX)
    assert sealed[2] is None  # no address: nothing to seal
    expected = [(IPV4, None), (IPV6, None), (None, None)]
    got = await store.get_by_id(TENANT, pid)
    assert got is not None and _ips(got.consents) == expected
    exported = await store.export_profile(TENANT, pid)
    assert [c["ip_address"] for c in exported["profile"]["consents"]] == [IPV4, IPV6, None]
    assert all(c["ip_address_sealed"] is None for c in exported["profile"]["consents"])
    subject = await store.export_subject(
        TENANT, channel=Channel.WEB, channel_user_id="consent-read"
    )
    assert IPV4 in str(subject) and ENVELOPE_PREFIX not in str(subject)


async def test_a_caller_supplied_sealed_ip_is_refused_and_nothing_is_written() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    pid = await _with_consents(store, "consent-refused")
    before = await inner.get_by_id(TENANT, pid)
    profile = await store.get_by_id(TENANT, pid)
    assert profile is not None
    profile.consents = [
        Consent(consent_type="marketing", granted=True, ip_address_sealed="ccvault:pii:v1:k1:AAAA")
    ]
    with pytest.raises(errors.ValidationError, match="ip_address_sealed is reserved"):
        await store.save(profile)
    assert await inner.get_by_id(TENANT, pid) == before


async def test_an_envelope_copied_to_another_profile_or_type_does_not_open() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    first = await _with_consents(store, "consent-first")
    second = await _with_consents(store, "consent-second")
    raw_first = await inner.get_by_id(TENANT, first)
    raw_second = await inner.get_by_id(TENANT, second)
    assert raw_first is not None and raw_second is not None
    # the second profile's marketing consent gets the first profile's envelope
    stolen = raw_first.consents[0].ip_address_sealed
    raw_second.consents[0] = raw_second.consents[0].model_copy(update={"ip_address_sealed": stolen})
    await inner.save(raw_second)
    with pytest.raises(errors.EncryptionError, match="consent 'marketing'"):
        await store.get_by_id(TENANT, second)
    # another consent type of the same profile
    raw_first.consents[1] = raw_first.consents[1].model_copy(update={"ip_address_sealed": stolen})
    await inner.save(raw_first)
    with pytest.raises(errors.EncryptionError, match="consent 'calls'"):
        await store.get_by_id(TENANT, first)


async def test_merge_reseals_for_the_target_and_unmerge_restores_the_source() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    source = await _with_consents(store, "consent-source")
    target = (await store.get_or_create(TENANT, Channel.WEB, "consent-target")).id
    assert await store.merge_profiles(TENANT, source, target)
    merged = await store.get_by_id(TENANT, target)
    assert merged is not None and _ips(merged.consents)[:2] == [(IPV4, None), (IPV6, None)]
    # re-sealed for the target: the envelope opens under the target profile alone
    raw = await inner.get_by_id(TENANT, target)
    assert raw is not None
    assert _ips(store._decrypt_profile(raw).consents)[:2] == [(IPV4, None), (IPV6, None)]
    (record,) = await store.get_merge_log(TENANT, target)
    assert [str(c.ip_address) for c in record.moved_consents][:2] == [IPV4, IPV6]
    assert all(c.ip_address_sealed is None for c in record.moved_consents)
    result = await store.unmerge(TENANT, record.id)
    assert result.restored_consents == 3 and result.conflicts == []
    back = await store.get_by_id(TENANT, source)
    assert back is not None and _ips(back.consents) == [(IPV4, None), (IPV6, None), (None, None)]
    raw_back = await inner.get_by_id(TENANT, source)
    assert raw_back is not None  # bound to the source again
    assert _ips(store._decrypt_profile(raw_back).consents)[0] == (IPV4, None)


async def test_a_merge_not_yet_resealed_reads_through_the_merge_log() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    source = await _with_consents(store, "consent-died-source")
    target = (await store.get_or_create(TENANT, Channel.WEB, "consent-died-target")).id
    await inner.merge_profiles(TENANT, source, target)  # the wrapper's re-seal never ran
    for _ in range(2):  # (the identities, opened before the consents fail, stay right)
        got = await store.get_by_id(TENANT, target)
        assert got is not None and _ips(got.consents)[:2] == [(IPV4, None), (IPV6, None)]
        assert {i.channel_user_id for i in got.channel_identities} == {
            "consent-died-source",
            "consent-died-target",
        }
    await store.rotate_keys([TENANT])  # binds them to the target
    raw = await inner.get_by_id(TENANT, target)
    assert raw is not None
    assert _ips(store._decrypt_profile(raw).consents)[:2] == [(IPV4, None), (IPV6, None)]


async def test_rotate_keys_reseals_old_key_and_plaintext_consent_ips() -> None:
    inner = InMemoryProfileStore()
    old = await _with_consents(_store(inner, K1), "consent-old-key")
    # stored before encryption was turned on: plaintext
    plain = await inner.get_or_create(TENANT, Channel.WEB, "consent-plaintext")
    plain.consents = _consents()
    await inner.save(plain)
    store = _store(inner, f"{K1},{K2}")
    await store.rotate_keys([TENANT])
    only_k2 = _store(inner, K2)
    for pid in (old, plain.id):
        raw = await inner.get_by_id(TENANT, pid)
        assert raw is not None
        assert [c.ip_address for c in raw.consents] == [None, None, None]
        assert [(c.ip_address_sealed or "")[:18] for c in raw.consents] == [
            "ccvault:pii:v1:k2:",
            "ccvault:pii:v1:k2:",
            "",
        ]
        got = await only_k2.get_by_id(TENANT, pid)
        assert got is not None and [c.ip_address for c in got.consents] == [
            ip_address(IPV4),
            ip_address(IPV6),
            None,
        ]


async def test_without_encryption_the_ip_is_stored_as_given() -> None:
    inner = InMemoryProfileStore()
    profile = await inner.get_or_create(TENANT, Channel.WEB, "consent-off")
    profile.consents = _consents()
    await inner.save(profile)
    got = await inner.get_by_id(TENANT, profile.id)
    assert got is not None and _ips(got.consents) == [(IPV4, None), (IPV6, None), (None, None)]
