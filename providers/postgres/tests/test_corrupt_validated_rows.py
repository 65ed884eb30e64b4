"""The rows read back through validation (consents, lineage entries, the merge log's JSON
record), when written outside the vault or corrupted, are refused on every read with
StorageError naming the table and column, never the stored text: it may be personal data.
The helpers and the rule are those of ``test_corrupt_enum_rows.py``.

A write PostgreSQL refuses is reported the same way: the server's DETAIL ("Failing row
contains (...)", "Key (...)=(...)") is in neither the message nor its chain.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from ccvault import errors
from ccvault.models import Channel, Consent, ItemType, ProfileField, SourceType
from ccvault_contract_tests import assert_not_quoted
from ccvault_postgres import PostgresProfileStore
from ccvault_postgres.store import _translate

from .test_corrupt_enum_rows import SECRET, Read, assert_refused, corrupt


async def with_consent(store: PostgresProfileStore) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A profile with a consent: (tenant, profile id, customer id)."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-consent")
    profile.consents.append(Consent(consent_type="marketing", granted=True, ip_address="192.0.2.1"))
    await store.save(profile)
    return tenant, profile.id, profile.customer_id


@pytest.mark.parametrize(
    ("column", "value"),
    [("ip_address", SECRET), ("ip_address_sealed", SECRET * 100)],
    ids=["ip_address", "ip_address_sealed"],
)
async def test_a_consent_column_no_model_accepts_is_refused_on_every_read(
    store: PostgresProfileStore, column: str, value: str
) -> None:
    tenant, profile_id, customer = await with_consent(store)
    other = await store.get_or_create(tenant, Channel.SMS, "corrupt-consent-target")
    await corrupt(
        store,
        f"UPDATE consents SET {column} = $3 WHERE tenant_id = $1 AND profile_id = $2",
        tenant,
        profile_id,
        value,
    )
    reads: list[Read] = [
        lambda s: s.get_by_id(tenant, profile_id),
        lambda s: s.get_by_id(tenant, profile_id, include_history=True),
        lambda s: s.get_by_customer_id(tenant, customer),
        lambda s: s.get_by_channel_identity(tenant, Channel.WEB, "corrupt-consent"),
        lambda s: s.export_profile(tenant, profile_id),
        # a merge reads the source's consents for its log entry
        lambda s: s.merge_profiles(tenant, profile_id, other.id),
    ]
    for read in reads:
        with pytest.raises(errors.StorageError, match="consent row is corrupt") as caught:
            await read(store)
        assert_refused(caught, "consents", column)


async def merged(store: PostgresProfileStore) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A profile with a consent merged into another: (tenant, target id, merge id)."""
    tenant, source, _ = await with_consent(store)
    target = await store.get_or_create(tenant, Channel.SMS, "corrupt-merge-target")
    merge_id = uuid.uuid4()
    await store.merge_profiles(tenant, source, target.id, merge_id=merge_id)
    return tenant, target.id, merge_id


def consent_ip(record: dict[str, Any]) -> tuple[str, str]:
    record["moved_consents"][0]["ip_address"] = SECRET
    return json.dumps(record), "record.moved_consents.0.ip_address"


def merged_at(record: dict[str, Any]) -> tuple[str, str]:
    record["merged_at"] = SECRET
    return json.dumps(record), "record.merged_at"


def unknown_key(record: dict[str, Any]) -> tuple[str, str]:
    # a key the vault never writes may itself be personal data: it is not named either
    return json.dumps({**record, SECRET: 1}), "record.? (extra_forbidden)"


def not_json(record: dict[str, Any]) -> tuple[str, str]:
    return f"{SECRET} is not JSON", "record (json_invalid)"


@pytest.mark.parametrize("change", [consent_ip, merged_at, unknown_key, not_json])
async def test_a_merge_log_record_no_model_accepts_is_refused_on_every_read(
    store: PostgresProfileStore, change: Any
) -> None:
    tenant, target, merge_id = await merged(store)
    async with store.connection() as conn:
        stored = await conn.fetchval(
            "SELECT record FROM merge_log WHERE tenant_id = $1 AND id = $2", tenant, merge_id
        )
    record = json.loads(stored)
    assert record["moved_consents"], "the merge moved the source's consent"
    text, column = change(record)
    await corrupt(
        store,
        "UPDATE merge_log SET record = $3 WHERE tenant_id = $1 AND id = $2",
        tenant,
        merge_id,
        text,
    )
    reads: list[Read] = [
        lambda s: s.get_merge_log(tenant, target),
        lambda s: s.unmerge(tenant, merge_id),
    ]
    for read in reads:
        with pytest.raises(errors.StorageError, match="merge log row is corrupt") as caught:
            await read(store)
        assert_refused(caught, "merge_log", column)


