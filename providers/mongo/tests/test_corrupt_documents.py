"""A stored document the vault did not write (or a corrupted one) is refused on read with
StorageError naming the collection and the attribute, never the stored value: it may be
personal data. Neither the message nor any error chained to it (cause or context) quotes
it. The documents are changed directly in the collections, as a hand-written update would.
A server's refusal (whose text quotes the key or document refused) is translated the same
way.

They run against a real server when ``CCVAULT_TEST_MONGO_URL`` is set, else the emulation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from bson.binary import Binary
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from ccvault import errors
from ccvault.models import (
    Channel,
    Consent,
    ItemType,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    ScenarioFieldRequirement,
    SourceType,
)
from ccvault_contract_tests import assert_not_quoted
from ccvault_mongo import MongoProfileStore
from ccvault_mongo.codec import JSON_SUFFIX, uid
from ccvault_mongo.store import _translate

from .conftest import open_mongo_store

#: the text written outside the vault: what no message may quote
SECRET = "SECRET-PII-123"

Read = Callable[[MongoProfileStore], Awaitable[Any]]


@pytest.fixture
async def store() -> AsyncIterator[MongoProfileStore]:
    async for opened in open_mongo_store():
        yield opened


def assert_refused(caught: pytest.ExceptionInfo[errors.StorageError], where: str) -> None:
    """StorageError naming ``where`` (``collection.attribute``); the stored text in no
    message or repr along its chain, cause or context."""
    assert where in str(caught.value), str(caught.value)
    assert_not_quoted(caught.value, SECRET)


async def corrupt(
    store: MongoProfileStore, collection: str, query: dict[str, Any], **new: Any
) -> None:
    """Set ``new`` on the documents of ``collection`` matching ``query``, bypassing the vault."""
    result = await store._c(collection).update_many(query, {"$set": new})
    assert result.modified_count, f"no {collection} document matched {query}"


async def profile_with_consent(store: MongoProfileStore) -> tuple[UUID, UUID, UUID]:
    """A profile with a field (and one derived from it) and a consent: (tenant, profile,
    the first field's id)."""
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-docs")
    profile.consents.append(Consent(consent_type="marketing", granted=True, ip_address="192.0.2.1"))
    await store.save(profile)
    email = await store.update_field(
        tenant,
        profile.id,
        ProfileField(name="email", value="a@b.example", source_metadata={"k": "v"}),
    )
    await store.update_field(
        tenant,
        profile.id,
        ProfileField(
            name="domain",
            value="b.example",
            source=ProfileFieldSource.SYSTEM_INFERRED,
            source_item_id=email,
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )
    return tenant, profile.id, email


def profile_reads(tenant: UUID, profile_id: UUID) -> list[Read]:
    return [
        lambda s: s.get_by_id(tenant, profile_id),
        lambda s: s.get_by_id(tenant, profile_id, include_history=True),
        lambda s: s.export_profile(tenant, profile_id),
    ]


async def assert_every_read_refused(
    store: MongoProfileStore, reads: list[Read], where: str
) -> None:
    for read in reads:
        with pytest.raises(errors.StorageError, match="document is corrupt") as caught:
            await read(store)
        assert_refused(caught, where)


# (collection, attribute, the stored value, what the message names)
_PROFILE_CASES: list[tuple[str, str, Any, str]] = [
    ("consents", "ip_address", SECRET, "consents.ip_address"),
    ("consents", "granted_at", SECRET, "consents.granted_at"),
    ("profiles", "verification_level", SECRET, "profiles.verification_level"),
    ("profiles", "created_at", SECRET, "profiles.created_at"),
    ("identities", "channel", SECRET, "identities.channel"),
    ("fields", "collected_at", SECRET, "fields.collected_at"),
    ("fields", "source", SECRET, "fields.source"),
    ("fields", "id", Binary(SECRET.encode(), 4), "fields.id"),
    # a JSON object's key may itself be personal data: the message stops above it
    ("fields", "source_metadata", {SECRET: datetime.now(UTC)}, "fields.source_metadata"),
    ("fields", "value" + JSON_SUFFIX, f'{{"{SECRET}": ', "fields.value__json"),
]


@pytest.mark.parametrize(
    ("collection", "attribute", "value", "where"),
    _PROFILE_CASES,
    ids=[f"{c}.{a}" for c, a, _, _ in _PROFILE_CASES],
)
async def test_a_corrupt_document_is_refused_on_every_profile_read(
    store: MongoProfileStore, collection: str, attribute: str, value: Any, where: str
) -> None:
    tenant, profile_id, email = await profile_with_consent(store)
    query: dict[str, Any] = {"tenant_id": uid(tenant)}
    if collection == "fields":
        query["id"] = uid(email)
    await corrupt(store, collection, query, **{attribute: value})
    reads = profile_reads(tenant, profile_id)
    if collection == "fields":
        reads += [
            lambda s: s.get_field(tenant, profile_id, "email"),
            lambda s: s.get_field_history(tenant, profile_id, "email"),
        ]
    await assert_every_read_refused(store, reads, where)


async def test_a_corrupt_stored_status_is_refused_by_save(store: MongoProfileStore) -> None:
    """A status no member has is in no read's status filter; save reads it by id."""
    tenant, profile_id, email = await profile_with_consent(store)
    held = await store.get_by_id(tenant, profile_id)
    assert held is not None
    await corrupt(store, "fields", {"tenant_id": uid(tenant), "id": uid(email)}, status=SECRET)
    with pytest.raises(errors.StorageError, match="document is corrupt") as caught:
        await store.save(held)
    assert_refused(caught, "fields.status")


async def test_a_corrupt_lineage_document_is_refused(store: MongoProfileStore) -> None:
    tenant, profile_id, email = await profile_with_consent(store)
    derived = await store.get_field(tenant, profile_id, "domain")
    assert derived is not None
    await corrupt(  # both the source and the item derived from it
        store,
        "fields",
        {"tenant_id": uid(tenant)},
        source_metadata=None,
        **{"source_metadata" + JSON_SUFFIX: SECRET},
    )
    reads: list[Read] = [
        lambda s: s.get_derivation_chain(tenant, derived.id, ItemType.PROFILE_FIELD.value),
        lambda s: s.get_derived_items(tenant, email),
        lambda s: s.get_by_id(tenant, profile_id),
    ]
    await assert_every_read_refused(store, reads, "fields.source_metadata__json")


async def merged(store: MongoProfileStore) -> tuple[UUID, UUID, UUID]:
    """A profile with a consent merged into another: (tenant, target, merge id)."""
    tenant, source, _ = await profile_with_consent(store)
    target = await store.get_or_create(tenant, Channel.SMS, "corrupt-docs-target")
    merge_id = uuid4()
    await store.merge_profiles(tenant, source, target.id, merge_id=merge_id)
    return tenant, target.id, merge_id


@pytest.mark.parametrize("how", ["not_json", "consent_ip", "merged_at"])
async def test_a_corrupt_merge_log_entry_is_refused(store: MongoProfileStore, how: str) -> None:
    tenant, target, merge_id = await merged(store)
    query = {"tenant_id": uid(tenant), "id": uid(merge_id)}
    stored = await store._c("merge_log").find_one(query)
    record = json.loads(stored["record"])
    assert record["moved_consents"], "the merge moved the source's consent"
    if how == "not_json":
        text, where = f"{SECRET} is not JSON", "merge_log.record"
    elif how == "consent_ip":
        record["moved_consents"][0]["ip_address"] = SECRET
        text, where = json.dumps(record), "merge_log.record.moved_consents.0.ip_address"
    else:
        record["merged_at"] = SECRET
        text, where = json.dumps(record), "merge_log.record.merged_at"
    await corrupt(store, "merge_log", query, record=text)
    reads: list[Read] = [
        lambda s: s.get_merge_log(tenant, target),
        lambda s: s.unmerge(tenant, merge_id),
    ]
    await assert_every_read_refused(store, reads, where)


async def test_an_unknown_key_in_a_merge_log_entry_is_not_quoted(
    store: MongoProfileStore,
) -> None:
    tenant, target, merge_id = await merged(store)
    query = {"tenant_id": uid(tenant), "id": uid(merge_id)}
    stored = await store._c("merge_log").find_one(query)
    record = {**json.loads(stored["record"]), SECRET: 1}
    await corrupt(store, "merge_log", query, record=json.dumps(record))
    with pytest.raises(errors.StorageError, match="extra_forbidden") as caught:
        await store.get_merge_log(tenant, target)
    assert_refused(caught, "merge_log.record")


async def test_corrupt_schema_documents_are_refused(store: MongoProfileStore) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant, agent_id=agent, name="email", allowed_values=["x", "y"]
        )
    )
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    await corrupt(store, "definitions", {"tenant_id": uid(tenant)}, value_type=SECRET)
    await corrupt(store, "requirements", {"tenant_id": uid(tenant)}, required_level=SECRET)
    await assert_every_read_refused(
        store,
        [
            lambda s: s.get_field_definitions(tenant, agent),
            lambda s: s.get_field_definition(tenant, agent, "email"),
        ],
        "definitions.value_type",
    )
    await assert_every_read_refused(
        store,
        [lambda s: s.get_scenario_requirements(tenant, scenario)],
        "requirements.required_level",
    )


