"""Ciphertext bound to its profile (issue 12): v2 envelopes carry the profile id inside the
authenticated plaintext. Old v1 envelopes stay readable and rotate-keys rewrites them; a
merge's rows are re-sealed for the target, and until then (a merging process that died)
the merge log vouches for them. A row moved without a merge is refused: shown on the real
database in providers/postgres/tests/test_seal_identities.py (raw SQL)."""

from __future__ import annotations

import base64
from uuid import UUID

import pytest

from ccvault.crypto import EncryptedProfileStore, Keyring, RowMovedError
from ccvault.models import Channel, ProfileField
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("b1d00000-0000-4000-8000-000000000001")
KEY = "k1:" + base64.b64encode(bytes(range(96, 128))).decode()


def _store(inner: InMemoryProfileStore) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, Keyring.parse(KEY), encrypt_all=True)


async def test_new_envelopes_are_v2_and_old_v1_ones_stay_readable_until_rotated() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    pid = (await store.get_or_create(TENANT, Channel.WEB, "binding-v1")).id
    await store.update_field(TENANT, pid, ProfileField(name="email", value="new@example.com"))
    raw_new = await inner.get_field(TENANT, pid, "email")
    assert raw_new is not None and raw_new.value.startswith("ccvault:pii:v2:k1:")
    # a v1 envelope, as written before profile binding (no profile id)
    old = store.encrypt_field(TENANT, ProfileField(name="phone", value="+4917700000009"))
    assert old.value.startswith("ccvault:pii:v1:k1:")
    await inner.update_field(TENANT, pid, old)
    got = await store.get_field(TENANT, pid, "phone")
    assert got is not None and got.value == "+4917700000009"
    (report,) = await store.rotate_keys([TENANT])
    assert report.rewritten == 1 and report.failures == []
    raw_old = await inner.get_field(TENANT, pid, "phone")
    assert raw_old is not None and raw_old.value.startswith("ccvault:pii:v2:k1:")
    got = await store.get_field(TENANT, pid, "phone")
    assert got is not None and got.value == "+4917700000009"


async def test_a_merge_left_unsealed_reads_through_the_merge_log_and_rotation_rebinds() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    source = (await store.get_or_create(TENANT, Channel.WEB, "binding-source")).id
    target = (await store.get_or_create(TENANT, Channel.WEB, "binding-target")).id
    await store.update_field(TENANT, source, ProfileField(name="iban", value="DE-SOURCE"))
    # the merge as the provider does it, without the wrapper's re-seal afterwards (what a
    # process that dies between the two leaves behind)
    await inner.merge_profiles(TENANT, source, target)
    raw = await inner.get_field(TENANT, target, "iban")
    assert raw is not None
    with pytest.raises(RowMovedError):
        store.decrypt_field(TENANT, raw, target, {})  # sealed for the source
    got = await store.get_field(TENANT, target, "iban")  # the merge log vouches for it
    assert got is not None and got.value == "DE-SOURCE"
    profile = await store.get_by_id(TENANT, target)
    assert profile is not None and profile.fields["iban"].value == "DE-SOURCE"
    await store.rotate_keys([TENANT])
    raw = await inner.get_field(TENANT, target, "iban")
    assert raw is not None
    assert store.decrypt_field(TENANT, raw, target, {}).value == "DE-SOURCE"  # bound here


async def test_merge_and_unmerge_through_the_wrapper_rebind_the_moved_rows() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    source = (await store.get_or_create(TENANT, Channel.WEB, "rebind-source")).id
    target = (await store.get_or_create(TENANT, Channel.WEB, "rebind-target")).id
    await store.update_field(TENANT, source, ProfileField(name="iban", value="DE-MOVED"))
    await store.merge_profiles(TENANT, source, target)
    raw = await inner.get_field(TENANT, target, "iban")
    assert raw is not None and store.decrypt_field(TENANT, raw, target, {}).value == "DE-MOVED"
    (record,) = await store.get_merge_log(TENANT, target)
    await store.unmerge(TENANT, record.id)
    raw = await inner.get_field(TENANT, source, "iban")
    assert raw is not None and store.decrypt_field(TENANT, raw, source, {}).value == "DE-MOVED"
