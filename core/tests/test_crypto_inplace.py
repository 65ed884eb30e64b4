"""Profile reads of the encryption wrapper open the inner store's freshly read models in
place, with the opened-envelope cache's hit checked inline (issue 13, encrypted reads).

What must not change with it: a cached opened value is served only for the identical
envelope(s) in the identical context (tenant, field version, name, part, profile bound),
so envelopes copied to another field, field version or profile, and rows moved to another
profile, fail exactly as without the cache; a caller changing what it got (values of
every JSON shape, metadata) changes nothing the next read returns."""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.cache_codec import trusted_replace
from ccvault.crypto import EncryptedProfileStore, Keyring, RowMovedError
from ccvault.models import Channel, Consent, CustomerProfile, ProfileField
from ccvault.store import ForwardingProfileStore
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("1a91ace0-0000-4000-8000-000000000001")
KEY = "k1:" + base64.b64encode(bytes(range(32, 64))).decode()


class Planted(ForwardingProfileStore):
    """The inner store, but profile reads return what ``plant`` makes of the stored
    profile (a row moved or copied by someone with database access)."""

    def __init__(self, inner: InMemoryProfileStore) -> None:
        super().__init__(inner)
        self.plant: Any = None

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        found = await super()._get_by_id(tenant_id, profile_id, include_history)
        if found is not None and self.plant is not None:
            return self.plant(found)  # type: ignore[no-any-return]
        return found


def _store(inner: Any) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, Keyring.parse(KEY), encrypt_all=True)


async def _profiles(store: EncryptedProfileStore) -> tuple[UUID, UUID]:
    a = (await store.get_or_create(TENANT, Channel.WEB, "inplace-a")).id
    b = (await store.get_or_create(TENANT, Channel.WEB, "inplace-b")).id
    for pid, who in ((a, "a"), (b, "b")):
        for name in ("email", "phone"):
            await store.update_field(
                TENANT,
                pid,
                ProfileField(
                    name=name, value=f"{who}-{name}", source_metadata={"quote": f"{who} {name}"}
                ),
            )
    return a, b


async def test_a_row_moved_to_another_profile_is_refused_after_it_was_opened() -> None:
    inner = InMemoryProfileStore()
    planted = Planted(inner)
    store = _store(planted)
    a, b = await _profiles(store)
    got = await store.get_by_id(TENANT, a)  # a's envelopes opened and cached
    assert got is not None and got.fields["email"].value == "a-email"
    raw_a = await inner.get_by_id(TENANT, a)
    assert raw_a is not None
    moved = raw_a.fields["email"]  # the whole row: its id, name and both envelopes

    def move(profile: CustomerProfile) -> CustomerProfile:
        if profile.id != b:
            return profile
        return trusted_replace(profile, {"fields": {**profile.fields, "email": moved}})

    planted.plant = move
    with pytest.raises(RowMovedError):
        await store.get_by_id(TENANT, b)
    planted.plant = None
    assert (await store.get_by_id(TENANT, a)) is not None  # a itself still reads


@pytest.mark.parametrize("copied", ["other name", "other id", "another field's row"])
async def test_an_opened_envelope_pair_copied_to_another_field_version_is_refused(
    copied: str,
) -> None:
    inner = InMemoryProfileStore()
    planted = Planted(inner)
    store = _store(planted)
    a, _ = await _profiles(store)
    assert (await store.get_by_id(TENANT, a)) is not None  # cached
    raw = await inner.get_by_id(TENANT, a)
    assert raw is not None
    email, phone = raw.fields["email"], raw.fields["phone"]
    if copied == "other name":  # email's row, renamed
        planted_field = trusted_replace(email, {"name": "phone"})
    elif copied == "other id":  # email's row as another version of the same name
        planted_field = trusted_replace(email, {"id": uuid4()})
        planted.plant = lambda p: trusted_replace(
            p, {"fields": {**p.fields, "email": planted_field}}
        )
    else:  # phone's row carrying email's value and metadata envelopes
        planted_field = trusted_replace(
            phone, {"value": email.value, "source_metadata": dict(email.source_metadata)}
        )
    if planted.plant is None:
        planted.plant = lambda p: trusted_replace(
            p, {"fields": {**p.fields, "phone": planted_field}}
        )
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_by_id(TENANT, a)


