"""A tenant document the vault did not write (or a corrupted one) is refused with
StorageError naming the part and attribute that is wrong, never the stored value: it may
be personal data. Neither the message nor any error chained to it quotes it.

Runs against the machine's Redis, as ``test_contract.py`` does, under a random key prefix
whose keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from ccvault import errors
from ccvault.models import Channel, Consent, ProfileField
from ccvault_contract_tests import assert_not_quoted
from ccvault_example_redis import RedisExampleProfileStore, RedisExampleSettings

REDIS_URL = os.environ.get("CCVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: the text written outside the vault: what no message may quote
SECRET = "SECRET-PII-123"


@pytest.fixture
async def store() -> AsyncIterator[RedisExampleProfileStore]:
    settings = RedisExampleSettings(url=REDIS_URL, key_prefix=f"ccvault-test:{uuid.uuid4().hex}:")
    async with RedisExampleProfileStore(settings) as opened:
        try:
            yield opened
        finally:
            client = opened._client()
            doomed = [k async for k in client.scan_iter(match=f"{settings.key_prefix}*")]
            if doomed:
                await client.delete(*doomed)


def set_consent_ip(doc: dict[str, Any]) -> None:
    doc["profiles"][0]["profile"]["consents"][0]["ip_address"] = SECRET


def set_collected_at(doc: dict[str, Any]) -> None:
    doc["fields"][0]["item"]["collected_at"] = SECRET


def set_status(doc: dict[str, Any]) -> None:
    doc["fields"][0]["item"]["status"] = SECRET


def set_metadata_key(doc: dict[str, Any]) -> None:
    # a key the vault never writes may itself be personal data: it is not quoted either
    doc["fields"][0]["item"]["extra_" + SECRET] = 1


def set_channel(doc: dict[str, Any]) -> None:
    doc["identities"][0][0] = SECRET


def set_seq(doc: dict[str, Any]) -> None:
    doc["seq"] = SECRET


_CASES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (set_consent_ip, "profiles.consents.0.ip_address (ip_any_address)"),
    (set_collected_at, "fields.collected_at (datetime_from_date_parsing)"),
    (set_status, "fields.status (enum)"),
    (set_metadata_key, "fields.? (extra_forbidden)"),
    (set_channel, "identities (ValueError)"),
    (set_seq, "seq (ValueError)"),
]


@pytest.mark.parametrize(("change", "named"), _CASES, ids=[c.__name__ for c, _ in _CASES])
async def test_a_corrupt_tenant_document_is_refused_without_its_values(
    store: RedisExampleProfileStore, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "corrupt-document")
    profile.consents.append(Consent(consent_type="marketing", granted=True, ip_address="192.0.2.1"))
    await store.save(profile)
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@b.example"))
    client, key = store._client(), store._key(tenant)
    doc = orjson.loads(await client.get(key))
    change(doc)
    await client.set(key, orjson.dumps(doc))

    with pytest.raises(errors.StorageError, match="tenant document is corrupt") as caught:
        await store.get_by_id(tenant, profile.id)
    assert named in str(caught.value), str(caught.value)
    assert_not_quoted(caught.value, SECRET)


async def test_a_tenant_document_that_is_not_json_is_refused(
    store: RedisExampleProfileStore,
) -> None:
    tenant = uuid.uuid4()
    await store._client().set(store._key(tenant), f"{SECRET} is not JSON")
    with pytest.raises(errors.StorageError, match=r": document \(JSONDecodeError\)") as caught:
        await store.list_profile_ids(tenant)
    assert_not_quoted(caught.value, SECRET)
