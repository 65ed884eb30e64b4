"""Where the MongoDB tests run: a real server when CCVAULT_TEST_MONGO_URL is set, else the
in-process emulation (mongomock). The choice is printed at the top and bottom of the run."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ccvault_mongo import MongoProfileStore, MongoSettings
from ccvault_mongo.emulation import EmulatedMongoClient

MONGO_URL = os.environ.get("CCVAULT_TEST_MONGO_URL", "").strip()
#: the emulation's interleaving seed; set CCVAULT_TEST_MONGO_SEED to replay or vary it
EMULATION_SEED = int(os.environ.get("CCVAULT_TEST_MONGO_SEED", "20260501"))
#: at most this many event-loop yields before each emulated call (more: wilder interleaving)
EMULATION_YIELDS = int(os.environ.get("CCVAULT_TEST_MONGO_YIELDS", "3"))

EMULATED = (
    "MongoDB contract target: in-process emulation (mongomock) - "
    "set CCVAULT_TEST_MONGO_URL to run against a real server"
)


def target_description() -> str:
    """One line saying what the MongoDB tests run against."""
    if MONGO_URL:
        return f"MongoDB contract target: REAL server at {_redact(MONGO_URL)}"
    return (
        f"{EMULATED} (transactions emulated by serial execution; "
        f"interleaving seed {EMULATION_SEED})"
    )


def _redact(url: str) -> str:
    # never print a password: mongodb://user:secret@host -> mongodb://user:***@host
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def pytest_report_header(config: pytest.Config) -> str:
    return target_description()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_sep("=", target_description())


async def open_mongo_store(*, transactions: str = "auto") -> AsyncIterator[MongoProfileStore]:
    """A set-up store in a database of its own, dropped afterwards.

    Real server: ``CCVAULT_TEST_MONGO_URL``, database ``ccvault_test_<random>``.
    Emulation: a fresh emulated client; ``transactions="on"`` makes it report a replica set.
    """
    database = f"ccvault_test_{uuid.uuid4().hex[:12]}"
    if MONGO_URL:
        settings = MongoSettings(
            uri=MONGO_URL,
            database=database,
            transactions=transactions,
            server_selection_timeout_ms=5000,
        )
        store = MongoProfileStore(settings)
    else:
        client = EmulatedMongoClient(
            transactions=transactions == "on", seed=EMULATION_SEED, max_yields=EMULATION_YIELDS
        )
        settings = MongoSettings(database=database, transactions=transactions)
        store = MongoProfileStore(settings, client=client)
    await store.migrate()  # the explicit step (`ccvault migrate`): setup() never creates indexes
    async with store:
        yield store
        if MONGO_URL and store._client is not None:
            await store._client.drop_database(database)


async def migrated(store: MongoProfileStore) -> MongoProfileStore:
    """``store`` after the explicit migration step (indexes and version record), unopened."""
    await store.migrate()
    return store


async def open_second_mongo_store(first: MongoProfileStore) -> AsyncIterator[MongoProfileStore]:
    """A second, independent store over ``first``'s database, as a second process opens it.

    Real server: its own client on the same URI and database. Emulation: a second store on
    the same emulated server (the emulated client is the server's state; the store keeps no
    state of its own between calls but what it reads from there).
    """
    settings = first.settings
    if MONGO_URL:
        second = MongoProfileStore(settings)
    else:
        second = MongoProfileStore(settings, client=first._client)
    async with second:
        yield second
