"""Channel user ids and asset paths/results at rest on the real PostgreSQL (issue 12,
finding 5): after writing and reading through the encryption wrapper, every table of the
schema is dumped as text and searched for the personal data; lookups still work."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from ccvault.crypto import EncryptedProfileStore, Keyring
from ccvault.models import Channel, ChannelIdentity, ProfileAsset, ProfileField

KEY = "k1:" + base64.b64encode(bytes(range(64, 96))).decode()
PHONE = "+4917799887766"
EMAIL = "seal.identity.pg@example.com"
PATH = "s3://vault/seal-pg/ana-passport.png"
HOLDER = "Holder Ana Sealtest"
VISIBLE = "plainmarker-seal-4242"


async def _dump_schema(connection: asyncpg.Connection, schema: str) -> tuple[list[str], str]:
    """The schema's table names and every row of every table as text, one string."""
    tables = [
        row["table_name"]
        for row in await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema,
        )
    ]
    dump = ""
    for table in tables:
        rows = await connection.fetch(f'SELECT t::text AS row FROM "{schema}"."{table}" t')
        dump += "\n".join(row["row"] for row in rows)
    return tables, dump


async def test_no_channel_id_path_or_result_in_any_table(
    make_store: Callable[..., Awaitable[Any]], pg_dsn: str
) -> None:
    schema = f"t_sealid_{uuid.uuid4().hex[:16]}"
    store = EncryptedProfileStore(await make_store(schema=schema), Keyring.parse(KEY))
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, PHONE)
    await store.link_channel(
        tenant, profile.id, ChannelIdentity(channel=Channel.EMAIL, channel_user_id=EMAIL)
    )
    await store.add_asset(
        tenant,
        profile.id,
        ProfileAsset(
            name="passport",
            asset_type="id_document",
            storage_provider="s3",
            storage_path=PATH,
            verification_result={"holder": HOLDER},
        ),
    )
    await store.update_field(tenant, profile.id, ProfileField(name="language", value=VISIBLE))
    other = await store.get_or_create(tenant, Channel.SMS, "+4917700000001")
    await store.merge_profiles(tenant, other.id, profile.id)
    # every lookup works through the wrapper
    for channel, user in ((Channel.WHATSAPP, PHONE), (Channel.EMAIL, EMAIL)):
        found = await store.get_by_channel_identity(tenant, channel, user)
        assert found is not None and found.id == profile.id
        assert found.assets[0].storage_path == PATH
        assert found.assets[0].verification_result == {"holder": HOLDER}
    connection = await asyncpg.connect(pg_dsn)
    try:
        tables, dump = await _dump_schema(connection, schema)
    finally:
        await connection.close()
    assert "channel_identities" in tables and "profile_assets" in tables
    assert VISIBLE in dump  # the dump sees stored data
    for secret in (PHONE, EMAIL, PATH, HOLDER, "+4917700000001"):
        assert secret not in dump, secret


async def test_a_ciphertext_copied_to_another_profile_in_sql_is_refused(
    make_store: Callable[..., Awaitable[Any]], pg_dsn: str
) -> None:
    """What the associated data detects on a real database: a sealed value (and metadata)
    copied in SQL into the row of another profile's field of the same name is refused with
    EncryptionError, not opened as the other customer's value. (A whole row moved with its
    own id is not detected: crypto.py and SECURITY.md say why.)"""
    from ccvault import errors
    from ccvault.models import ProfileFieldDefinition

    schema = f"t_sealmv_{uuid.uuid4().hex[:16]}"
    store = EncryptedProfileStore(await make_store(schema=schema), Keyring.parse(KEY))
    tenant = uuid.uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=uuid.uuid4(), name="iban", is_pii=True)
    )
    ana = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917711111111")
    bob = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917722222222")
    await store.update_field(tenant, ana.id, ProfileField(name="iban", value="DE-ANA"))
    await store.update_field(tenant, bob.id, ProfileField(name="iban", value="DE-BOB"))
    connection = await asyncpg.connect(pg_dsn)
    try:
        copied = await connection.execute(
            f'UPDATE "{schema}".profile_fields AS b SET value = a.value, '
            "source_metadata = a.source_metadata "
            f'FROM "{schema}".profile_fields AS a '
            "WHERE a.profile_id = $1 AND b.profile_id = $2 AND a.name = 'iban' "
            "AND b.name = 'iban'",
            ana.id,
            bob.id,
        )
    finally:
        await connection.close()
    assert copied == "UPDATE 1"
    got = await store.get_field(tenant, ana.id, "iban")
    assert got is not None and got.value == "DE-ANA"
    with pytest.raises(errors.EncryptionError, match="does not decrypt") as refused:
        await store.get_field(tenant, bob.id, "iban")
    assert "DE-ANA" not in str(refused.value)