async def test_a_tampered_metadata_envelope_fails_while_the_value_is_cached() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, _ = await _profiles(store)
    assert (await store.get_by_id(TENANT, a)) is not None  # cached
    raw = await inner.get_field(TENANT, a, "email")
    assert raw is not None
    envelope = raw.source_metadata["ccvault:pii"]
    flipped = envelope[:-2] + ("A" if envelope[-2] != "A" else "B") + envelope[-1]
    await inner._rewrite_field_payloads(TENANT, a, {raw.id: (raw.value, {"ccvault:pii": flipped})})
    with pytest.raises(errors.EncryptionError):
        await store.get_by_id(TENANT, a)


VALUES: dict[str, Any] = {
    "flat object": {"street": "Main 1", "zip": 12345, "ok": True, "none": None},
    "flat list": ["x", 1, 2.5, None],
    "nested object": {"street": "Main 1", "tags": ["x"], "geo": {"lat": 1.0}},
    "nested list": [["x"], {"y": 1}],
    "string": "text",
}


@pytest.mark.parametrize("case", sorted(VALUES))
async def test_changing_a_read_value_changes_nothing_the_next_read_returns(case: str) -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    pid = (await store.get_or_create(TENANT, Channel.WEB, f"mutable-{case}")).id
    value = VALUES[case]
    metadata = {"quote": "q", "n": 1}
    await store.update_field(
        TENANT, pid, ProfileField(name="v", value=value, source_metadata=metadata)
    )
    reads = []
    for _ in range(3):  # the first read fills the cache, the others hit it
        got = await store.get_by_id(TENANT, pid, include_history=True)
        assert got is not None
        reads.append(got)
        item = got.fields["v"]
        assert item.value == value and item.source_metadata == metadata
        assert got.field_history["v"][0].value == value
        if isinstance(item.value, dict):
            item.value["street"] = "changed"
            item.value.pop("zip", None)
        elif isinstance(item.value, list):
            item.value.append("changed")
            if isinstance(item.value[0], list):
                item.value[0].append("changed")
        item.source_metadata["quote"] = "changed"
        got.field_history["v"][0].source_metadata["n"] = 2
    first, second, third = (r.fields["v"] for r in reads)
    if not isinstance(value, str):
        assert first.value is not second.value and second.value is not third.value
    assert first.source_metadata is not second.source_metadata


async def test_the_inner_store_sharing_one_model_between_fields_and_history() -> None:
    """A provider may put the same model in ``fields`` and ``field_history``: opened once
    in place, the second visit finds it open."""
    inner = InMemoryProfileStore()
    planted = Planted(inner)
    store = _store(planted)
    a, _ = await _profiles(store)

    def share(profile: CustomerProfile) -> CustomerProfile:
        history = {name: [item] for name, item in profile.fields.items()}
        return trusted_replace(profile, {"field_history": history})

    planted.plant = share
    for _ in range(2):  # cold, then from the cache
        got = await store.get_by_id(TENANT, a, include_history=True)
        assert got is not None
        assert got.fields["email"].value == "a-email"
        assert got.fields["email"].model_fields_set >= {"value", "source_metadata"}
        assert got.field_history["email"][0].value == "a-email"
        assert got.field_history["phone"][0].source_metadata == {"quote": "a phone"}


async def test_a_merge_left_unsealed_reads_in_place_through_the_merge_log() -> None:
    """A profile read whose first pass meets a row sealed for another profile is read
    again with the merge log: fields opened in place by the first pass stay right."""
    inner = InMemoryProfileStore()
    store = _store(inner)
    _, target = await _profiles(store)
    source = (await store.get_or_create(TENANT, Channel.WEB, "inplace-source")).id
    await store.update_field(TENANT, source, ProfileField(name="iban", value="DE-SOURCE"))
    assert (await store.get_by_id(TENANT, source)) is not None  # cached, bound to source
    await inner.merge_profiles(TENANT, source, target)  # the wrapper's re-seal never ran
    raw = await inner.get_by_id(TENANT, target)
    assert raw is not None
    for _ in range(2):
        got = await store.get_by_customer_id(TENANT, raw.customer_id, include_history=True)
        assert got is not None
        assert {n: f.value for n, f in got.fields.items()} == {
            "email": "b-email",
            "phone": "b-phone",
            "iban": "DE-SOURCE",
        }
        assert got.fields["email"].source_metadata == {"quote": "b email"}
        assert got.field_history["iban"][0].value == "DE-SOURCE"


