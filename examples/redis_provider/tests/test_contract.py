"""The example Redis provider is gated on the unchanged ccvault contract suite.

Runs against the machine's Redis (127.0.0.1:6379 unless ``CCVAULT_TEST_REDIS_URL`` says
otherwise) under a random key prefix per test session; the session's keys are deleted at
the end and no other key is ever touched. ``other_store`` is a second client on the same
server and prefix: a second process, so cross-instance races go through Redis itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from ccvault_contract_tests import ProfileStoreContract
from ccvault_example_redis import RedisExampleProfileStore, RedisExampleSettings

REDIS_URL = os.environ.get("CCVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_settings() -> Iterator[RedisExampleSettings]:
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    yield RedisExampleSettings(url=REDIS_URL, key_prefix=prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # the prefix is a fresh hex string: no glob metacharacters to escape
        doomed = list(client.scan_iter(match=f"{prefix}*", count=500))
        for start in range(0, len(doomed), 500):
            client.delete(*doomed[start : start + 500])
    finally:
        client.close()


class TestExampleRedisContract(ProfileStoreContract):
    provider_name = "example_redis"  # capabilities come from its ProviderSpec
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def store(
        self, redis_settings: RedisExampleSettings
    ) -> AsyncIterator[RedisExampleProfileStore]:
        async with RedisExampleProfileStore(redis_settings) as store:
            yield store

    @pytest.fixture
    async def other_store(
        self, store: RedisExampleProfileStore, redis_settings: RedisExampleSettings
    ) -> AsyncIterator[RedisExampleProfileStore]:
        # a SECOND client on the same Redis and prefix: what a second process opens
        async with RedisExampleProfileStore(redis_settings) as other:
            yield other
