"""An in-process stand-in for a MongoDB server, for tests on machines without one.

:class:`EmulatedMongoClient` exposes the subset of PyMongo's async API that
:class:`~ccvault_mongo.store.MongoProfileStore` uses (``AsyncMongoClient`` ->
``AsyncDatabase`` -> ``AsyncCollection`` -> ``AsyncCursor``, ``admin.command("hello")``,
``start_session().with_transaction()``), with the same method names, arguments and result
objects, and executes each call on `mongomock <https://github.com/mongomock/mongomock>`_,
an in-memory implementation of the synchronous PyMongo API. It is the ONE seam between the
provider and the emulation: the store receives either a real ``AsyncMongoClient`` or this.

What it is honest about:

* Every call is recorded in :attr:`EmulatedMongoClient.commands` exactly as the store made
  it (collection, method, arguments), so tests can assert what a real server would receive.
* Documents come back through a BSON encode/decode round trip, typed as the driver
  types them (``Int64``, ``Binary``...).
* Every call first yields to the event loop a varying (seeded) number of times, as network
  round trips of varying latency would, so concurrent tasks interleave between calls in
  varied orders, as they do against a server.
* ``transactions=False`` (the default) reports a standalone server: the store then uses its
  ordered single-document writes, the path without transactions. ``transactions=True``
  reports a replica set and emulates transactions by running each one alone under a lock,
  restoring a snapshot on abort: stronger isolation than a server's snapshot isolation, so
  the driver's retry of transient transaction errors is never exercised here.
* mongomock's own limits apply (no ``$lookup`` with ``let``/``pipeline``, no sessions);
  the store keeps to what both support.

mongomock comes with the ``testing`` extra (``pip install 'ccvault-mongo[testing]'``);
importing this module without it raises :class:`~ccvault.errors.MissingExtraError`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import bson
from pymongo import IndexModel
from pymongo.errors import OperationFailure

from ccvault import errors

try:
    import mongomock
except ModuleNotFoundError as exc:  # the wheel ships this module; mongomock is an extra
    if exc.name != "mongomock":
        raise
    raise errors.MissingExtraError(
        "testing", "The MongoDB emulation (ccvault_mongo.emulation)", "ccvault-mongo"
    ) from exc

__all__ = ["Command", "EmulatedMongoClient"]


@dataclass(frozen=True)
class Command:
    """One call the store made: ``collection`` (``"admin"`` for admin commands), the PyMongo
    method name, its positional and keyword arguments (without ``session``), and whether it
    ran inside a transaction."""

    collection: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    in_transaction: bool = False


class EmulatedMongoClient:
    """Stands in for ``pymongo.AsyncMongoClient``; see the module docstring."""

    def __init__(
        self, *, transactions: bool = False, max_yields: int = 3, seed: int | None = None
    ) -> None:
        self._sync: Any = mongomock.MongoClient()
        self.transactions = transactions
        # each call yields to the event loop 1..max_yields times (seeded), so concurrent
        # tasks interleave in varied orders, as calls of varied latency do on a server
        self._max_yields = max(1, max_yields)
        self._random = random.Random(seed)
        self.commands: list[Command] = []
        self.committed_transactions = 0
        self.aborted_transactions = 0
        self._lock = asyncio.Lock()
        self._transaction_task: asyncio.Task[Any] | None = None
        self.admin = _EmulatedAdmin(self)
        self.closed = False

    def __getitem__(self, name: str) -> EmulatedDatabase:
        return EmulatedDatabase(self, name)

    def get_database(self, name: str) -> EmulatedDatabase:
        return EmulatedDatabase(self, name)

    def start_session(self, **options: Any) -> EmulatedSession:
        if not self.transactions:
            raise OperationFailure("the emulated server is a standalone: no transactions")
        return EmulatedSession(self)

    async def close(self) -> None:
        self.closed = True

    async def drop_database(self, name: str) -> None:
        self._sync.drop_database(name)

    def clear_commands(self) -> None:
        self.commands.clear()

    # -- execution --------------------------------------------------------------------

    def _record(
        self,
        collection: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: EmulatedSession | None,
    ) -> None:
        in_txn = session is not None and session.in_transaction
        self.commands.append(
            Command(collection, method, copy.deepcopy(args), copy.deepcopy(kwargs), in_txn)
        )

    async def _execute(self, session: EmulatedSession | None, call: Callable[[], Any]) -> Any:
        # a network round trip: other tasks run before the server executes the call
        for _ in range(self._random.randint(1, self._max_yields)):
            await asyncio.sleep(0)
        if not self.transactions or (session is not None and session.in_transaction):
            return call()
        if self._transaction_task is asyncio.current_task():
            raise AssertionError("a call inside a transaction was made without its session")
        async with self._lock:  # wait for any running transaction to finish
            return call()

    def _snapshot(self) -> dict[tuple[str, str], Any]:
        server: Any = self._sync._store
        return {
            (db_name, col_name): copy.deepcopy(col._documents)
            for db_name, db in server._databases.items()
            for col_name, col in db._collections.items()
        }

    def _restore(self, snapshot: dict[tuple[str, str], Any]) -> None:
        import collections

        server: Any = self._sync._store
        for db_name, db in server._databases.items():
            for col_name, col in db._collections.items():
                col._documents = snapshot.get((db_name, col_name), collections.OrderedDict())


class _EmulatedAdmin:
    def __init__(self, client: EmulatedMongoClient) -> None:
        self._client = client

    async def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._client._record("admin", "command", (name, *args), kwargs, None)
        await asyncio.sleep(0)
        if name in ("hello", "isMaster", "ismaster"):
            reply: dict[str, Any] = {
                "isWritablePrimary": True,
                "maxWireVersion": 21,
                "logicalSessionTimeoutMinutes": 30,
                "ok": 1.0,
            }
            if self._client.transactions:
                reply["setName"] = "emulated-rs"
            return reply
        if name == "ping":
            return {"ok": 1.0}
        raise OperationFailure(f"the emulation does not implement the {name!r} command")


class EmulatedSession:
    """Stands in for ``AsyncClientSession``: ``with_transaction`` only."""

    def __init__(self, client: EmulatedMongoClient) -> None:
        self._client = client
        self.in_transaction = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.end_session()

    async def end_session(self) -> None:
        self.in_transaction = False

    async def with_transaction(
        self, callback: Callable[[EmulatedSession], Awaitable[Any]], **options: Any
    ) -> Any:
        client = self._client
        async with client._lock:
            client._transaction_task = asyncio.current_task()
            snapshot = client._snapshot()
            self.in_transaction = True
            try:
                result = await callback(self)
            except BaseException:
                client._restore(snapshot)
                client.aborted_transactions += 1
                raise
            finally:
                self.in_transaction = False
                client._transaction_task = None
            client.committed_transactions += 1
            return result


class EmulatedDatabase:
    def __init__(self, client: EmulatedMongoClient, name: str) -> None:
        self.client = client
        self.name = name

    def __getitem__(self, name: str) -> EmulatedCollection:
        return EmulatedCollection(self.client, self.name, name)

    def get_collection(self, name: str) -> EmulatedCollection:
        return self[name]


class EmulatedCursor:
    """Stands in for ``AsyncCursor`` / ``AsyncCommandCursor``: ``to_list`` and ``async for``."""

    def __init__(self, run: Callable[[], Awaitable[list[Any]]]) -> None:
        self._run = run
        self._items: list[Any] | None = None

    async def to_list(self, length: int | None = None) -> list[Any]:
        if self._items is None:
            self._items = await self._run()
        items, self._items = self._items, []
        if length is not None:
            items, self._items = items[:length], items[length:]
        return items

    def __aiter__(self) -> EmulatedCursor:
        return self

    async def __anext__(self) -> Any:
        batch = await self.to_list(1)
        if not batch:
            raise StopAsyncIteration
        return batch[0]


def _wire(documents: Any) -> Any:
    """``documents`` as the driver hands them over after a trip through BSON (64-bit
    integers as ``Int64``, binary as ``Binary``...), so the store sees what a server gives."""
    if isinstance(documents, dict):
        return bson.decode(bson.encode(documents))
    if isinstance(documents, list):
        return bson.decode(bson.encode({"v": documents}))["v"]
    return documents


def _recorded(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Record the call, then run the mongomock method of the same name."""
    name = method.__name__
    returns_documents = name in ("find_one", "find_one_and_update", "distinct")

    @functools.wraps(method)
    async def wrapper(
        self: EmulatedCollection, *args: Any, session: Any = None, **kwargs: Any
    ) -> Any:
        self._client._record(self.name, name, args, kwargs, session)
        sync = getattr(self._sync, name)
        result = await self._client._execute(session, lambda: sync(*args, **kwargs))
        return _wire(result) if returns_documents else result

    return wrapper