class MergeLogCounted(ForwardingProfileStore):
    """The inner store, counting reads of its merge log."""

    def __init__(self, inner: InMemoryProfileStore) -> None:
        super().__init__(inner)
        self.merge_log_reads = 0

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> Any:
        self.merge_log_reads += 1
        return await super()._get_merge_log(tenant_id, profile_id)


async def test_a_read_again_with_the_merge_log_reads_it_once() -> None:
    """The second pass of a profile read (a row sealed for a merge partner) takes both the
    moved field versions and the merge partners (consent IPs) from one merge-log read."""
    inner = InMemoryProfileStore()
    counted = MergeLogCounted(inner)
    store = _store(counted)
    _, target = await _profiles(store)
    source = (await store.get_or_create(TENANT, Channel.WEB, "inplace-once")).id
    await store.update_field(TENANT, source, ProfileField(name="iban", value="DE-ONCE"))
    await inner.merge_profiles(TENANT, source, target)  # the wrapper's re-seal never ran
    counted.merge_log_reads = 0
    got = await store.get_by_id(TENANT, target)
    assert got is not None and got.fields["iban"].value == "DE-ONCE"
    assert counted.merge_log_reads == 1


async def test_single_field_reads_refuse_envelopes_copied_after_they_were_opened() -> None:
    inner = InMemoryProfileStore()
    store = _store(inner)
    a, b = await _profiles(store)
    got = await store.get_field(TENANT, a, "email")  # opened and cached
    assert got is not None and got.value == "a-email"
    a_raw = await inner.get_field(TENANT, a, "email")
    b_raw = await inner.get_field(TENANT, b, "email")
    assert a_raw is not None and b_raw is not None
    # both of a's envelopes onto b's row of the same name
    await inner._rewrite_field_payloads(
        TENANT, b, {b_raw.id: (a_raw.value, dict(a_raw.source_metadata))}
    )
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_field(TENANT, b, "email")
    with pytest.raises(errors.EncryptionError, match="does not decrypt"):
        await store.get_field_history(TENANT, b, "email")
    history = await store.get_field_history(TENANT, a, "email")
    assert [v.value for v in history] == ["a-email"]
    history[0].source_metadata["quote"] = "changed"
    again = await store.get_field(TENANT, a, "email")
    assert again is not None and again.source_metadata == {"quote": "a email"}


async def _moved_field_and_consent() -> tuple[MergeLogCounted, UUID]:
    """A field version and a consent IP sealed for a source profile, moved to the target by
    a merge the encrypting wrapper never saw (so neither was re-sealed)."""
    inner = InMemoryProfileStore()
    counted = MergeLogCounted(inner)
    store = _store(counted)
    _, target = await _profiles(store)
    source = await store.get_or_create(TENANT, Channel.WEB, "once-both")
    source.consents = [Consent(consent_type="marketing", granted=True, ip_address="203.0.113.9")]
    await store.save(source)
    await store.update_field(TENANT, source.id, ProfileField(name="iban", value="DE-BOTH"))
    await inner.merge_profiles(TENANT, source.id, target)
    counted.merge_log_reads = 0
    return counted, target


async def test_a_rebind_reads_the_merge_log_once_for_consents_and_fields() -> None:
    counted, target = await _moved_field_and_consent()
    store = _store(counted)
    assert await store._rebind(TENANT, target) == 1  # the iban version, re-sealed here
    assert counted.merge_log_reads == 1  # 2 before: once for the consent, once for fields
    got = await store.get_by_id(TENANT, target)
    assert got is not None and got.fields["iban"].value == "DE-BOTH"
    assert [str(c.ip_address) for c in got.consents] == ["203.0.113.9"]


async def test_a_rotation_reads_the_merge_log_once_for_consents_and_fields() -> None:
    counted, target = await _moved_field_and_consent()
    k2 = "k2:" + base64.b64encode(bytes(range(64, 96))).decode()
    rotating = EncryptedProfileStore(counted, Keyring.parse(f"{KEY},{k2}"), encrypt_all=True)
    assert await rotating.rotate_profile(TENANT, target) > 0
    assert counted.merge_log_reads == 1
    got = await rotating.get_by_id(TENANT, target)
    assert got is not None and got.fields["iban"].value == "DE-BOTH"
    assert [str(c.ip_address) for c in got.consents] == ["203.0.113.9"]
