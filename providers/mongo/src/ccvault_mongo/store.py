"""``MongoProfileStore``: the vault on MongoDB, through PyMongo's native async API.

The store talks to one object, ``client``, through the subset of the
``pymongo.AsyncMongoClient`` / ``AsyncDatabase`` / ``AsyncCollection`` API listed in the
README. In production that is an ``AsyncMongoClient``; the test suite may hand in the
in-process emulation of :mod:`ccvault_mongo.emulation` instead, which exposes the same
methods. Nothing else differs between the two.

Atomicity (see the README for the full table):

* **transactions** (replica set or sharded cluster, ``transactions = "auto"`` or ``"on"``):
  every multi-document write (supersede, merge, purge, save, delete, delete_item) runs in
  one multi-document transaction through ``ClientSession.with_transaction``, which retries
  transient conflicts.
* **standalone** (no transactions): each write is an ordering of single-document writes
  chosen so that the unique indexes keep the invariants at every moment. Field writers of
  one profile take turns through a lease on the profile document (:meth:`_lock`), so each
  supersedes exactly the version its predecessor made ACTIVE. A new field version is first
  stored with the internal status ``pending`` (invisible to every read), then the ACTIVE
  version is superseded and pointed at it, then it is made ACTIVE; the partial unique index
  refuses a second ACTIVE version whatever happens, and a writer refused that way
  supersedes the winner and tries again. No version is ever deleted by a write, so none is
  lost; a write interrupted by a dead process is finished (rolled forward) by whoever takes
  over its expired lease, or by :meth:`MongoProfileStore.recover_interrupted_writes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from uuid import UUID, uuid4

import pydantic
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ccvault import errors
from ccvault.batches import KeysetBatch, parse_orphans_position
from ccvault.migration import MigrationReport, SchemaStatus, SchemaStep, require_ready
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
    UnmergeResult,
    VerificationLevel,
)
from ccvault.rules.definitions import SchemaUpsert, plan_definition_save, plan_requirement_save
from ccvault.rules.identity import channel_eviction, identity_conflict, link_outcome
from ccvault.rules.merge import MergeLogRequest, MergePlan, MergeSide, merge_record, plan_merge
from ccvault.rules.save import SavePlan, SaveState, StoredItem, plan_save
from ccvault.rules.unmerge import UnmergeState, plan_unmerge
from ccvault.store import MergeWinner, ProfileStore, StoreRules
from ccvault_mongo.codec import (
    JSON_SUFFIX,
    decode,
    decode_document,
    dt,
    encode,
    pack_json,
    read_back,
    uid,
    unpack_json,
)
from ccvault_mongo.schema import LATEST_VERSION, MIGRATIONS, PENDING, VERSION_COLLECTION
from ccvault_mongo.settings import MongoSettings

__all__ = ["MongoProfileStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
_M = TypeVar("_M", bound=pydantic.BaseModel)

#: every status a read may return (``pending`` never is)
_STATUSES = [status.value for status in ItemStatus]
_NEWEST_FIELD_FIRST = [("collected_at", -1), ("seq", -1)]
_OLDEST_FIELD_FIRST = [("collected_at", 1), ("seq", 1)]
_NEWEST_ASSET_FIRST = [("uploaded_at", -1), ("seq", -1)]
_OLDEST_ASSET_FIRST = [("uploaded_at", 1), ("seq", 1)]
_FIELD_JSON = ("value", "source_metadata")
_ASSET_JSON = ("verification_result",)
_DEFINITION_JSON = ("allowed_values",)
_LINEAGE_SOURCES = [SourceType.PROFILE_FIELD.value, SourceType.PROFILE_ASSET.value]
#: the statuses mark_orphans may change
_NOT_ORPHANED = [s for s in _STATUSES if s != ItemStatus.ORPHANED.value]


def _to_model(
    collection: str,
    cls: type[_M],
    document: dict[str, Any],
    json_keys: Iterable[str] = (),
    *,
    attribute: str | None = None,
) -> _M:
    """The model stored in ``document`` of ``collection`` (or in its ``attribute``):
    internal keys (``_id``, ``tenant_id``...) dropped. A document the vault did not write
    raises StorageError naming the collection and attribute, never the value."""
    data = decode_document(collection, document)
    for key in json_keys:
        if key + JSON_SUFFIX in data:
            read_back(collection, key + JSON_SUFFIX, unpack_json, data, key)
    fields = cls.model_fields
    return read_back(
        collection, attribute, cls.model_validate, {k: v for k, v in data.items() if k in fields}
    )


def _merge_record(doc: dict[str, Any]) -> MergeRecord:
    """The merge log entry a ``merge_log`` document holds (as JSON text under ``record``)."""
    return read_back("merge_log", "record", MergeRecord.model_validate_json, doc.get("record"))


def _stored_id(collection: str, doc: dict[str, Any]) -> UUID:
    """The ``id`` of a stored document."""
    return read_back(collection, "id", _uuid, doc.get("id"))


def _uuid(stored: Any) -> UUID:
    return UUID(str(decode(stored)))


#: what save's in-place update never writes: the id, the write order and the lifecycle
_IN_PLACE_KEEPS = ("id", "seq", "status", "superseded_by_id", "superseded_at")


def _stored_item(collection: str, doc: dict[str, Any]) -> tuple[UUID, StoredItem]:
    """A stored field/asset document's id, and the document as :func:`plan_save` sees it
    (decoded once); a ``pending`` version (a standalone write in flight) is not ACTIVE
    yet, so a save leaves it alone. A value the vault did not write raises StorageError
    naming the attribute."""
    data = decode_document(collection, doc)
    item_id, profile_id, name = read_back(collection, None, _ID_OWNER_AND_NAME, data)
    status, at = data.get("status"), data.get("superseded_at")
    return item_id, StoredItem(
        profile_id=profile_id,
        name=name,
        status=(
            ItemStatus.SUPERSEDED
            if status == PENDING
            else read_back(collection, "status", ItemStatus, status)
        ),
        superseded_by_id=data.get("superseded_by_id"),
        superseded_at=(
            None
            if at is None
            else read_back(collection, "superseded_at", datetime.fromisoformat, at)
        ),
    )


_ID_OWNER_AND_NAME = operator.itemgetter("id", "profile_id", "name")


def _profile(
    data: dict[str, Any], identities: list[ChannelIdentity], consents: list[Consent]
) -> CustomerProfile:
    """A profile from its decoded document, without its fields and assets."""
    return CustomerProfile(
        id=data["id"],
        tenant_id=data["tenant_id"],
        customer_id=data["customer_id"],
        verification_level=data.get("verification_level", VerificationLevel.UNVERIFIED),
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        last_interaction_at=data.get("last_interaction_at"),
        channel_identities=identities,
        consents=consents,
    )


def _gone(profile: dict[str, Any]) -> bool:
    """Whether a stored profile document is soft-deleted, merged away or being merged."""
    return not profile.get("live") or profile.get("merging_into") is not None


def _translate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Driver errors become vault errors: unreachable server -> ProviderUnavailableError."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        # the text of a server's refusal quotes its full error document, which may hold
        # stored values (a duplicate key's, a refused document): those errors are replaced
        # by one naming the index or the error code, raised outside the except block so
        # that no chained error carries the text either
        try:
            return await fn(*args, **kwargs)
        except errors.VaultError:
            raise
        except DuplicateKeyError as exc:
            error: errors.VaultError = errors.ConflictError(
                f"MongoDB refused a duplicate ({_unique_index(exc)})"
            )
        except ConnectionFailure as exc:
            raise errors.ProviderUnavailableError(f"MongoDB is unreachable: {exc}") from exc
        except OperationFailure as exc:
            error = errors.StorageError(f"MongoDB refused an operation: {_failure(exc)}")
        except PyMongoError as exc:
            raise errors.StorageError(f"MongoDB error: {exc}") from exc
        raise error from None

    return wrapper


def _unique_index(exc: DuplicateKeyError) -> str:
    """The unique index that refused a write: its collection and name (from the server's
    message, whose ``dup key`` part, the values, is not read) and its attributes."""
    details = exc.details or {}
    # only the text before the key is read: a value in the key cannot pass for a name
    named = _DUPLICATE_IN.match(str(details.get("errmsg", "")).partition(" dup key:")[0])
    where = f"{named['collection']} index {named['index']}, " if named else ""
    pattern = details.get("keyPattern")
    if isinstance(pattern, dict) and pattern:
        return f"{where}unique index on " + ", ".join(str(name) for name in pattern)
    return f"{where}a unique index"


#: the collection and index of a duplicate key error's message ("E11000 duplicate key error
#: collection: DB.COLL index: NAME dup key: {...}"): names only, never the key
_DUPLICATE_IN = re.compile(
    r"E11000 duplicate key error collection: (?P<collection>[\w.$-]+) index: (?P<index>[\w.$-]+)$"
)


def _failure(exc: OperationFailure) -> str:
    """A server error by its class and code only; an error without a server reply (raised
    by the client or the emulation) by its own text, which quotes no document."""
    if not exc.details:
        return f"{type(exc).__name__}: {exc}"
    name = exc.details.get("codeName")
    return f"{type(exc).__name__}, code {exc.code}" + (
        f" ({name})" if isinstance(name, str) else ""
    )


class MongoProfileStore(ProfileStore):
    """A :class:`~ccvault.store.ProfileStore` on MongoDB. See the module docstring.

    ``client``: an ``AsyncMongoClient`` (or the emulation) to use instead of opening one
    from ``settings.uri``; a client passed in is not closed by :meth:`aclose`.
    """

    #: declared to the contract suite: 1 MiB values, NUL characters, 200 concurrent writers
    capabilities = frozenset({"large_values", "nul_characters", "high_concurrency"})
    #: derived items examined per page by ``mark_orphans``: bounds its memory and the size
    #: of each ``$in`` it sends (far below the 16 MiB command limit)
    orphan_batch_size = 5000

    def __init__(
        self,
        settings: MongoSettings | None = None,
        *,
        client: Any | None = None,
        rules: StoreRules | None = None,
    ) -> None:
        super().__init__(rules=rules)
        self.settings = settings or MongoSettings()
        self._given_client = client
        self._client: Any | None = None
        self._db: Any | None = None
        #: decided by :meth:`setup`: True when multi-document transactions are used
        self.transactions_enabled: bool | None = None

    # =====================================================================================
    # lifecycle
    # =====================================================================================

    @_translate
    async def setup(self) -> None:
        """Connect, decide the atomicity mode, check the schema version (reads only: no
        collection or index is created unless ``migrate_on_start``), finish interrupted
        writes. Idempotent and safe when several processes start at once.
        """
        await self._connect()
        status = await self._read_status()
        if self.settings.migrate_on_start and status.pending and not status.newer:
            await self._apply_migrations()
        else:
            require_ready(status, distribution="ccvault-mongo")
        await self.recover_interrupted_writes()

    async def _connect(self) -> None:
        """Open (or take) the client and decide the atomicity mode. No write."""
        if self._client is None:
            if self._given_client is not None:
                self._client = self._given_client
            else:
                from pymongo import AsyncMongoClient

                self._client = AsyncMongoClient(
                    self.settings.uri.get_secret_value(), **self.settings.client_options()
                )
        self._db = self._client[self.settings.database]
        hello = await self._client.admin.command("hello")
        supported = self.server_supports_transactions(hello)
        if self.settings.transactions == "on" and not supported:
            raise errors.ConfigurationError(
                "providers.mongo.transactions: 'on' needs a replica set or a sharded cluster, "
                "but the server is a standalone; use 'auto' or 'off'"
            )
        self.transactions_enabled = supported and self.settings.transactions != "off"

    async def _read_status(self) -> SchemaStatus:
        """The recorded schema versions: one ``find`` on the version collection (reading a
        collection that does not exist creates nothing)."""
        documents = await self._c(VERSION_COLLECTION).find({}, {"_id": 1}).to_list(None)
        done = {int(d["_id"]) for d in documents}
        current = max(done, default=0)
        prefix = self.settings.collection_prefix
        pending = (
            ()
            if current > LATEST_VERSION
            else tuple(m.step(prefix) for m in MIGRATIONS if m.version not in done)
        )
        return SchemaStatus(
            current=current,
            latest=LATEST_VERSION,
            pending=pending,
            location=f'MongoDB database "{self.settings.database}"',
        )

    async def _apply_migrations(self) -> list[SchemaStep]:
        """Create every pending step's indexes (idempotent on the server), then record the
        step with an upsert; the steps whose record THIS call inserted are returned (a
        concurrent migrator's upsert of the same version finds the document and inserts
        nothing)."""
        status = await self._read_status()
        if status.newer:
            require_ready(status, distribution="ccvault-mongo")
        pending = {step.version for step in status.pending}
        applied: list[SchemaStep] = []
        for migration in MIGRATIONS:
            if migration.version not in pending:
                continue
            for name, models in migration.indexes.items():
                await self._c(name).create_indexes(models)
            result = await self._c(VERSION_COLLECTION).update_one(
                {"_id": migration.version},
                {
                    "$setOnInsert": {
                        "description": migration.description,
                        "applied_at": self.now(),
                    }
                },
                upsert=True,
            )
            if result.upserted_id is not None:
                applied.append(migration.step(self.settings.collection_prefix))
        return applied

    @_translate
    async def schema_status(self) -> SchemaStatus:
        opened = self._db is None
        try:
            if opened:
                await self._connect()
            return await self._read_status()
        finally:
            if opened:
                await self.aclose()

    @_translate
    async def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        opened = self._db is None
        try:
            if opened:
                await self._connect()
            if dry_run:
                status = await self._read_status()
                if status.newer:
                    require_ready(status, distribution="ccvault-mongo")
                return MigrationReport(applied=status.pending, status=status, dry_run=True)
            applied = await self._apply_migrations()
            return MigrationReport(applied=tuple(applied), status=await self._read_status())
        finally:
            if opened:
                await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this store opened it. Idempotent."""
        client, self._client = self._client, None
        self._db = None
        if client is not None and client is not self._given_client:
            await client.close()

    @staticmethod
    def server_supports_transactions(hello: dict[str, Any]) -> bool:
        """Whether the ``hello`` reply is a replica-set member or a mongos (sessions needed)."""
        has_sessions = hello.get("logicalSessionTimeoutMinutes") is not None
        return has_sessions and (bool(hello.get("setName")) or hello.get("msg") == "isdbgrid")

    def _c(self, name: str) -> Any:
        if self._db is None:
            raise errors.ConfigurationError("the MongoDB store is not set up: use `async with`")
        return self._db[self.settings.collection_prefix + name]

    async def _atomic(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``work(session)`` in one transaction, or ``work(None)`` on a standalone.

        Multi-query reads use it too: in a transaction they read one snapshot."""
        if not self.transactions_enabled:
            return await work(None)
        assert self._client is not None
        async with self._client.start_session() as session:
            result: _T = await session.with_transaction(
                work,
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority"),
            )
            return result

    # =====================================================================================
    # documents
    # =====================================================================================

    @staticmethod
    def _field_doc(
        tenant_id: UUID, profile_id: UUID, item: ProfileField, seq: int
    ) -> dict[str, Any]:
        doc: dict[str, Any] = encode(item.model_dump(mode="python"))
        for key in _FIELD_JSON:
            pack_json(doc, key)
        return {"tenant_id": uid(tenant_id), "profile_id": uid(profile_id), "seq": seq, **doc}

    @staticmethod
    def _asset_doc(
        tenant_id: UUID, profile_id: UUID, item: ProfileAsset, seq: int
    ) -> dict[str, Any]:
        doc: dict[str, Any] = encode(item.model_dump(mode="python"))
        for key in _ASSET_JSON:
            pack_json(doc, key)
        return {"tenant_id": uid(tenant_id), "profile_id": uid(profile_id), "seq": seq, **doc}

    @staticmethod
    def _identity_doc(
        tenant_id: UUID, profile_id: UUID, identity: ChannelIdentity, position: int
    ) -> dict[str, Any]:
        doc: dict[str, Any] = encode(identity.model_dump(mode="python"))
        return {
            "tenant_id": uid(tenant_id),
            **doc,
            "profile_id": uid(profile_id),
            "position": position,
        }

    @staticmethod
    def _profile_attrs(profile: CustomerProfile) -> dict[str, Any]:
        attrs: dict[str, Any] = encode(
            profile.model_dump(
                mode="python",
                include={
                    "customer_id",
                    "verification_level",
                    "created_at",
                    "updated_at",
                    "last_interaction_at",
                },
            )
        )
        return attrs

    async def _claim_seq(
        self, tenant_id: UUID, profile_id: UUID, session: Any, count: int = 1
    ) -> int:
        """Check the profile is live (NotFoundError otherwise) and claim ``count`` numbers of
        its write order; return the last. One round trip; in a transaction it also makes
        concurrent writers of one profile conflict, so they are serialised."""
        found = await self._c("profiles").find_one_and_update(
            {
                "tenant_id": uid(tenant_id),
                "id": uid(profile_id),
                "live": True,
                "merging_into": None,
            },
            {"$inc": {"write_seq": count}},
            projection={"write_seq": 1},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if found is None:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        return int(found["write_seq"])

    # =====================================================================================
    # profile reads: a fixed number of round trips, whatever the number of fields
    # =====================================================================================

    async def _load(
        self,
        tenant_id: UUID,
        key: dict[str, Any],
        include_history: bool,
        *,
        live_only: bool = True,
        session: Any = None,
    ) -> CustomerProfile | None:
        """Five queries, whatever the number of fields: one ``find_one`` for the profile,
        then identities, fields, assets and consents. Without a session the four run at
        once (two round-trip latencies); in a transaction (a session cannot run operations
        concurrently) they run one after another on one snapshot."""
        query: dict[str, Any] = {"tenant_id": uid(tenant_id), **key}
        if live_only:
            query["live"] = True
        else:
            query["purging"] = None  # a profile half-way through a purge is gone already
        doc = await self._c("profiles").find_one(query, session=session)
        if doc is None:
            return None
        owner = {"tenant_id": uid(tenant_id), "profile_id": doc["id"]}
        field_status: Any = {"$in": _STATUSES} if include_history else ItemStatus.ACTIVE.value
        asset_status: Any = {"$in": _STATUSES} if include_history else ItemStatus.ACTIVE.value
        queries: list[tuple[str, dict[str, Any], list[tuple[str, int]]]] = [
            ("identities", owner, [("position", 1)]),
            ("fields", {**owner, "status": field_status}, [("name", 1), *_NEWEST_FIELD_FIRST]),
            ("assets", {**owner, "status": asset_status}, _OLDEST_ASSET_FIRST),
            ("consents", owner, [("position", 1)]),
        ]

        async def run(name: str, query: dict[str, Any], sort: Any) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await self._c(name).find(query, sort=sort, session=session).to_list(None)
            )
            return found

        if session is None:
            results = await asyncio.gather(*(run(*q) for q in queries))
        else:
            results = [await run(*q) for q in queries]
        identities, fields, assets, consents = results
        data = decode_document("profiles", doc)
        if data.get("live"):
            held = [_to_model("identities", ChannelIdentity, d) for d in identities]
        else:  # a soft-deleted profile keeps its released identities in its own document
            held = [
                _to_model("profiles", ChannelIdentity, d, attribute="released_identities")
                for d in data.get("released_identities") or []
            ]
        profile = read_back(
            "profiles",
            None,
            _profile,
            data,
            held,
            [_to_model("consents", Consent, d) for d in consents],
        )
        for item in (_to_model("fields", ProfileField, d, _FIELD_JSON) for d in fields):
            if item.status is ItemStatus.ACTIVE:
                profile.fields.setdefault(item.name, item)  # newest first: first one wins
            if include_history:
                profile.field_history.setdefault(item.name, []).append(item)
        for asset in (_to_model("assets", ProfileAsset, d, _ASSET_JSON) for d in assets):
            if asset.status is ItemStatus.ACTIVE:
                profile.assets.append(asset)
            if include_history:
                profile.asset_history.append(asset)
        return profile

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        key = {"customer_id": uid(customer_id)}
        return await self._atomic(
            lambda session: self._load(tenant_id, key, include_history, session=session)
        )

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        key = {"id": uid(profile_id)}
        return await self._atomic(
            lambda session: self._load(tenant_id, key, include_history, session=session)
        )

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        async def work(session: Any) -> CustomerProfile | None:
            identity = await self._c("identities").find_one(
                {
                    "tenant_id": uid(tenant_id),
                    "channel": channel.value,
                    "channel_user_id": channel_user_id,
                },
                projection={"profile_id": 1},
                session=session,
            )
            if identity is None:
                return None
            return await self._load(
                tenant_id, {"id": identity["profile_id"]}, include_history, session=session
            )

        return await self._atomic(work)

    # =====================================================================================
    # profile writes
    # =====================================================================================

    async def _release_if_stale(self, tenant_id: UUID, identity: dict[str, Any]) -> bool:
        """Delete an identity whose profile is no longer live (left by an interrupted
        delete on a standalone server); True if it was stale."""
        owner = await self._c("profiles").find_one(
            {"tenant_id": uid(tenant_id), "id": identity["profile_id"], "live": True},
            projection={"id": 1},
        )
        if owner is not None:
            return False
        await self._c("identities").delete_one(
            {
                "tenant_id": uid(tenant_id),
                "_id": identity["_id"],
                "profile_id": identity["profile_id"],
            }
        )
        return True

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]
        key = {
            "tenant_id": uid(tenant_id),
            "channel": identity.channel.value,
            "channel_user_id": identity.channel_user_id,
        }
        for _ in range(self.settings.max_write_retries):
            owner = await self._c("identities").find_one(key, projection={"profile_id": 1})
            if owner is not None:
                found = await self._load(tenant_id, {"id": owner["profile_id"]}, False)
                if found is not None:
                    return found
                await self._release_if_stale(tenant_id, owner)
                continue
            # the profile first, then the identity that makes it findable: the unique
            # identity index decides a race, and the loser removes its unreachable profile
            # (so a retry may insert the same candidate again)
            await self._c("profiles").insert_one(
                {
                    "tenant_id": uid(tenant_id),
                    "id": uid(candidate.id),
                    **self._profile_attrs(candidate),
                    "live": True,
                    "write_seq": 1,
                }
            )
            try:
                await self._c("identities").insert_one(
                    self._identity_doc(tenant_id, candidate.id, identity, 1)
                )
            except DuplicateKeyError:
                pass  # lost the race: the profile is removed below
            else:
                return candidate
            # outside the except block, so that a failure here is not chained to the
            # duplicate key's error, whose text quotes the identity (personal data)
            await self._c("profiles").delete_one(
                {"tenant_id": uid(tenant_id), "id": uid(candidate.id)}
            )
        raise errors.ConflictError("get_or_create lost too many races; retry")

    async def _save(self, profile: CustomerProfile) -> UUID:
        tenant_id, profile_id = profile.tenant_id, profile.id

        async def work(session: Any) -> UUID:
            # read, plan (every refusal is raised here, before anything is written), apply
            state = await self._read_save_state(profile, session)
            plan = plan_save(state, profile, self.now())
            await self._apply_save(plan, session)
            return profile_id

        if self.transactions_enabled:
            return await self._atomic(work)
        try:  # standalone: field writers of the profile take turns through its lease
            _, token = await self._lock(tenant_id, profile_id, count=0, state={})
        except errors.NotFoundError:
            return await work(None)  # a new profile: nobody else can write to it yet
        try:
            return await work(None)
        finally:
            await self._unlock(tenant_id, profile_id, token)

    async def _read_save_state(self, profile: CustomerProfile, session: Any) -> SaveState:
        """What :func:`plan_save` needs: on the transaction's snapshot, or (standalone)
        under the profile's write lease."""
        tenant_id, profile_id = profile.tenant_id, profile.id
        t = uid(tenant_id)
        stored = await self._c("profiles").find_one(
            {"tenant_id": t, "id": uid(profile_id)},
            projection={"live": 1, "merging_into": 1},
            session=session,
        )
        owner = await self._c("profiles").find_one(
            {"tenant_id": t, "customer_id": uid(profile.customer_id), "live": True},
            projection={"id": 1},
            session=session,
        )
        identity_owners: dict[tuple[Channel, str], UUID] = {}
        keys = [
            {"channel": i.channel.value, "channel_user_id": i.channel_user_id}
            for i in profile.channel_identities
        ]
        if keys:
            found = (
                await self._c("identities")
                .find({"tenant_id": t, "$or": keys}, session=session)
                .to_list(None)
            )
            for doc in found:
                owner_id: UUID = decode(doc["profile_id"])
                # an identity left by a delete interrupted on a standalone server is free
                if (
                    session is None
                    and owner_id != profile_id
                    and await self._release_if_stale(tenant_id, doc)
                ):
                    continue
                identity_owners[(Channel(doc["channel"]), doc["channel_user_id"])] = owner_id
        items: list[dict[UUID, StoredItem]] = []
        for name, ids in (
            ("fields", [uid(f.id) for f in profile.fields.values()]),
            ("assets", [uid(a.id) for a in profile.assets]),
        ):
            docs = (
                await self._c(name)
                .find(
                    {"tenant_id": t, "id": {"$in": ids}},
                    projection={
                        "id": 1,
                        "profile_id": 1,
                        "name": 1,
                        "status": 1,
                        "superseded_by_id": 1,
                        "superseded_at": 1,
                    },
                    session=session,
                )
                .to_list(None)
                if ids
                else []
            )
            items.append(dict(_stored_item(name, d) for d in docs))
        return SaveState(
            exists=stored is not None,
            gone=stored is not None and _gone(stored),
            customer_owner=None if owner is None else decode(owner["id"]),
            identity_owners=identity_owners,
            fields=items[0],
            assets=items[1],
        )

    async def _apply_save(self, plan: SavePlan, session: Any) -> None:
        """Write ``plan`` in the transaction ``session``, or (standalone, ``None``) as an
        ordering of single-document writes: the identity claims, which a concurrent writer
        can still refuse, come first and are undone when refused; a failure after them
        cannot be undone and raises :class:`~ccvault.errors.PartialWriteError`."""
        profile = plan.profile
        tenant_id, profile_id = profile.tenant_id, profile.id
        t, p = uid(tenant_id), uid(profile_id)
        count = (
            len(plan.identities)
            + len(plan.consents)
            + len(plan.new_fields)
            + len(plan.updated_fields)
            + len(plan.new_assets)
            + len(plan.updated_assets)
            + 1
        )
        # (the reads and writes after a refusal run outside its except block: what they
        # raise is then not chained to the duplicate key's error, whose text quotes the key)
        refused = False
        try:
            # only a live profile matches; a new one is inserted with the filter's
            # equalities (live, no merge), so nothing here can revive a deleted one: if it
            # was deleted since it was read, the insert collides with it on the (tenant_id,
            # id) unique index
            before = await self._c("profiles").find_one_and_update(
                {"tenant_id": t, "id": p, "live": True, "merging_into": None},
                {"$set": self._profile_attrs(profile), "$inc": {"write_seq": count}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
                session=session,
            )
        except DuplicateKeyError:
            refused = True
        if refused:
            if session is None:  # standalone: which unique index refused it?
                raced = await self._c("profiles").find_one(
                    {"tenant_id": t, "id": p}, projection={"live": 1, "merging_into": 1}
                )
                if raced is not None and _gone(raced):
                    raise errors.NotFoundError(f"profile {profile_id} is deleted") from None
                if raced is not None:
                    raise errors.ConflictError(
                        f"profile {profile_id} was created concurrently; retry"
                    ) from None
            raise errors.IdentityConflictError(
                "the customer id belongs to another live profile"
            ) from None
        seq = 0 if before is None else int(before.get("write_seq", 0))
        # identities are claimed before any is released; the unique index arbitrates
        claimed: list[Any] = []
        for identity in plan.identities:
            seq += 1
            doc = self._identity_doc(tenant_id, profile_id, identity, seq)
            try:
                result = await self._c("identities").update_one(
                    {
                        "tenant_id": t,
                        "channel": doc["channel"],
                        "channel_user_id": doc["channel_user_id"],
                        "profile_id": p,
                    },
                    {"$set": doc},
                    upsert=True,
                    session=session,
                )
            except DuplicateKeyError:
                result = None  # refused: another live profile holds the identity
            if result is None:
                if session is None:  # standalone: undo this call's writes, then refuse
                    await self._undo_profile_write(t, p, before, claimed)
                raise errors.IdentityConflictError(
                    f"a {identity.channel.value} identity belongs to another live profile"
                ) from None
            if result.upserted_id is not None:
                claimed.append(result.upserted_id)
        try:
            await self._apply_save_rest(plan, seq, session)
        except (errors.ConflictError, errors.NotFoundError, errors.ValidationError) as exc:
            if session is not None:
                raise  # the transaction is undone
            raise errors.PartialWriteError(
                f"save of profile {profile_id} failed after part of it was stored "
                f"({type(exc).__name__}); re-read the profile before writing again"
            ) from exc

    async def _apply_save_rest(self, plan: SavePlan, seq: int, session: Any) -> None:
        """Identities released, consents, fields and assets: the writes after the claims."""
        profile = plan.profile
        tenant_id, profile_id = profile.tenant_id, profile.id
        owner = {"tenant_id": uid(tenant_id), "profile_id": uid(profile_id)}
        listed = [(i.channel.value, i.channel_user_id) for i in plan.identities]
        current = (
            await self._c("identities")
            .find(owner, projection={"channel": 1, "channel_user_id": 1}, session=session)
            .to_list(None)
        )
        gone = [d["_id"] for d in current if (d["channel"], d["channel_user_id"]) not in listed]
        if gone:
            await self._c("identities").delete_many(
                {**owner, "_id": {"$in": gone}}, session=session
            )
        await self._c("consents").delete_many(owner, session=session)
        if plan.consents:
            docs = []
            for consent in plan.consents:
                seq += 1
                docs.append({**owner, **encode(consent.model_dump(mode="python")), "position": seq})
            await self._c("consents").insert_many(docs, session=session)
        # in place: content only, and only while still ACTIVE (a stale copy never revives a
        # version a concurrent sweep closed after it was read)
        for item in plan.updated_fields:
            seq += 1
            doc = self._field_doc(tenant_id, profile_id, item, seq)
            for key in _IN_PLACE_KEEPS:
                doc.pop(key, None)
            await self._c("fields").update_one(
                {**owner, "id": uid(item.id), "status": ItemStatus.ACTIVE.value},
                {"$set": doc},
                session=session,
            )
        for item in plan.new_fields:
            seq += 1
            await self._put_field(tenant_id, profile_id, item, True, seq, session, plan.now)
        for asset in plan.updated_assets:
            seq += 1
            doc = self._asset_doc(tenant_id, profile_id, asset, seq)
            for key in _IN_PLACE_KEEPS:
                doc.pop(key, None)
            await self._c("assets").update_one(
                {**owner, "id": uid(asset.id), "status": ItemStatus.ACTIVE.value},
                {"$set": doc},
                session=session,
            )
        for asset in plan.new_assets:
            seq += 1
            try:
                await self._c("assets").insert_one(
                    self._asset_doc(tenant_id, profile_id, asset, seq), session=session
                )
            except DuplicateKeyError:
                raise errors.ConflictError(f"asset id {asset.id} is already stored") from None

    async def _refuse_gone_profile(self, t: Any, profile_id: UUID, session: Any) -> None:
        """NotFoundError if the profile is stored but soft-deleted or merged (away)."""
        stored = await self._c("profiles").find_one(
            {"tenant_id": t, "id": uid(profile_id)},
            projection={"live": 1, "merging_into": 1},
            session=session,
        )
        if stored is not None and _gone(stored):
            raise errors.NotFoundError(f"profile {profile_id} is deleted")

    async def _undo_profile_write(
        self, t: Any, p: Any, before: dict[str, Any] | None, claimed: list[Any]
    ) -> None:
        """Standalone ``save`` lost an identity race after its first writes: remove the
        identities it claimed and put the profile document back as it was (or remove it,
        if this call created it), so a refused save leaves nothing behind."""
        if claimed:
            await self._c("identities").delete_many(
                {"tenant_id": t, "_id": {"$in": claimed}, "profile_id": p}
            )
        if before is None:
            await self._c("profiles").delete_one({"tenant_id": t, "id": p})
            return
        restored = {
            k: v
            for k, v in before.items()
            if k not in ("_id", "id", "write_seq", "lock", "lock_until")
        }
        dropped = {
            k: "" for k in ("deleted_at", "released_identities", "merging_into") if k not in before
        }
        update: dict[str, Any] = {"$set": restored}
        if dropped:
            update["$unset"] = dropped
        await self._c("profiles").update_one({"tenant_id": t, "id": p}, update)

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        t, p = uid(tenant_id), uid(profile_id)

        async def work(session: Any) -> bool:
            owned = (
                await self._c("identities")
                .find({"tenant_id": t, "profile_id": p}, sort=[("position", 1)], session=session)
                .to_list(None)
            )
            # the profile stops being live first, then its identities are released; an
            # interruption in between leaves identities that get_or_create releases itself
            result = await self._c("profiles").update_one(
                {"tenant_id": t, "id": p, "live": True},
                {
                    "$set": {
                        "live": False,
                        "deleted_at": dt(self.now()),
                        "released_identities": owned,
                    }
                },
                session=session,
            )
            if result.matched_count == 0:
                return False
            await self._c("identities").delete_many(
                {"tenant_id": t, "profile_id": p}, session=session
            )
            return True

        return await self._atomic(work)

    # =====================================================================================
    # fields
    # =====================================================================================

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        if self.transactions_enabled:

            async def work(session: Any) -> UUID:
                seq = await self._claim_seq(tenant_id, profile_id, session)
                await self._put_field(
                    tenant_id, profile_id, field, supersede_existing, seq, session
                )
                return field.id

            return await self._atomic(work)
        seq, token = await self._lock(tenant_id, profile_id)
        try:
            await self._put_field(tenant_id, profile_id, field, supersede_existing, seq, None)
        finally:
            released = await self._unlock(tenant_id, profile_id, token)
        if not released:
            # a purge that ran while this write was in flight must not leave it behind
            alive = await self._c("profiles").find_one(
                {"tenant_id": uid(tenant_id), "id": uid(profile_id), "purging": None},
                projection={"id": 1},
            )
            if alive is None:
                await self._c("fields").delete_one(
                    {"tenant_id": uid(tenant_id), "id": uid(field.id)}
                )
                raise errors.NotFoundError(f"profile {profile_id} was purged")
        return field.id

    # -- the standalone write lease -----------------------------------------------------

    async def _lock(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        *,
        count: int = 1,
        state: dict[str, Any] | None = None,
    ) -> tuple[int, str]:
        """Take the profile's write lease (standalone servers) and claim ``count`` numbers
        of its write order; return the last one and the lease token.

        Field writers of one profile hold the lease one at a time, so each supersedes the
        version its predecessor made ACTIVE: the supersede chain stays a single line. The
        lease is one field of the profile document, taken with one conditional update; a
        writer that finds it taken retries with a short, growing, jittered pause. A lease
        left by a dead process expires after ``write_lease_ms``; whoever takes it over
        first finishes the dead writer's ``pending`` versions. The one-ACTIVE-per-name
        index does not depend on the lease: it holds even if a paused writer outlives it.
        ``state``: what the profile must look like (default: live and not being merged);
        NotFoundError if it does not.
        """
        t, p = uid(tenant_id), uid(profile_id)
        wanted = {"live": True, "merging_into": None} if state is None else state
        token = uuid4().hex
        lease = timedelta(milliseconds=self.settings.write_lease_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * lease.total_seconds() + 5
        pause = 0.002
        while True:
            now = datetime.now(UTC)  # wall clock: leases are shared between processes
            before = await self._c("profiles").find_one_and_update(
                {
                    "tenant_id": t,
                    "id": p,
                    **wanted,
                    "$or": [{"lock": None}, {"lock_until": {"$lte": dt(now)}}],
                },
                {
                    "$set": {"lock": token, "lock_until": dt(now + lease)},
                    "$inc": {"write_seq": count},
                },
                projection={"write_seq": 1, "lock": 1},
            )
            if before is not None:
                if before.get("lock") is not None:
                    logger.warning("took over the expired write lease of profile %s", profile_id)
                    await self._finish_pending(t, p)
                return int(before.get("write_seq", 0)) + count, token
            exists = await self._c("profiles").find_one(
                {"tenant_id": t, "id": p, **wanted}, projection={"id": 1}
            )
            if exists is None:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            if loop.time() > deadline:
                raise errors.ConflictError(f"profile {profile_id} stayed busy; retry")
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.025)

    async def _unlock(self, tenant_id: UUID, profile_id: UUID, token: str) -> bool:
        """Give the lease back; False if it was not ours any more (expired, or purged)."""
        result = await self._c("profiles").update_one(
            {"tenant_id": uid(tenant_id), "id": uid(profile_id), "lock": token},
            {"$set": {"lock": None, "lock_until": None}},
        )
        return bool(result.matched_count)

    async def _finish_pending(self, t: Any, p: Any) -> int:
        """Roll forward the ``pending`` versions of one profile, oldest write first."""
        stuck = (
            await self._c("fields")
            .find({"tenant_id": t, "profile_id": p, "status": PENDING}, sort=[("seq", 1)])
            .to_list(None)
        )
        for doc in stuck:
            now = dt(self.now())
            await self._activate_pending(
                {"tenant_id": t, "profile_id": p, "name": doc["name"]},
                doc["id"],
                {
                    "$set": {
                        "status": ItemStatus.SUPERSEDED.value,
                        "superseded_by_id": doc["id"],
                        "superseded_at": now,
                        "updated_at": now,
                    }
                },
            )
        return len(stuck)

    async def _put_field(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        field: ProfileField,
        supersede: bool,
        seq: int,
        session: Any,
        at: datetime | None = None,
    ) -> None:
        """Store ``field`` as the ACTIVE version of its name (see the module docstring).

        The version it supersedes gets ``superseded_at`` = ``at`` (a save's ``plan.now``),
        by default ``field.updated_at`` (``update_field`` sets it to the store's clock)."""
        t, p = uid(tenant_id), uid(profile_id)
        fields = self._c("fields")
        doc = self._field_doc(tenant_id, profile_id, field, seq)
        now = dt(field.updated_at if at is None else at)
        name_key = {"tenant_id": t, "profile_id": p, "name": field.name}
        supersede_update = {
            "$set": {
                "status": ItemStatus.SUPERSEDED.value,
                "superseded_by_id": doc["id"],
                "superseded_at": now,
                "updated_at": now,
            }
        }
        if not supersede:
            # an ACTIVE version past expires_at is not served as active, so it does not
            # block a new one: it is marked EXPIRED first (in a transaction, with every
            # overdue version of the profile: a refused insert undoes it all; standalone,
            # the other names' after the insert succeeded, so a refusal writes nothing)
            due = {"status": ItemStatus.ACTIVE.value, "expires_at": {"$lte": now}}
            expire = {"$set": {"status": ItemStatus.EXPIRED.value, "updated_at": now}}
            if session is not None:
                await fields.update_many(
                    {"tenant_id": t, "profile_id": p, **due}, expire, session=session
                )
            else:
                await fields.update_one({**name_key, **due}, expire)
            if session is not None:
                if await fields.find_one(
                    {"tenant_id": t, "id": doc["id"]}, projection={"id": 1}, session=session
                ):
                    raise errors.ConflictError(f"field id {field.id} is already stored")
                if await fields.find_one(
                    {**name_key, "status": ItemStatus.ACTIVE.value},
                    projection={"id": 1},
                    session=session,
                ):
                    raise errors.ActiveFieldConflictError(
                        f"field {field.name!r} has an ACTIVE version"
                    )
                await fields.insert_one(doc, session=session)
                return
            try:
                await fields.insert_one(doc)
            except DuplicateKeyError:
                raise await self._field_conflict(tenant_id, field) from None
            await fields.update_many({"tenant_id": t, "profile_id": p, **due}, expire)
            return
        if session is not None:
            # in a transaction the order does not matter: nobody sees the steps
            if await fields.find_one(
                {"tenant_id": t, "id": doc["id"]}, projection={"id": 1}, session=session
            ):
                raise errors.ConflictError(f"field id {field.id} is already stored")
            await fields.update_one(
                {**name_key, "status": ItemStatus.ACTIVE.value}, supersede_update, session=session
            )
            await fields.insert_one(doc, session=session)
            return
        # standalone: pending -> supersede the ACTIVE one -> activate, retried on a lost race
        try:
            await fields.insert_one({**doc, "status": PENDING, "pending_since": now})
        except DuplicateKeyError:
            raise await self._field_conflict(tenant_id, field) from None
        await self._activate_pending(name_key, doc["id"], supersede_update)

    async def _activate_pending(
        self, name_key: dict[str, Any], item_id: Any, supersede_update: dict[str, Any]
    ) -> None:
        fields = self._c("fields")
        for _ in range(self.settings.max_write_retries):
            await fields.update_one(
                {**name_key, "status": ItemStatus.ACTIVE.value, "id": {"$ne": item_id}},
                supersede_update,
            )
            try:
                await fields.update_one(
                    {"tenant_id": name_key["tenant_id"], "id": item_id, "status": PENDING},
                    {"$set": {"status": ItemStatus.ACTIVE.value}, "$unset": {"pending_since": ""}},
                )
                return
            except DuplicateKeyError:
                # another writer made its version ACTIVE in between: supersede it, retry
                continue
        # the version is stored (pending) and stays: not "nothing written"
        raise errors.PartialWriteError(
            f"field {name_key['name']!r}: too many concurrent writers; the version is stored "
            "and will be made ACTIVE by recover_interrupted_writes()"
        )

    async def _field_conflict(self, tenant_id: UUID, field: ProfileField) -> errors.ConflictError:
        """Which unique index refused ``field``: its id, or the one-ACTIVE-per-name index."""
        same_id = await self._c("fields").find_one(
            {"tenant_id": uid(tenant_id), "id": uid(field.id)}, projection={"id": 1}
        )
        if same_id is not None:
            return errors.ConflictError(f"field id {field.id} is already stored")
        return errors.ActiveFieldConflictError(f"field {field.name!r} has an ACTIVE version")

    @_translate
    async def recover_interrupted_writes(self, older_than: timedelta = timedelta(minutes=1)) -> int:
        """Finish field writes interrupted on a standalone server (a process died between
        storing a version and making it ACTIVE) by rolling them forward; return how many."""
        cutoff = dt(self.now() - older_than)
        stuck = (
            await self._c("fields")
            .find(
                {"status": PENDING, "pending_since": {"$lte": cutoff}},
                projection={"tenant_id": 1, "profile_id": 1},
            )
            .to_list(None)
        )
        finished = 0
        for t, p in dict.fromkeys((doc["tenant_id"], doc["profile_id"]) for doc in stuck):
            tenant_id, profile_id = decode(t), decode(p)
            try:
                _, token = await self._lock(tenant_id, profile_id, count=0, state={})
            except errors.NotFoundError:
                continue  # purged meanwhile: nothing left to finish
            try:
                finished += await self._finish_pending(t, p)
            finally:
                await self._unlock(tenant_id, profile_id, token)
        if finished:
            logger.warning("finished %d interrupted field writes", finished)
        return finished

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        doc = await self._c("fields").find_one(
            {
                "tenant_id": uid(tenant_id),
                "profile_id": uid(profile_id),
                "name": field_name,
                "status": status.value if status is not None else {"$in": _STATUSES},
            },
            sort=_NEWEST_FIELD_FIRST,
        )
        return None if doc is None else _to_model("fields", ProfileField, doc, _FIELD_JSON)

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        docs = (
            await self._c("fields")
            .find(
                {
                    "tenant_id": uid(tenant_id),
                    "profile_id": uid(profile_id),
                    "name": field_name,
                    "status": {"$in": _STATUSES},
                },
                sort=_NEWEST_FIELD_FIRST,
            )
            .to_list(None)
        )
        return [_to_model("fields", ProfileField, d, _FIELD_JSON) for d in docs]

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        # the ids of at most `limit` due versions, then one update_many over those ids that
        # re-checks the predicate (a version superseded in between is left alone); each
        # document changes atomically, and a batch cut short leaves the rest still due
        query: dict[str, Any] = {"tenant_id": uid(tenant_id)}
        if profile_id is not None:
            query["profile_id"] = uid(profile_id)
        query["status"] = ItemStatus.ACTIVE.value
        query["expires_at"] = {"$lte": dt(now)}
        due = await self._c("fields").find(query, projection={"id": 1}, limit=limit).to_list(None)
        if not due:
            return 0
        result = await self._c("fields").update_many(
            {**query, "id": {"$in": [doc["id"] for doc in due]}},
            {"$set": {"status": ItemStatus.EXPIRED.value, "updated_at": dt(now)}},
        )
        return int(result.modified_count)

    # =====================================================================================
    # assets
    # =====================================================================================

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        t, p = uid(tenant_id), uid(profile_id)

        async def put(seq: int, session: Any) -> UUID:
            doc = self._asset_doc(tenant_id, profile_id, asset, seq)
            try:
                await self._c("assets").insert_one(doc, session=session)
            except DuplicateKeyError:
                raise errors.ConflictError(f"asset id {asset.id} is already stored") from None
            if supersede_existing:
                # several assets of one name may be ACTIVE; the new one replaces those
                # written before it (writers hold the lease or a transaction, one at a time)
                now = dt(self.now())
                await self._c("assets").update_many(
                    {
                        "tenant_id": t,
                        "profile_id": p,
                        "name": asset.name,
                        "status": ItemStatus.ACTIVE.value,
                        "seq": {"$lt": seq},
                    },
                    {
                        "$set": {
                            "status": ItemStatus.SUPERSEDED.value,
                            "superseded_by_id": doc["id"],
                            "superseded_at": now,
                        }
                    },
                    session=session,
                )
            return asset.id

        if self.transactions_enabled:

            async def work(session: Any) -> UUID:
                return await put(await self._claim_seq(tenant_id, profile_id, session), session)

            return await self._atomic(work)
        seq, token = await self._lock(tenant_id, profile_id)
        try:
            return await put(seq, None)
        finally:
            await self._unlock(tenant_id, profile_id, token)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        doc = await self._c("assets").find_one(
            {"tenant_id": uid(tenant_id), "profile_id": uid(profile_id), "id": uid(asset_id)}
        )
        return None if doc is None else _to_model("assets", ProfileAsset, doc, _ASSET_JSON)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        doc = await self._c("assets").find_one(
            {
                "tenant_id": uid(tenant_id),
                "profile_id": uid(profile_id),
                "name": asset_name,
                "status": status.value if status is not None else {"$in": _STATUSES},
            },
            sort=_NEWEST_ASSET_FIRST,
        )
        return None if doc is None else _to_model("assets", ProfileAsset, doc, _ASSET_JSON)

    # =====================================================================================
    # lineage: the core's bounded, cycle-guarded walk over _get_lineage_node. $graphLookup
    # cannot follow links that alternate between two collections (fields and assets).
    # =====================================================================================

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        collection = "fields" if item_type is ItemType.PROFILE_FIELD else "assets"
        doc = await self._c(collection).find_one(
            {"tenant_id": uid(tenant_id), "id": uid(item_id), "status": {"$in": _STATUSES}},
            projection={
                "id": 1,
                "name": 1,
                "source_metadata": 1,
                "source_metadata__json": 1,
                "source_item_id": 1,
                "source_item_type": 1,
            },
        )
        if doc is None:
            return None
        data = {
            "type": item_type,
            "source_metadata": {},
            **{k: v for k, v in doc.items() if v is not None},
        }
        return _to_model(collection, LineageEntry, data, ("source_metadata",))

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        query = {
            "tenant_id": uid(tenant_id),
            "source_item_id": uid(source_item_id),
            "status": {"$in": _STATUSES},
        }
        fields, assets = await asyncio.gather(
            self._c("fields").find(query, sort=_OLDEST_FIELD_FIRST).to_list(None),
            self._c("assets").find(query, sort=_OLDEST_ASSET_FIRST).to_list(None),
        )
        return (
            [_to_model("fields", ProfileField, d, _FIELD_JSON) for d in fields],
            [_to_model("assets", ProfileAsset, d, _ASSET_JSON) for d in assets],
        )

    async def _check_has_dependents(
        self, tenant_id: UUID, item_id: UUID, session: Any = None
    ) -> bool:
        query = {
            "tenant_id": uid(tenant_id),
            "source_item_id": uid(item_id),
            "status": ItemStatus.ACTIVE.value,
        }
        for collection in ("fields", "assets"):
            if await self._c(collection).find_one(query, projection={"id": 1}, session=session):
                return True
        return False

    # =====================================================================================
    # channels and merge
    # =====================================================================================

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        if max_per_channel is not None:
            return await self._link_channel_limited(
                tenant_id, profile_id, identity, max_per_channel
            )
        key = {
            "tenant_id": uid(tenant_id),
            "channel": identity.channel.value,
            "channel_user_id": identity.channel_user_id,
        }
        for _ in range(self.settings.max_write_retries):
            seq = await self._claim_seq(tenant_id, profile_id, None)
            try:
                await self._c("identities").insert_one(
                    self._identity_doc(tenant_id, profile_id, identity, seq)
                )
                return True
            except DuplicateKeyError:
                pass  # held: by whom is read below
            # outside the except block: a failure of this read is not chained to the
            # duplicate key's error, whose text quotes the identity (personal data)
            owner = await self._c("identities").find_one(key)
            if owner is None:
                continue  # released in between: try again
            if owner["profile_id"] != uid(profile_id) and await self._release_if_stale(
                tenant_id, owner
            ):
                continue  # left by an interrupted delete: released, try again
            return link_outcome(profile_id, decode(owner["profile_id"]), identity.channel)
        raise errors.ConflictError("link_channel lost too many races; retry")

    async def _link_channel_limited(
        self, tenant_id: UUID, profile_id: UUID, identity: ChannelIdentity, limit: int
    ) -> bool:
        """``link_channel`` with ``max_per_channel``: concurrent limited links of one profile
        take turns (in a transaction: each claims the profile's write order, so they
        conflict; standalone: under the profile's write lease), read its identities on the
        channel, then claim the new identity (the unique index arbitrates against other
        profiles) before the evicted one is released (deleted, as delete releases it)."""
        t, p = uid(tenant_id), uid(profile_id)
        channel = identity.channel.value

        async def work(session: Any, seq: int) -> bool:
            owner = await self._c("identities").find_one(
                {"tenant_id": t, "channel": channel, "channel_user_id": identity.channel_user_id},
                session=session,
            )
            if (
                owner is not None
                and session is None
                and owner["profile_id"] != p
                and await self._release_if_stale(tenant_id, owner)
            ):
                owner = None  # left by an interrupted delete: released
            owner_id = None if owner is None else decode(owner["profile_id"])
            if not link_outcome(profile_id, owner_id, identity.channel):
                return False
            held = [
                _to_model("identities", ChannelIdentity, d)
                for d in await self._c("identities")
                .find({"tenant_id": t, "profile_id": p, "channel": channel}, session=session)
                .to_list(None)
            ]
            evicted = channel_eviction(held, identity.channel, limit)
            try:
                await self._c("identities").insert_one(
                    self._identity_doc(tenant_id, profile_id, identity, seq), session=session
                )
            except DuplicateKeyError:
                # another profile claimed it after the owner was read
                raise identity_conflict(identity.channel) from None
            if evicted is not None:
                await self._c("identities").delete_one(
                    {
                        "tenant_id": t,
                        "profile_id": p,
                        "channel": channel,
                        "channel_user_id": evicted.channel_user_id,
                    },
                    session=session,
                )
            return True

        if self.transactions_enabled:

            async def in_transaction(session: Any) -> bool:
                seq = await self._claim_seq(tenant_id, profile_id, session)
                return await work(session, seq)

            return await self._atomic(in_transaction)
        seq, token = await self._lock(tenant_id, profile_id)
        try:
            return await work(None, seq)
        finally:
            await self._unlock(tenant_id, profile_id, token)

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        t, src, dst = uid(tenant_id), uid(source_profile_id), uid(target_profile_id)
        profiles, fields = self._c("profiles"), self._c("fields")
        request = log or MergeLogRequest()

        async def work(session: Any) -> None:
            # 1. mark the source as being merged: from now on nothing else writes to it,
            #    and a merge interrupted on a standalone server is finished by calling again
            source = await profiles.find_one_and_update(
                {"tenant_id": t, "id": src, "live": True, "merging_into": {"$in": [None, dst]}},
                {"$set": {"merging_into": dst}},
                session=session,
            )
            if source is None:
                raise errors.NotFoundError(f"profile {source_profile_id} not found")
            now = self.now()
            # 2. the target's write order continues after every moved item's
            target = await profiles.find_one_and_update(
                {"tenant_id": t, "id": dst, "live": True, "merging_into": None},
                {"$max": {"write_seq": int(source.get("write_seq", 0))}},
                session=session,
            )
            if target is None:
                await profiles.update_one(
                    {"tenant_id": t, "id": src, "merging_into": dst},
                    {"$unset": {"merging_into": ""}},
                    session=session,
                )
                raise errors.NotFoundError(f"profile {target_profile_id} not found")
            # 3. read the state; core's merge rule plans every write below
            sides = (target_profile_id, source_profile_id)
            target_side, source_side = await self._merge_sides(tenant_id, sides, session)
            plan = plan_merge(target_side, source_side, now, choose_winner=choose_winner)
            # what the log entry records: everything of the source, read before it moves
            owned = {"tenant_id": t, "profile_id": src}
            moved_fields = await fields.find(
                {**owned, "status": {"$in": _STATUSES}}, projection={"id": 1}, session=session
            ).to_list(None)
            moved_assets = (
                await self._c("assets")
                .find(owned, projection={"id": 1}, session=session)
                .to_list(None)
            )
            moved_consents = (
                await self._c("consents")
                .find(owned, sort=[("position", 1)], session=session)
                .to_list(None)
            )
            # 4. identities take the plan's primary flags; consents and assets move as they
            #    are (ids unchanged)
            for placement in (*plan.target_flag_changes, *plan.moved_identities):
                await self._c("identities").update_one(
                    {
                        "tenant_id": t,
                        "profile_id": {"$in": [src, dst]},
                        "channel": placement.channel.value,
                        "channel_user_id": placement.channel_user_id,
                    },
                    {"$set": {"profile_id": dst, "primary": placement.primary}},
                    session=session,
                )
            for collection in ("consents", "assets"):
                await self._c(collection).update_many(
                    {"tenant_id": t, "profile_id": src},
                    {"$set": {"profile_id": dst}},
                    session=session,
                )
            # 5. fields: supersede the plan's losers, then move every version; on a standalone
            #    server the one-ACTIVE index refuses the move if a conflict appeared meanwhile:
            #    read and plan again
            for _ in range(self.settings.max_write_retries):
                await self._supersede_losers(t, plan, session)
                try:
                    await fields.update_many(
                        {"tenant_id": t, "profile_id": src},
                        {"$set": {"profile_id": dst}},
                        session=session,
                    )
                    break
                except DuplicateKeyError:
                    if session is not None:
                        raise
                plan = plan_merge(
                    *await self._merge_sides(tenant_id, sides, session),
                    now,
                    choose_winner=choose_winner,
                )
            else:
                raise errors.ConflictError("merge lost too many races; call it again to finish")
            # the log entry, before the source goes (a merge finished by calling again keeps
            # the entry of its first attempt)
            record = merge_record(
                tenant_id,
                plan,
                request,
                moved_field_ids=[_stored_id("fields", d) for d in moved_fields],
                moved_asset_ids=[_stored_id("assets", d) for d in moved_assets],
                moved_consents=[_to_model("consents", Consent, d) for d in moved_consents],
                source_identities=source_side.identities,
                target_identities=target_side.identities,
            )
            await self._c("merge_log").update_one(
                {"tenant_id": t, "id": uid(record.id)},
                {
                    "$setOnInsert": {
                        "source_profile_id": src,
                        "target_profile_id": dst,
                        "merged_at": dt(now),
                        "unmerged_at": None,
                        "record": record.model_dump_json(),
                    }
                },
                upsert=True,
                session=session,
            )
            # 5. the source is soft-deleted last
            await profiles.update_one(
                {"tenant_id": t, "id": src},
                {
                    "$set": {
                        "live": False,
                        "deleted_at": dt(self.now()),
                        "merged_into": dst,
                        "released_identities": [],
                    },
                    "$unset": {"merging_into": ""},
                },
                session=session,
            )

        if self.transactions_enabled:
            await self._atomic(work)
            return
        # standalone: both write leases, always taken in the same order (no deadlock)
        states: dict[UUID, dict[str, Any]] = {
            source_profile_id: {"live": True, "merging_into": {"$in": [None, dst]}},
            target_profile_id: {"live": True, "merging_into": None},
        }
        held: list[tuple[UUID, str]] = []
        try:
            for profile_id in sorted(states, key=lambda u: u.bytes):
                _, token = await self._lock(
                    tenant_id, profile_id, count=0, state=states[profile_id]
                )
                held.append((profile_id, token))
            await work(None)
        finally:
            for profile_id, token in held:
                await self._unlock(tenant_id, profile_id, token)

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        t = uid(tenant_id)
        entries = self._c("merge_log")

        async def read_entry(session: Any) -> MergeRecord:
            doc = await entries.find_one({"tenant_id": t, "id": uid(merge_id)}, session=session)
            if doc is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            return _merge_record(doc)

        async def work(session: Any) -> UnmergeResult:
            record = await read_entry(session)
            src, dst = uid(record.source_profile_id), uid(record.target_profile_id)
            live: dict[UUID, bool] = {}
            sides: dict[UUID, CustomerProfile | None] = {}
            for profile_id in (record.source_profile_id, record.target_profile_id):
                doc = await self._c("profiles").find_one(
                    {"tenant_id": t, "id": uid(profile_id), "purging": None},
                    projection={"live": 1},
                    session=session,
                )
                live[profile_id] = bool(doc and doc.get("live"))
                sides[profile_id] = await self._load(
                    tenant_id, {"id": uid(profile_id)}, True, live_only=False, session=session
                )
            s_side, t_side = sides[record.source_profile_id], sides[record.target_profile_id]
            if s_side is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            others = await entries.find(
                {
                    "tenant_id": t,
                    "id": {"$ne": uid(merge_id)},
                    "unmerged_at": None,
                    "$or": [
                        {"source_profile_id": {"$in": [src, dst]}},
                        {"target_profile_id": {"$in": [src, dst]}},
                    ],
                },
                session=session,
            ).to_list(None)
            state = UnmergeState(
                record=record,
                open_merges=tuple(_merge_record(d) for d in others),
                target_live=live[record.target_profile_id],
                source_live=live[record.source_profile_id],
                target_fields=_versions(t_side),
                source_fields=_versions(s_side),
                target_assets=tuple(t_side.asset_history) if t_side else (),
                source_assets=tuple(s_side.asset_history),
                target_identities=tuple(t_side.channel_identities) if t_side else (),
                source_identities=(),
                target_consents=tuple(t_side.consents) if t_side else (),
                source_consents=tuple(s_side.consents),
            )
            plan = plan_unmerge(state, self.now())
            now = dt(plan.now)
            if plan.field_ids_to_source:
                await self._c("fields").update_many(
                    {"tenant_id": t, "id": {"$in": [uid(i) for i in plan.field_ids_to_source]}},
                    {"$set": {"profile_id": src}},
                    session=session,
                )
            if plan.asset_ids_to_source:
                await self._c("assets").update_many(
                    {"tenant_id": t, "id": {"$in": [uid(i) for i in plan.asset_ids_to_source]}},
                    {"$set": {"profile_id": src}},
                    session=session,
                )
            if plan.reactivate_field_ids:
                await self._c("fields").update_many(
                    {"tenant_id": t, "id": {"$in": [uid(i) for i in plan.reactivate_field_ids]}},
                    {
                        "$set": {
                            "status": ItemStatus.ACTIVE.value,
                            "superseded_by_id": None,
                            "superseded_at": None,
                            "updated_at": now,
                        }
                    },
                    session=session,
                )
            for update in plan.identities:
                await self._c("identities").update_one(
                    {
                        "tenant_id": t,
                        "channel": update.channel.value,
                        "channel_user_id": update.channel_user_id,
                    },
                    {"$set": {"profile_id": uid(update.profile_id), "primary": update.primary}},
                    session=session,
                )
            for owner_id, consents in ((dst, plan.target_consents), (src, plan.source_consents)):
                owner = {"tenant_id": t, "profile_id": owner_id}
                await self._c("consents").delete_many(owner, session=session)
                if consents:
                    await self._c("consents").insert_many(
                        [
                            {**owner, **encode(c.model_dump(mode="python")), "position": n}
                            for n, c in enumerate(consents)
                        ],
                        session=session,
                    )
            await self._c("profiles").update_one(
                {"tenant_id": t, "id": src},
                {
                    "$set": {"live": True, "deleted_at": None, "updated_at": now},
                    "$unset": {"merged_into": ""},
                },
                session=session,
            )
            await self._c("profiles").update_one(
                {"tenant_id": t, "id": dst}, {"$set": {"updated_at": now}}, session=session
            )
            await entries.update_one(
                {"tenant_id": t, "id": uid(merge_id)},
                {"$set": {"unmerged_at": now, "record": plan.record.model_dump_json()}},
                session=session,
            )
            return plan.result

        if self.transactions_enabled:
            return await self._atomic(work)
        # standalone: both profiles' write leases, in the order merge takes them
        record = await read_entry(None)
        held: list[tuple[UUID, str]] = []
        try:
            for profile_id in sorted(
                (record.source_profile_id, record.target_profile_id), key=lambda u: u.bytes
            ):
                _, token = await self._lock(tenant_id, profile_id, count=0, state={})
                held.append((profile_id, token))
            return await work(None)
        finally:
            for profile_id, token in held:
                await self._unlock(tenant_id, profile_id, token)

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        p = uid(profile_id)
        docs = (
            await self._c("merge_log")
            .find(
                {
                    "tenant_id": uid(tenant_id),
                    "$or": [{"source_profile_id": p}, {"target_profile_id": p}],
                }
            )
            .to_list(None)
        )
        return [_merge_record(d) for d in docs]

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        docs = await self._c("definitions").find({"tenant_id": uid(tenant_id)}).to_list(None)
        return [_to_model("definitions", ProfileFieldDefinition, d, _DEFINITION_JSON) for d in docs]

    async def _merge_sides(
        self, tenant_id: UUID, profile_ids: tuple[UUID, UUID], session: Any
    ) -> tuple[MergeSide, MergeSide]:
        """What core's merge rule reads: each live profile as :meth:`_load` reads it."""
        sides = []
        for profile_id in profile_ids:
            found = await self._load(tenant_id, {"id": uid(profile_id)}, False, session=session)
            if found is None:
                raise errors.NotFoundError(f"profile {profile_id} not found")
            sides.append(MergeSide.from_profile(found))
        return sides[0], sides[1]

    async def _supersede_losers(self, t: Any, plan: MergePlan, session: Any) -> None:
        now = dt(plan.now)
        for entry in plan.supersede:
            await self._c("fields").update_one(
                {"tenant_id": t, "id": uid(entry.loser_id), "status": ItemStatus.ACTIVE.value},
                {
                    "$set": {
                        "status": ItemStatus.SUPERSEDED.value,
                        "superseded_by_id": uid(entry.winner_id),
                        "superseded_at": now,
                        "updated_at": now,
                    }
                },
                session=session,
            )

    # =====================================================================================
    # field definitions and scenario requirements: upserts on their natural keys
    # =====================================================================================

    async def _planned_upsert(
        self,
        collection: str,
        key: dict[str, Any],
        document: dict[str, Any],
        plan: Callable[[dict[str, Any] | None, dict[str, Any] | None], SchemaUpsert],
    ) -> UUID:
        """Read the documents with the given id and with the natural ``key``, let core's
        rule decide (a refusal raises and nothing is written), then upsert by ``key`` and
        every attribute the rule compared (so a document changed in between is not
        matched: the insert then hits a unique index and the whole step runs again)."""
        c = self._c(collection)
        t = key["tenant_id"]
        for attempt in range(self.settings.max_write_retries):
            by_id = await c.find_one({"tenant_id": t, "id": document["id"]})
            by_key = await c.find_one(key)
            decided = plan(by_id, by_key)
            match = {**key, "id": uid(decided.id)}
            if "agent_id" in document:
                match["agent_id"] = document["agent_id"]
            body = {k: v for k, v in document.items() if k not in ("id", "created_at")}
            try:
                await c.update_one(
                    match,
                    {
                        "$set": body,
                        "$setOnInsert": {"created_at": dt(decided.created_at)},
                    },
                    upsert=True,
                )
                return decided.id
            except DuplicateKeyError:
                # a concurrent first save of this id or key won: read it and decide again
                if attempt + 1 == self.settings.max_write_retries:
                    raise
        raise AssertionError("unreachable")

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        query: dict[str, Any] = {"tenant_id": uid(tenant_id), "agent_id": uid(agent_id)}
        if enabled_only:
            query["enabled"] = True
        docs = await self._c("definitions").find(query, sort=[("name", 1)]).to_list(None)
        return [_to_model("definitions", ProfileFieldDefinition, d, _DEFINITION_JSON) for d in docs]

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        doc = await self._c("definitions").find_one(
            {"tenant_id": uid(tenant_id), "agent_id": uid(agent_id), "name": field_name}
        )
        return (
            None
            if doc is None
            else _to_model("definitions", ProfileFieldDefinition, doc, _DEFINITION_JSON)
        )

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        doc: dict[str, Any] = encode(definition.model_dump(mode="python"))
        for json_key in _DEFINITION_JSON:
            pack_json(doc, json_key)
        key = {
            "tenant_id": doc.pop("tenant_id"),
            "agent_id": doc["agent_id"],
            "name": doc.pop("name"),
        }

        def plan(by_id: dict[str, Any] | None, by_key: dict[str, Any] | None) -> SchemaUpsert:
            stored = [
                None
                if d is None
                else _to_model("definitions", ProfileFieldDefinition, d, _DEFINITION_JSON)
                for d in (by_id, by_key)
            ]
            return plan_definition_save(definition, *stored)

        return await self._planned_upsert("definitions", key, doc, plan)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        result = await self._c("definitions").delete_one(
            {"tenant_id": uid(tenant_id), "agent_id": uid(agent_id), "name": field_name}
        )
        return bool(result.deleted_count)

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        docs = (
            await self._c("requirements")
            .find(
                {
                    "tenant_id": uid(tenant_id),
                    "scenario_id": uid(scenario_id),
                    "step_id": None if step_id is None else uid(step_id),
                },
                sort=[("collection_order", 1), ("field_name", 1)],
            )
            .to_list(None)
        )
        return [_to_model("requirements", ScenarioFieldRequirement, d) for d in docs]

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        doc: dict[str, Any] = encode(requirement.model_dump(mode="python"))
        key = {
            name: doc.pop(name)
            for name in ("tenant_id", "scenario_id", "step_id", "rule_id", "field_name")
        }

        def plan(by_id: dict[str, Any] | None, by_key: dict[str, Any] | None) -> SchemaUpsert:
            stored = [
                None if d is None else _to_model("requirements", ScenarioFieldRequirement, d)
                for d in (by_id, by_key)
            ]
            return plan_requirement_save(requirement, *stored)

        return await self._planned_upsert("requirements", key, doc, plan)

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        query: dict[str, Any] = {"tenant_id": uid(tenant_id), "scenario_id": uid(scenario_id)}
        if step_id is not None:
            query["step_id"] = uid(step_id)
        result = await self._c("requirements").delete_many(query)
        return int(result.deleted_count)

    # =====================================================================================
    # erasure, portability, hard delete, orphans, operations
    # =====================================================================================

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        t, p = uid(tenant_id), uid(profile_id)

        async def work(session: Any) -> bool:
            # reads stop first; then what it owns goes; the profile document goes last, so
            # a purge interrupted on a standalone server is finished by calling it again
            marked = await self._c("profiles").find_one_and_update(
                {"tenant_id": t, "id": p},
                {"$set": {"live": False, "purging": True}},
                projection={"id": 1},
                session=session,
            )
            if marked is None:
                return False
            if session is None:
                # standalone: wait for a writer that holds the lease to finish first (no
                # new one can take it: they need a live profile); the lease is never
                # given back, it goes with the profile document
                try:
                    await self._lock(tenant_id, profile_id, count=0, state={})
                except errors.NotFoundError:
                    return True  # a concurrent purge finished the job
            for collection in ("fields", "assets", "identities", "consents"):
                await self._c(collection).delete_many(
                    {"tenant_id": t, "profile_id": p}, session=session
                )
            await self._c("merge_log").delete_many(
                {"tenant_id": t, "$or": [{"source_profile_id": p}, {"target_profile_id": p}]},
                session=session,
            )
            await self._c("profiles").delete_one({"tenant_id": t, "id": p}, session=session)
            return True

        return await self._atomic(work)

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        key = {"id": uid(profile_id)}
        return await self._atomic(
            lambda session: self._load(tenant_id, key, True, live_only=False, session=session)
        )

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        """Profiles with the customer id, or holding the identity: live in ``identities``,
        released in a soft-deleted profile's ``released_identities`` (erasure, issue 12).
        """
        t = uid(tenant_id)

        async def work(session: Any) -> list[UUID]:
            profiles = self._c("profiles")
            if channel is None:
                assert customer_id is not None
                query = {"tenant_id": t, "customer_id": uid(customer_id)}
                docs = await profiles.find(query, projection={"id": 1}, session=session).to_list(
                    None
                )
                return [decode(d)["id"] for d in docs]
            key = {"channel": channel.value, "channel_user_id": channel_user_id}
            held = (
                await self._c("identities")
                .find({"tenant_id": t, **key}, projection={"profile_id": 1}, session=session)
                .to_list(None)
            )
            released = await profiles.find(
                {"tenant_id": t, "released_identities": {"$elemMatch": key}},
                projection={"id": 1},
                session=session,
            ).to_list(None)
            return [decode(d)["profile_id"] for d in held] + [decode(d)["id"] for d in released]

        return list(dict.fromkeys(await self._atomic(work)))

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        """One transaction (replica set). On a standalone server (no multi-document
        transactions) the checks come first, so a refusal writes nothing: no merge of the
        profiles in flight (``merging_into`` set on one of them or pointing at one) and the
        merge log as planned; then, as ``_purge_profile``, the profiles stop being live (no
        merge or write can start on them), writers holding a lease finish, and everything
        goes, profile documents last (an interrupted erasure is finished by calling again).
        A merge starting between the checks and that first write is not seen: the window
        of every standalone purge."""
        t, ids = uid(tenant_id), [uid(p) for p in profile_ids]
        touching = {
            "tenant_id": t,
            "$or": [{"source_profile_id": {"$in": ids}}, {"target_profile_id": {"$in": ids}}],
        }
        in_flight = {
            "tenant_id": t,
            "$or": [
                {"id": {"$in": ids}, "merging_into": {"$ne": None}},
                {"merging_into": {"$in": ids}},
            ],
        }

        async def work(session: Any) -> int:
            profiles = self._c("profiles")
            if await profiles.find_one(in_flight, projection={"id": 1}, session=session):
                raise errors.ConflictError("a merge of the subject is in progress")
            entries = (
                await self._c("merge_log")
                .find(touching, projection={"id": 1}, session=session)
                .to_list(None)
            )
            if {decode(d)["id"] for d in entries} != set(merge_ids):
                raise errors.ConflictError("the merge log of the subject changed")
            if session is None:
                await profiles.update_many(
                    {"tenant_id": t, "id": {"$in": ids}},
                    {"$set": {"live": False, "purging": True}},
                )
                for profile_id in profile_ids:
                    with contextlib.suppress(errors.NotFoundError):  # purged meanwhile
                        await self._lock(tenant_id, profile_id, count=0, state={})
            for collection in ("fields", "assets", "identities", "consents"):
                await self._c(collection).delete_many(
                    {"tenant_id": t, "profile_id": {"$in": ids}}, session=session
                )
            await self._c("merge_log").delete_many(touching, session=session)
            # the profile documents last: an interrupted erasure is found and finished again
            done = await profiles.delete_many({"tenant_id": t, "id": {"$in": ids}}, session=session)
            return int(done.deleted_count)

        return await self._atomic(work)

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        collection = "fields" if item_type is ItemType.PROFILE_FIELD else "assets"

        async def work(session: Any) -> bool:
            if await self._check_has_dependents(tenant_id, item_id, session):
                raise errors.DependentsError(f"ACTIVE items derive from {item_id}")
            result = await self._c(collection).delete_one(
                {"tenant_id": uid(tenant_id), "id": uid(item_id), "status": {"$in": _STATUSES}},
                session=session,
            )
            return bool(result.deleted_count)

        return await self._atomic(work)

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        """Page through the tenant's derived items in ``id`` order, ``orphan_batch_size`` at
        a time (keyset pagination on the ``(tenant_id, id)`` index: no cursor held open,
        memory and every command bounded by the page, whatever the tenant's size); per
        page, one ``$in`` query per source collection finds which sources still exist. The
        first ``limit`` orphans found are marked ORPHANED by one ``update_many`` per
        collection (re-checking the status). Items already ORPHANED leave the query, so the
        next batch starts over and finds only what is left."""
        t = uid(tenant_id)
        page_size = self.orphan_batch_size
        marked = 0
        for collection in ("fields", "assets"):
            found: list[Any] = []
            after: Any = None
            while marked + len(found) < limit:
                page = await self._derived_items(collection, t, _NOT_ORPHANED, after, page_size)
                if not page:
                    break
                after = page[-1]["id"]
                found.extend(await self._orphans_of_page(t, page))
                if len(page) < page_size:
                    break
            marked += await self._mark_orphaned(collection, t, found[: limit - marked], now)
            if marked >= limit:
                break
        return marked

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        """One keyset page: at most ``limit`` (and ``orphan_batch_size``) derived items
        (lineage sources, any stored status) in
        (collection, ``id``) order after the position (``"field:<uuid>"``, ``"asset:"``,
        ``"asset:<uuid>"``), fields first, then assets with what is left of the limit, read
        on the ``(tenant_id, id)`` index; the orphans among them (one ``$in`` per source
        collection) marked by one ``update_many`` per collection, re-checking the status."""
        kind, last = parse_orphans_position(after)
        t = uid(tenant_id)
        examined = marked = 0
        for table_kind, collection in (("field", "fields"), ("asset", "assets")):
            if kind == "asset" and table_kind == "field":
                continue
            # orphan_batch_size also caps the page: it bounds each $in sent
            budget = min(limit - examined, self.orphan_batch_size)
            start = uid(last) if last is not None and table_kind == kind else None
            page = await self._derived_items(collection, t, _STATUSES, start, budget)
            examined += len(page)
            found = await self._orphans_of_page(t, page) if page else []
            marked += await self._mark_orphaned(collection, t, found, now)
            if len(page) == budget:
                return KeysetBatch(marked, examined, f"{table_kind}:{decode(page[-1]['id'])}")
        return KeysetBatch(marked, examined, None)

    async def _derived_items(
        self, collection: str, t: Any, statuses: list[str], after: Any, limit: int
    ) -> list[dict[str, Any]]:
        """At most ``limit`` derived items (lineage sources) of ``collection`` in a status of
        ``statuses``, in ``id`` order after the stored id ``after`` (None: from the first),
        read on the ``(tenant_id, id)`` index: their id, source_item_id, source_item_type."""
        query: dict[str, Any] = {
            "tenant_id": t,
            "status": {"$in": statuses},
            "source_item_type": {"$in": _LINEAGE_SOURCES},
        }
        if after is not None:
            query["id"] = {"$gt": after}
        page: list[dict[str, Any]] = (
            await self._c(collection)
            .find(
                query,
                projection={"id": 1, "source_item_id": 1, "source_item_type": 1},
                sort=[("id", 1)],
                limit=limit,
            )
            .to_list(None)
        )
        return page

    async def _mark_orphaned(self, collection: str, t: Any, ids: list[Any], now: datetime) -> int:
        """Mark the items ``ids`` of ``collection`` ORPHANED by one ``update_many`` that
        re-checks the status (fields also get ``updated_at = now``); return how many."""
        if not ids:
            return 0
        update: dict[str, Any] = {"status": ItemStatus.ORPHANED.value}
        if collection == "fields":
            update["updated_at"] = dt(now)
        result = await self._c(collection).update_many(
            {"tenant_id": t, "id": {"$in": ids}, "status": {"$in": _NOT_ORPHANED}},
            {"$set": update},
        )
        return int(result.modified_count)

    async def _orphans_of_page(self, t: Any, page: list[dict[str, Any]]) -> list[Any]:
        """The ids of the page's items whose source no longer exists."""

        def source_collection(doc: dict[str, Any]) -> str:
            return "fields" if doc["source_item_type"] == SourceType.PROFILE_FIELD else "assets"

        wanted: dict[str, set[Any]] = {"fields": set(), "assets": set()}
        for doc in page:
            wanted[source_collection(doc)].add(doc["source_item_id"])
        existing: dict[str, set[Any]] = {}
        for name, ids in wanted.items():
            found = (
                await self._c(name)
                .find({"tenant_id": t, "id": {"$in": list(ids)}}, projection={"id": 1})
                .to_list(None)
                if ids
                else []
            )
            existing[name] = {d["id"] for d in found}
        return [d["id"] for d in page if d["source_item_id"] not in existing[source_collection(d)]]

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        found = (
            await self._c("profiles")
            .find({"tenant_id": uid(tenant_id), "purging": None}, projection={"id": 1})
            .to_list(None)
        )
        return [decode(doc["id"]) for doc in found]

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        t, p = uid(tenant_id), uid(profile_id)

        async def work(session: Any) -> int:
            rewritten = 0
            for field_id, (value, metadata) in payloads.items():
                stored: dict[str, Any] = {"value": value, "source_metadata": metadata}
                for key in _FIELD_JSON:
                    pack_json(stored, key)
                update: dict[str, Any] = {"$set": stored}
                stale = {k + JSON_SUFFIX: "" for k in _FIELD_JSON if k + JSON_SUFFIX not in stored}
                if stale:
                    update["$unset"] = stale
                result = await self._c("fields").update_one(
                    {"tenant_id": t, "profile_id": p, "id": uid(field_id)},
                    update,
                    session=session,
                )
                rewritten += int(result.matched_count)
            return rewritten

        if self.transactions_enabled:
            return await self._atomic(work)
        # standalone: under the profile's lease, so no field writer runs meanwhile; each
        # version is rewritten atomically, the set of them is not (see the README)
        try:
            _, token = await self._lock(tenant_id, profile_id, count=0, state={"purging": None})
        except errors.NotFoundError:
            return 0
        try:
            return await work(None)
        finally:
            await self._unlock(tenant_id, profile_id, token)

    async def _list_tenant_ids(self) -> list[UUID]:
        found = await self._c("profiles").distinct("tenant_id")
        return [decode(value) for value in found]

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for kind in ("fields", "assets"):
            cursor = await self._c(kind).aggregate(
                [
                    {"$match": {"tenant_id": uid(tenant_id), "status": {"$in": _STATUSES}}},
                    {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                ]
            )
            counts[kind] = {row["_id"]: int(row["n"]) for row in await cursor.to_list(None)}
        return counts


# every provider hook (and setup) turns driver errors into vault errors
for _name in [
    name
    for name, value in vars(MongoProfileStore).items()
    if name.startswith("_")
    and not name.startswith("__")
    and asyncio.iscoroutinefunction(value)
    and name in vars(ProfileStore)
]:
    setattr(MongoProfileStore, _name, _translate(getattr(MongoProfileStore, _name)))


def _versions(profile: CustomerProfile | None) -> tuple[ProfileField, ...]:
    """Every field version of ``profile`` (read with history), any status."""
    if profile is None:
        return ()
    return tuple(v for versions in profile.field_history.values() for v in versions)