# ---------------------------------------------------------------------------------------
# a server's refusal: its text quotes its full error document (a duplicate key's values,
# the refused document)
# ---------------------------------------------------------------------------------------

# an identifier-shaped secret: the form a collection or index name has
SECRET_WORD = "ana_lopez_1984"

_REFUSALS = [
    (
        DuplicateKeyError(
            f'E11000 duplicate key error dup key: {{ channel_user_id: "{SECRET}" }}',
            11000,
            {
                "code": 11000,
                "errmsg": "E11000 duplicate key error collection: vault.ccv_identities "
                f'index: identity_unique dup key: {{ channel_user_id: "{SECRET}" }}',
                "keyPattern": {"tenant_id": 1, "channel": 1, "channel_user_id": 1},
                "keyValue": {"channel_user_id": SECRET},
            },
        ),
        errors.ConflictError,
        "vault.ccv_identities index identity_unique, unique index on tenant_id, channel,",
    ),
    (
        # no names before the key, and a key value shaped like them: none is taken for one
        DuplicateKeyError(
            "E11000 duplicate key error",
            11000,
            {
                "code": 11000,
                "errmsg": "E11000 duplicate key error dup key: "
                f'{{ channel_user_id: "collection: {SECRET_WORD} index: {SECRET_WORD}" }}',
                "keyPattern": {"tenant_id": 1, "channel": 1, "channel_user_id": 1},
            },
        ),
        errors.ConflictError,
        "refused a duplicate (unique index on tenant_id, channel, channel_user_id)",
    ),
    (
        BulkWriteError(
            {"writeErrors": [{"index": 0, "code": 11000, "op": {"ip_address": SECRET}}]}
        ),
        errors.StorageError,
        "BulkWriteError, code 65",
    ),
    (
        OperationFailure(f"Document failed validation: {SECRET}", 121, {"codeName": "X"}),
        errors.StorageError,
        "OperationFailure, code 121 (X)",
    ),
]


@pytest.mark.parametrize(
    ("refusal", "raised", "named"),
    _REFUSALS,
    ids=["duplicate", "duplicate-without-names", "bulk", "operation"],
)
async def test_a_server_refusal_is_translated_without_its_text(
    refusal: Exception, raised: type[errors.VaultError], named: str
) -> None:
    assert SECRET in str(refusal) or SECRET_WORD in str(refusal.details)  # the driver's text

    async def hook() -> None:
        raise refusal

    with pytest.raises(raised) as caught:
        await _translate(hook)()
    assert named in str(caught.value)
    assert_not_quoted(caught.value, SECRET)
    assert_not_quoted(caught.value, SECRET_WORD)