async def test_a_row_moved_to_another_profile_in_sql_is_refused(
    make_store: Callable[..., Awaitable[Any]], pg_dsn: str
) -> None:
    """Ciphertext bound to its profile (v2 envelopes): a whole sealed row moved in SQL to
    another profile is refused with RowMovedError (an EncryptionError naming ids only);
    rows moved by a real merge are re-sealed for the target and read normally."""
    from ccvault.crypto import RowMovedError
    from ccvault.models import ProfileFieldDefinition

    schema = f"t_sealrow_{uuid.uuid4().hex[:16]}"
    store = EncryptedProfileStore(await make_store(schema=schema), Keyring.parse(KEY))
    tenant = uuid.uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=uuid.uuid4(), name="iban", is_pii=True)
    )
    ana = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917733333333")
    bob = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917744444444")
    await store.update_field(tenant, ana.id, ProfileField(name="iban", value="DE-ANA-ROW"))
    carl = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917755555555")
    await store.update_field(tenant, carl.id, ProfileField(name="iban", value="DE-CARL"))
    # a real merge moves carl's row to bob: re-sealed, read as bob's
    await store.merge_profiles(tenant, carl.id, bob.id)
    got = await store.get_field(tenant, bob.id, "iban")
    assert got is not None and got.value == "DE-CARL"
    dave = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917766666666")
    connection = await asyncpg.connect(pg_dsn)
    try:
        moved = await connection.execute(
            f'UPDATE "{schema}".profile_fields SET profile_id = $2 '
            "WHERE profile_id = $1 AND name = 'iban'",
            ana.id,
            dave.id,
        )
    finally:
        await connection.close()
    assert moved == "UPDATE 1"
    with pytest.raises(RowMovedError, match="moved") as refused:
        await store.get_by_id(tenant, dave.id)
    assert "DE-ANA" not in str(refused.value)
    with pytest.raises(RowMovedError):
        await store.get_field(tenant, dave.id, "iban")


async def test_consent_ips_are_sealed_and_a_copied_one_is_refused(
    make_store: Callable[..., Awaitable[Any]], pg_dsn: str
) -> None:
    """Consent IP addresses (issue 12, finding 5): no table holds the marker addresses
    (IPv4 and IPv6), reads return them (a merge's moved consents too, after unmerge too),
    and a sealed IP copied in SQL onto another profile's consent is refused with
    EncryptionError naming no address."""
    from ccvault import errors
    from ccvault.models import Consent

    ipv4, ipv6, other_ip = "203.0.113.77", "2001:db8::77:4711", "198.51.100.23"
    schema = f"t_sealip_{uuid.uuid4().hex[:16]}"
    store = EncryptedProfileStore(await make_store(schema=schema), Keyring.parse(KEY))
    tenant = uuid.uuid4()
    ana = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917777777777")
    ana.consents = [
        Consent(consent_type="marketing", granted=True, ip_address=ipv4),
        Consent(consent_type="calls", granted=True, ip_address=ipv6),
    ]
    await store.save(ana)
    await store.update_field(tenant, ana.id, ProfileField(name="language", value=VISIBLE))
    bob = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917788888888")
    bob.consents = [Consent(consent_type="marketing", granted=False, ip_address=other_ip)]
    await store.save(bob)
    carl = await store.get_or_create(tenant, Channel.WHATSAPP, "+4917799999999")
    await store.merge_profiles(tenant, ana.id, carl.id)  # ana's consents move to carl
    merged = await store.get_by_id(tenant, carl.id)
    assert merged is not None
    assert [str(c.ip_address) for c in merged.consents] == [ipv4, ipv6]
    (record,) = await store.get_merge_log(tenant, carl.id)
    assert (await store.unmerge(tenant, record.id)).restored_consents == 2
    back = await store.get_by_id(tenant, ana.id)
    assert back is not None and [str(c.ip_address) for c in back.consents] == [ipv4, ipv6]
    connection = await asyncpg.connect(pg_dsn)
    try:
        tables, dump = await _dump_schema(connection, schema)
        assert "consents" in tables and VISIBLE in dump and "ccvault:pii:v1:k1:" in dump
        for secret in (ipv4, ipv6, other_ip):
            assert secret not in dump, secret
        copied = await connection.execute(
            f'UPDATE "{schema}".consents AS b SET ip_address_sealed = a.ip_address_sealed '
            f'FROM "{schema}".consents AS a '
            "WHERE a.profile_id = $1 AND b.profile_id = $2 AND a.consent_type = 'marketing' "
            "AND b.consent_type = 'marketing'",
            ana.id,
            bob.id,
        )
    finally:
        await connection.close()
    assert copied == "UPDATE 1"
    with pytest.raises(errors.EncryptionError, match="consent 'marketing'") as refused:
        await store.get_by_id(tenant, bob.id)
    assert ipv4 not in str(refused.value) and other_ip not in str(refused.value)
    again = await store.get_by_id(tenant, ana.id)
    assert again is not None and str(again.consents[0].ip_address) == ipv4
