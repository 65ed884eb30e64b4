"""The encryption wrapper's fast paths: the PII-registry view kept per tenant (and the
security property that survives it: a value of a PII name is never *left* in plaintext),
the envelope fast decrypt (same answers and errors as the full parse) and decrypted fields
copied without re-validation (equal to validated ones)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.crypto import (
    ENVELOPE_PREFIX,
    METADATA_KEY,
    PII_REGISTRY_AGENT_ID,
    EncryptedProfileStore,
    Keyring,
)
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault.store import ForwardingProfileStore
from ccvault_inmemory import InMemoryProfileStore

AGENT = uuid4()


def _keyring() -> Keyring:
    return Keyring.parse(f"k1:{base64.b64encode(os.urandom(32)).decode()}")


class RegistryReads(ForwardingProfileStore):
    """Counts the reads of the PII registry that reach the store."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.registry_reads = 0

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        if agent_id == PII_REGISTRY_AGENT_ID:
            self.registry_reads += 1
        return await super()._get_field_definitions(tenant_id, agent_id, enabled_only)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def raw() -> AsyncIterator[RegistryReads]:
    async with InMemoryProfileStore() as store:
        yield RegistryReads(store)


def wrapper(raw: Any, keyring: Keyring, clock: Clock, ttl: float = 60.0) -> EncryptedProfileStore:
    store = EncryptedProfileStore(raw, keyring, registry_ttl=ttl)
    store.clock = clock
    return store


async def stored(raw: Any, tenant: UUID, profile_id: UUID, name: str) -> list[Any]:
    """Every stored value of ``name``, as the store holds it (sealed or not)."""
    return [v.value for v in await raw.get_field_history(tenant, profile_id, name)]


def _pii(tenant: UUID, name: str, agent: UUID = AGENT) -> ProfileFieldDefinition:
    return ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name=name, is_pii=True)


async def test_writes_read_the_registry_once_per_ttl(raw: RegistryReads) -> None:
    """The view decides what is sealed before a write (one registry read per ttl); a write
    that left a value plaintext reads the registry once more *after* it (the fence of
    crypto.py, *Registry race*); writes of names already known as PII read nothing."""
    clock = Clock()
    store = wrapper(raw, _keyring(), clock, ttl=5.0)
    tenant = uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "u1")
    await store.register_pii_names(tenant, ["email"])
    before = raw.registry_reads
    for n in range(20):
        await store.update_field(tenant, person.id, ProfileField(name="email", value=f"v{n}"))
    assert raw.registry_reads == before  # sealed: no fence needed
    for n in range(20):
        await store.update_field(tenant, person.id, ProfileField(name="note", value=f"v{n}"))
    assert raw.registry_reads == before + 20  # one fence read each, the view stays fresh
    clock.now += 5.0  # the view is too old now: the next write reads the registry again
    await store.update_field(tenant, person.id, ProfileField(name="note", value="again"))
    assert raw.registry_reads == before + 22
    await store.aclose()


async def test_a_definition_saved_here_takes_effect_at_once(raw: RegistryReads) -> None:
    clock = Clock()
    store = wrapper(raw, _keyring(), clock, ttl=3600.0)
    tenant = uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "u2")
    await store.update_field(tenant, person.id, ProfileField(name="email", value="a@example"))
    assert await stored(raw, tenant, person.id, "email") == ["a@example"]  # not PII yet
    await store.save_field_definition(_pii(tenant, "email"))  # no clock change needed
    await store.update_field(tenant, person.id, ProfileField(name="email", value="b@example"))
    values = await stored(raw, tenant, person.id, "email")
    # the new value sealed, the old one re-sealed by the registration
    assert all(isinstance(v, str) and v.startswith(ENVELOPE_PREFIX) for v in values), values
    assert [f.value for f in await store.get_field_history(tenant, person.id, "email")] == [
        "b@example",
        "a@example",
    ]
    # deleting the definition changes nothing: the registry is sticky
    await store.delete_field_definition(tenant, AGENT, "email")
    await store.update_field(tenant, person.id, ProfileField(name="email", value="c@example"))
    assert (await stored(raw, tenant, person.id, "email"))[0].startswith(ENVELOPE_PREFIX)
    await store.aclose()


async def test_another_process_registration_never_leaves_plaintext(raw: RegistryReads) -> None:
    """Process B's view predates A's registration: B writes the name in plaintext, and
    its fence (a registry read after the write) finds the name and re-seals before the
    write returns."""
    keyring = _keyring()
    clock = Clock()
    a = wrapper(raw, keyring, clock, ttl=10.0)
    b = wrapper(raw, keyring, clock, ttl=10.0)
    tenant = uuid4()
    person = await b.get_or_create(tenant, Channel.WEB, "u3")
    await b.update_field(tenant, person.id, ProfileField(name="phone", value="+1 555 0100"))
    await a.save_field_definition(_pii(tenant, "phone"))  # A re-seals what is stored
    assert (await stored(raw, tenant, person.id, "phone"))[0].startswith(ENVELOPE_PREFIX)
    # B's view is still fresh and does not know; its fence does: sealed when it returns
    await b.update_field(tenant, person.id, ProfileField(name="phone", value="+1 555 0199"))
    values = await stored(raw, tenant, person.id, "phone")
    assert all(v.startswith(ENVELOPE_PREFIX) for v in values), values
    assert [f.value for f in await b.get_field_history(tenant, person.id, "phone")] == [
        "+1 555 0199",
        "+1 555 0100",
    ]
    await a.aclose()
    await b.aclose()