async def test_a_lineage_row_no_model_accepts_is_refused(store: PostgresProfileStore) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-lineage")
    email = await store.update_field(
        tenant, profile.id, ProfileField(name="email", value="a@b.example")
    )
    derived = await store.update_field(
        tenant,
        profile.id,
        ProfileField(
            name="domain",
            value="b.example",
            source_item_id=email,
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )
    # source_metadata is a JSON object: an array (of personal data) is no lineage entry's
    await corrupt(
        store,
        "UPDATE profile_fields SET source_metadata = $3::jsonb WHERE tenant_id = $1 AND id = $2",
        tenant,
        email,
        [SECRET],
    )
    with pytest.raises(errors.StorageError, match="field row is corrupt") as caught:
        await store.get_derivation_chain(tenant, derived, ItemType.PROFILE_FIELD.value)
    assert_refused(caught, "profile_fields", "source_metadata")


async def test_a_refused_write_quotes_no_value_of_the_row(store: PostgresProfileStore) -> None:
    """asyncpg's text of a constraint violation carries the server's DETAIL, the row."""
    tenant, profile_id, _ = await with_consent(store)
    with pytest.raises(errors.ConflictError, match="consent_type") as caught:
        async with store.connection() as conn:
            await conn.execute(
                "INSERT INTO consents (tenant_id, profile_id, position, consent_type, granted,"
                " ip_address) VALUES ($1, $2, 7, NULL, true, $3)",
                tenant,
                profile_id,
                SECRET,
            )
    assert "NotNullViolationError" in str(caught.value)
    # the whole chain, the driver's error kept as the context included: it is scrubbed
    assert_not_quoted(caught.value, SECRET)


def test_a_conflict_names_the_ids_it_collides_with_and_no_other_detail() -> None:
    # the server's DETAIL of a unique violation: the ids are passed on (a 409's ``ids``),
    # the rest of the key (here a value) is not
    tenant, item = uuid.uuid4(), uuid.uuid4()
    refused = asyncpg.exceptions.UniqueViolationError.new(
        {
            "S": "ERROR",
            "C": "23505",
            "M": "duplicate key value violates unique constraint",
            "D": f"Key (tenant_id, id, name)=({tenant}, {item}, {SECRET}) already exists.",
            "t": "profile_fields",
            "n": "profile_fields_pkey",
        }
    )
    conflict = _translate(refused)
    assert isinstance(conflict, errors.ConflictError)
    shown = str(conflict)
    assert str(tenant) in shown and str(item) in shown and "profile_fields_pkey" in shown
    assert_not_quoted(conflict, SECRET)


def _violation(kind: type[asyncpg.PostgresError], detail: str) -> BaseException | None:
    return _translate(
        kind.new({"S": "ERROR", "C": "23505", "M": "refused", "D": detail, "t": "a_table"})
    )


@pytest.mark.parametrize(
    "detail",
    [
        # a not-null or check violation's DETAIL is the whole row: none of it is read
        "Failing row contains ({tenant}, {item}, {secret}, null).",
        # a key of an id column beside a personal one: only the id columns are named
        "Key (tenant_id, channel, channel_user_id)=({tenant}, web, {secret}) already exists.",
        # values that do not split one per column: none is named
        "Key (tenant_id, id, name)=({tenant}, {item}, a, {secret}) already exists.",
    ],
    ids=["failing-row", "personal-column", "unaligned"],
)
def test_a_uuid_shaped_value_in_detail_is_not_taken_for_an_id(detail: str) -> None:
    tenant, item, secret = uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())
    refused = detail.format(tenant=tenant, item=item, secret=secret)
    for kind in (asyncpg.exceptions.UniqueViolationError, asyncpg.exceptions.NotNullViolationError):
        conflict = _violation(kind, refused)
        assert isinstance(conflict, errors.ConflictError)
        assert "a_table" in str(conflict)
        assert_not_quoted(conflict, secret)
        if "channel_user_id" in detail:
            assert str(tenant) in str(conflict)