class EmulatedCollection:
    """Stands in for ``AsyncCollection``, with the methods the store uses."""

    def __init__(self, client: EmulatedMongoClient, database: str, name: str) -> None:
        self._client = client
        self.name = name
        self._sync = client._sync[database][name]

    def find(self, *args: Any, session: Any = None, **kwargs: Any) -> EmulatedCursor:
        self._client._record(self.name, "find", args, kwargs, session)

        async def run() -> list[Any]:
            found = await self._client._execute(
                session, lambda: list(self._sync.find(*args, **kwargs))
            )
            return list(_wire(found))

        return EmulatedCursor(run)

    async def aggregate(
        self, pipeline: list[dict[str, Any]], *, session: Any = None, **kwargs: Any
    ) -> EmulatedCursor:
        self._client._record(self.name, "aggregate", (pipeline,), kwargs, session)
        rows = await self._client._execute(
            session, lambda: list(self._sync.aggregate(pipeline, **kwargs))
        )

        async def run() -> list[Any]:
            return list(_wire(rows))

        return EmulatedCursor(run)

    async def create_indexes(
        self, indexes: Iterable[IndexModel], *, session: Any = None, **kwargs: Any
    ) -> list[str]:
        """As a server does: an index that exists with the same key and options is left as
        it is (mongomock would re-check a partial unique index against every document)."""
        models = list(indexes)
        self._client._record(
            self.name, "create_indexes", ([m.document for m in models],), kwargs, session
        )

        def run() -> list[str]:
            existing = self._sync.index_information()
            names = []
            for model in models:
                spec = dict(model.document)
                name = spec.pop("name")
                keys = list(spec.pop("key").items())
                names.append(name)
                if name in existing:
                    current = {k: v for k, v in existing[name].items() if k not in ("v", "key")}
                    if list(existing[name]["key"]) != keys or current != spec:
                        raise OperationFailure(
                            f"Index with name: {name} already exists with different options",
                            code=85,
                        )
                    continue
                self._sync.create_index(keys, name=name, **spec)
            return names

        result: list[str] = await self._client._execute(session, run)
        return result

    @_recorded
    def find_one(self) -> Any: ...

    @_recorded
    def find_one_and_update(self) -> Any: ...

    @_recorded
    def insert_one(self) -> Any: ...

    @_recorded
    def insert_many(self) -> Any: ...

    @_recorded
    def update_one(self) -> Any: ...

    @_recorded
    def update_many(self) -> Any: ...

    @_recorded
    def replace_one(self) -> Any: ...

    @_recorded
    def delete_one(self) -> Any: ...

    @_recorded
    def delete_many(self) -> Any: ...

    @_recorded
    def count_documents(self) -> Any: ...

    @_recorded
    def distinct(self) -> Any: ...

    @_recorded
    def index_information(self) -> Any: ...