async def test_closing_decides_plaintext_written_under_an_old_view(raw: RegistryReads) -> None:
    keyring = _keyring()
    clock = Clock()
    a = wrapper(raw, keyring, clock)
    b = wrapper(raw, keyring, clock)
    tenant = uuid4()
    person = await b.get_or_create(tenant, Channel.WEB, "u4")
    await b.update_field(tenant, person.id, ProfileField(name="iban", value="DE00"))
    await a.save_field_definition(_pii(tenant, "iban"))
    await b.update_field(tenant, person.id, ProfileField(name="iban", value="DE01"))
    await b.aclose()  # one last registry read: it finds the name and re-seals
    values = await stored(raw, tenant, person.id, "iban")
    assert all(v.startswith(ENVELOPE_PREFIX) for v in values), values
    await a.aclose()


async def test_a_name_being_registered_is_sealed_by_this_process(raw: RegistryReads) -> None:
    clock = Clock()
    store = wrapper(raw, _keyring(), clock, ttl=3600.0)
    tenant = uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "u5")
    await store.update_field(tenant, person.id, ProfileField(name="note", value="n"))
    added = await store.register_pii_names(tenant, ["ssn"])
    assert added == ["ssn"]
    await store.update_field(tenant, person.id, ProfileField(name="ssn", value="078-05-1120"))
    assert (await stored(raw, tenant, person.id, "ssn"))[0].startswith(ENVELOPE_PREFIX)
    await store.aclose()


# ---------------------------------------------------------------------------------------
# the fast decrypt answers exactly as the full parse
# ---------------------------------------------------------------------------------------


def _sealed(store: EncryptedProfileStore, tenant: UUID) -> ProfileField:
    item = ProfileField(
        name="email",
        value={"address": "ana@example.com", "n": [1, 2.5, None]},
        source_metadata={"quote": "it is ana@example.com"},
    )
    return store.encrypt_field(tenant, item)


def test_decrypted_fields_equal_validated_ones() -> None:
    store = EncryptedProfileStore(InMemoryProfileStore(), _keyring())
    tenant = uuid4()
    sealed = _sealed(store, tenant)
    assert sealed.value.startswith(ENVELOPE_PREFIX)
    assert set(sealed.source_metadata) == {METADATA_KEY}
    opened = store.decrypt_field(tenant, sealed)
    assert opened == ProfileField.model_validate(opened.model_dump())
    assert opened.value == {"address": "ana@example.com", "n": [1, 2.5, None]}
    assert opened.source_metadata == {"quote": "it is ana@example.com"}
    assert sealed.value.startswith(ENVELOPE_PREFIX)  # the sealed one is unchanged
    with pytest.raises(ValueError):
        opened.confidence = 5.0  # still validated on assignment


def _variants(envelope: str) -> dict[str, str]:
    body = envelope.rsplit(":", 1)[1]
    head = envelope[: -len(body)]
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    return {
        "flipped": head + flipped,
        "truncated": head + body[:-4],
        "padded": head + body + "==",
        "not base64": head + body[:5] + "*" + body[6:],
        "unknown key id": envelope.replace(":k1:", ":k9:"),
        "bad key id": envelope.replace(":k1:", ":k 1:"),
        "no body": head,
        "extra colon": head + body[:8] + ":" + body[8:],
        "other version": envelope.replace("pii:v1:", "pii:v2:"),
    }


@pytest.mark.parametrize("variant", list(_variants("ccvault:pii:v1:k1:" + "A" * 40)))
def test_damaged_envelopes_fail_as_the_full_parse_does(variant: str) -> None:
    keyring = _keyring()
    store = EncryptedProfileStore(InMemoryProfileStore(), keyring)
    tenant = uuid4()
    sealed = _sealed(store, tenant)
    damaged = _variants(sealed.value)[variant]
    from ccvault.crypto import _aad

    aad = _aad(tenant, sealed.id, sealed.name, "value")

    def outcome(decrypt: Any) -> Any:
        try:
            return decrypt(damaged, aad)
        except errors.EncryptionError as exc:
            return ("EncryptionError", str(exc))

    assert outcome(keyring.decrypt) == outcome(keyring._decrypt_checked)
    if variant != "padded":  # padding the full parse has always tolerated
        assert isinstance(outcome(keyring.decrypt), tuple)
    # and the real one opens with both
    assert keyring.decrypt(sealed.value, aad) == keyring._decrypt_checked(sealed.value, aad)
    # bound to its row: another field id does not authenticate
    with pytest.raises(errors.EncryptionError):
        keyring.decrypt(sealed.value, _aad(tenant, uuid4(), sealed.name, "value"))
